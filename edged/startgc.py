"""Start-up with the cyclic garbage collector paused: the daemon's imports build ~80,000 long-lived objects
(classes, pydantic schemas, numpy, aiohttp), and with the collector on, each full collection during start
walks all of them again while finding almost nothing to free (35 objects at ready).

``pause()`` (the process entry, edged.__main__, before anything of edged is imported) turns the collector
off; ``resume()`` turns it back on. The daemon resumes once it is ready (edged.app), after
``gc.freeze()`` has moved every object start made into the permanent generation: collections while
serving never walk them again. Start's cyclic garbage (~2,000 objects holding ~47,000) is frozen with
them rather than collected: measured, a full collection at ready costs 150-250 ms of CPU on this VM under
load (as much as the collector cost during the whole start) and frees 0.1-0.5 MB of RSS.
Code that imports edged as a library (tests, tools) never pauses, and ``resume()`` does nothing there.
"""

from __future__ import annotations

import gc

__all__ = ["pause", "resume"]

_paused = False


def pause() -> None:
    """Turn the cyclic collector off until ``resume()``; a no-op when it is already off."""
    global _paused  # noqa: PLW0603 - one flag per process, set once at the entry
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume(*, freeze: bool = False) -> None:
    """Turn the collector back on if ``pause()`` turned it off. With ``freeze`` (a daemon now ready), first
    move every object made so far, garbage or not, into the permanent generation."""
    global _paused  # noqa: PLW0603
    if not _paused:
        return
    _paused = False
    if freeze:
        gc.freeze()
    gc.enable()
