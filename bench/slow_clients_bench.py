"""Slow clients against the real daemon: memory and descriptors held by half-sent requests, time to shed them.

    .venv/bin/python bench/slow_clients_bench.py [--n 200] [--header-timeout 10]

Boots ``python -m edged run`` (tests/daemon.py), measures its RSS and open descriptors idle, then with
``n`` connections that sent half a request's headers, then how long until the header timeout closed them
all, and the same figures after. A gzip bomb (1 GiB of zeros, ~1 MB sent) is then posted and the peak RSS
noted. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon import run_daemon  # noqa: E402
from tests.test_http_limits import (  # noqa: E402
    HALF_SENT,
    call,
    config,
    connect,
    process_figures,
    sockets,
    wait_closed_by_server,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_daemon(config(Path(tmp), header_timeout=args.header_timeout)) as d:
        pid = d.proc.pid
        assert call(d, "/healthz")[0] == 200
        idle = process_figures(pid)
        with sockets([connect(d, HALF_SENT) for _ in range(args.n)]) as held:
            opened = time.monotonic()
            started = time.perf_counter()
            status, _ = call(d, "/healthz")
            served_ms = (time.perf_counter() - started) * 1000
            loaded = process_figures(pid)
            wait_closed_by_server(held, within=args.header_timeout + 60)
            closed_after = time.monotonic() - opened
        after = process_figures(pid)
        member = gzip.compress(bytes(16 * 1024 * 1024), compresslevel=9)
        request = urllib.request.Request(d.url + "/v1/functions/grayscale", data=member * 64,
                                         headers={"Content-Encoding": "gzip"})
        try:
            urllib.request.urlopen(request, timeout=120)
            bomb = 200
        except urllib.error.HTTPError as exc:
            bomb = exc.code
        bombed = process_figures(pid)
    print(f"{'state':<34} {'RSS MiB':>8} {'peak MiB':>9} {'fds':>5}")
    for name, fig in (("idle", idle), (f"{args.n} half-sent open", loaded), ("after they were closed", after),
                      (f"after a 1 GiB gzip bomb ({bomb})", bombed)):
        print(f"{name:<34} {fig['rss_kib'] / 1024:8.1f} {fig['hwm_kib'] / 1024:9.1f} {fig['fds']:5d}")
    print(f"/healthz with {args.n} half-sent open: {status} in {served_ms:.1f} ms")
    print(f"all {args.n} closed {closed_after:.2f} s after they were opened (header_timeout {args.header_timeout} s)")


if __name__ == "__main__":
    main()
