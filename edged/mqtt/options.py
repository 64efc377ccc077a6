"""Small typed helpers around paho: MQTT 5 properties, the TLS context, a readable connect error."""

from __future__ import annotations

import ssl

from paho.mqtt.properties import Properties

from edged.settings import TlsSettings

__all__ = ["describe_error", "new_properties", "tls_context"]


def new_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for one packet type (paho's constructor is untyped)."""
    props: Properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    return props


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A verifying client context: the configured CA (else the system's), and a client certificate if any."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def describe_error(exc: BaseException) -> str:
    """Why a connect failed, in a few words for /readyz (the same words while the cause stays the same)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
