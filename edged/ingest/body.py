"""Reading a request body within its limits: size after decoding, idle time, Content-Encoding.

``body_bound`` is checked before anything is read or reserved: it refuses an encoding edged does not take
(415) and a declared length over the limit (413), and returns the most bytes the body can take once read,
the figure a memory budget reserves. ``read_body`` then reads it chunk by chunk, each chunk within
``idle_timeout`` (408 past it), counting decoded bytes against the limit (413).

gzip and deflate are accepted: aiohttp decodes them as the body is read, a bounded piece at a time under
flow control, so a gzip bomb costs at most ``limit`` bytes here before it is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager

from aiohttp import web

from edged.budget import MemoryBudget
from edged.errors import BadBody, BodyTimeout, BodyTooLarge, Overloaded, UnsupportedEncoding

__all__ = ["ENCODINGS", "body_bound", "budget_reservation", "read_body"]

#: Content-Encodings taken; aiohttp decodes all but identity.
ENCODINGS = frozenset({"identity", "gzip", "deflate"})


def _encoding(request: web.BaseRequest) -> str:
    return request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


def body_bound(request: web.BaseRequest, limit: int) -> int:
    """The most bytes the body of ``request`` can take once read; raise UnsupportedEncoding or BodyTooLarge."""
    encoding = _encoding(request)
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:40]!r} is not taken (identity, gzip or deflate)")
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over {limit}")
    # A compressed body's declared length says nothing of its decoded size.
    return declared if declared is not None and encoding == "identity" else limit


async def read_body(request: web.BaseRequest, *, limit: int, idle_timeout: float,
                    on_chunk: Callable[[bytes], object] | None = None) -> bytes:
    """The body of ``request``, decoded; raise BodyTooLarge, BodyTimeout or BadBody. ``on_chunk`` sees each
    decoded chunk as it arrives (a digest computed while reading)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            raise BodyTimeout(f"the body stalled: nothing for {idle_timeout:g} s after {size} bytes") from exc
        except web.RequestPayloadError as exc:
            raise BadBody(f"the body could not be read as {_encoding(request)}: {exc}") from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes"
                               + (" once decoded" if _encoding(request) != "identity" else ""))
        if on_chunk is not None:
            on_chunk(chunk)
        chunks.append(chunk)


def budget_reservation(budget: MemoryBudget) -> Callable[[int], AbstractContextManager[object]]:
    """Reserve a body's bound against ``budget`` while it is read and answered.

    A body that could never fit is 413 (``too_large``); one that does not fit now is 503 with Retry-After
    (``overloaded``): the client retries, as it would for a busy pool.
    """

    def reserve(nbytes: int) -> AbstractContextManager[object]:
        reservation = budget.try_reserve(nbytes)
        if reservation is not None:
            return reservation
        if not budget.fits_ever(nbytes):
            raise BodyTooLarge(f"a body of up to {nbytes} bytes never fits edged's memory budget "
                               f"({budget.total} bytes)")
        raise Overloaded("not enough of edged's memory budget is free to read this body now")

    return reserve
