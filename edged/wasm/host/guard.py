"""The one guard every host import runs behind: it never raises, it answers with an errno.

Why everything, ``BaseException`` included: wasmtime-py's trampoline catches whatever a host function
raises (``BaseException``), parks it in a module global (``wasmtime._func.LAST_EXCEPTION``) and traps;
the next thread to leave Wasm raises it. With several workers that can be another call's thread, so one
call's failure would surface as another's. Nothing may propagate, not even ``KeyboardInterrupt`` (only
ever delivered to the main thread, i.e. during ``edged invoke``, whose call stays bounded by its timeout)
or ``SystemExit``: an errno is the only safe way out.

The errno space differs per import family: ``edged.*`` answers ``abi.Errno``, ``edged.http_request``
its negation, WASI-NN its own ``nn_errno``. An ``Errnos`` names the two answers the guard gives itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec

import wasmtime

from edged.wasm.abi import Errno
from edged.wasm.host.context import current
from edged.wasm.memory import GuestMemoryError

__all__ = ["EDGED_ERRNOS", "Errnos", "Refused", "host_function"]

log = logging.getLogger("edged.wasm.host")

_P = ParamSpec("_P")
_HostFn = Callable[Concatenate[wasmtime.Caller, _P], int]


class Refused(Exception):
    """An expected refusal inside a host import: the guard returns ``errno`` to the guest."""

    def __init__(self, errno: int, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Errnos:
    """One import family's answers: for a pointer outside guest memory, and for anything unexpected."""

    invalid_argument: int
    unexpected: int


#: The ``edged.*`` imports (``edged.http_request`` answers the negation of the same values).
EDGED_ERRNOS = Errnos(invalid_argument=Errno.INVALID_ARGUMENT, unexpected=Errno.IO_ERROR)


#: ``report(import_name, errno, detail)``: told of every errno the guard answers instead of the import.
Report = Callable[[str, int, str], None]


def host_function(name: str, errnos: Errnos, report: Report | None = None) -> Callable[[_HostFn[_P]], _HostFn[_P]]:
    """Make ``fn`` a host import that never raises.

    ``Refused`` gives its errno and a ``GuestMemoryError`` ``errnos.invalid_argument``; anything else is
    logged with its traceback and gives ``errnos.unexpected``. Each of these is then told to ``report``.
    """

    def decorate(fn: _HostFn[_P]) -> _HostFn[_P]:
        @functools.wraps(fn)
        def wrapper(caller: wasmtime.Caller, /, *args: _P.args, **kwargs: _P.kwargs) -> int:
            try:
                return int(fn(caller, *args, **kwargs))
            except Refused as exc:
                errno, detail = exc.errno, exc.detail
            except GuestMemoryError as exc:
                errno, detail = errnos.invalid_argument, str(exc)
            except BaseException as exc:  # noqa: BLE001 (the module docstring says why)
                errno, detail = errnos.unexpected, f"{type(exc).__name__}: {exc}"
                _log_unexpected(name)
            if report is not None:
                try:
                    report(name, errno, detail)
                except BaseException:  # noqa: BLE001 (as above: a report must not raise either)
                    _log_unexpected(name)
            return errno

        return wrapper

    return decorate


def _log_unexpected(name: str) -> None:
    ctx = current()
    with contextlib.suppress(BaseException):  # logging itself failed: the errno still goes back
        log.exception("host import %s failed in function %s", name, ctx.function if ctx else "?",
                      extra={"FUNCTION": ctx.function if ctx else None})
