"""Which addresses an outbound connection may reach without ``private_hosts``: the DNS-rebinding guard.

A name on ``allowed_hosts`` is looked up per request, and its owner (or whoever answers for it) can make
it resolve to this device or its LAN: the Dapr sidecar, edged's own API, a camera. So the address each
connection actually goes to is screened, after the lookup and before the connect (the host connects to
exactly the addresses screened here, so nothing changes in between). An IP literal is screened the same
way. Only an origin also listed in ``private_hosts`` may reach such an address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["non_public"]

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETWORKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                 # Shared address space (carrier NAT) and the deprecated IPv6 site-local block: both
                 # reach networks next to the device, not the internet.
                 "100.64.0.0/10", "fec0::/10")),
)
_KINDS = tuple((kind, tuple(ipaddress.ip_network(net) for net in nets)) for kind, nets in _NETWORKS)


def _unwrap(ip: _IP) -> _IP:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d) one.

    Linux connects a v6 socket to ``::ffff:127.0.0.1`` as to 127.0.0.1, so the embedded address decides.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if int(ip) >> 32 == 0 and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip


def non_public(address: str | Sequence[object]) -> str | None:
    """What keeps ``address`` (an IP text or a socket address tuple) off the public internet, or None.

    The answer names the kind: unspecified, loopback, link-local or private. Text that is not an IP
    address (which a connect could not use either) counts as unspecified.
    """
    text = address if isinstance(address, str) else str(address[0])
    try:
        ip = _unwrap(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return "unspecified"
    for kind, networks in _KINDS:
        if any(ip.version == net.version and ip in net for net in networks):
            return kind
    return None
