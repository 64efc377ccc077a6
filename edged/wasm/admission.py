"""The pool's side of the memory budget: what one decoded frame and one call hold, and when they are refused.

- A frame reserves its decode's peak (``ImageHeader.decode_cost``) once its header is read, keeps only
  its pixels once decoded, and gives them back after its last call.
- A call reserves its guest's worst case (``memory_mb``; a command also its stdout file, up to
  ``max_output_bytes``) while its Store lives, its result's copy when the guest hands it over, and the
  encode's memory (``edged.encode.encode_cost``) once the guest's memory is gone.

Work that can never fit is refused for good (TooManyPixels for a frame, MemoryLimit for a function whose
limits exceed the budget, BadOutput for a result); work that does not fit now raises Overloaded: HTTP
answers 503 with Retry-After, MQTT does not ack and retries.
"""

from __future__ import annotations

from edged.budget import MemoryBudget, Reservation
from edged.errors import BadOutput, MemoryLimit, Overloaded, TooManyPixels
from edged.frames import Frame, ImageHeader
from edged.settings import FunctionSettings

__all__ = ["DEFAULT_MAX_RESULT_PIXELS", "NO_BUDGET", "STDOUT_OVERSHOOT", "CallMemory", "FrameHold", "call_bytes"]

MiB = 1024 * 1024
#: Largest frame result (width * height) without settings: the default input limit (http.max_pixels).
DEFAULT_MAX_RESULT_PIXELS = 40_000_000
#: The budget of a pool given none (tools, tests): never refuses.
NO_BUDGET = 1 << 62
#: What a stdout file may hold past its limit before the ticker cuts it: 1.4 GB/s x one 5 ms tick is
#: ~7 MB, twice that for a ticker late by a tick (edged.wasm.scratch has the figures measured under load).
STDOUT_OVERSHOOT = 16 * MiB


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.0f} MiB"


class FrameHold:
    """One frame's reservation: from its header until its last call is over. ``release`` is idempotent."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._reservation: Reservation | None = None

    def admit(self, header: ImageHeader) -> None:
        """``edged.frames.decode``'s admit hook: reserve the decode's peak or refuse the image."""
        cost = header.decode_cost
        what = f"decoding this {header.width}x{header.height} {header.format} needs up to {_mib(cost)}"
        if not self._budget.fits_ever(cost):
            raise TooManyPixels(f"{what}; edged's memory budget is {_mib(self._budget.total)}")
        reservation = self._budget.try_reserve(cost)
        if reservation is None:
            raise Overloaded(f"{what} and not enough of edged's memory budget is free now")
        self._reservation = reservation

    def decoded(self, frame: Frame) -> None:
        """Decoding is over: keep only the frame's pixels."""
        if self._reservation is not None:
            self._reservation.shrink(frame.pixel_bytes)

    def release(self) -> None:
        if self._reservation is not None:
            self._reservation.release()


def call_bytes(settings: FunctionSettings) -> int:
    """What one call of a function may hold while its Store lives: its guest memory, plus a command's
    stdout file (in a tmpfs: memory too)."""
    nbytes = settings.memory_mb * MiB
    if settings.abi == "wasi-command":
        nbytes += settings.max_output_bytes + STDOUT_OVERSHOOT
    return nbytes


class CallMemory:
    """One call's reservations. Made on the worker thread; ``release`` gives back everything left."""

    def __init__(self, budget: MemoryBudget, function: str, settings: FunctionSettings) -> None:
        self._budget = budget
        self._function = function
        self._settings = settings
        self._guest: Reservation | None = None
        self._held: list[Reservation] = []
        #: Why a result could not be reserved now (the call then ends Overloaded), or None.
        self.refused: str | None = None

    def reserve_guest(self) -> None:
        """Before the Store: the guest's worst case. Raises MemoryLimit (never fits) or Overloaded."""
        nbytes = call_bytes(self._settings)
        if not self._budget.fits_ever(nbytes):
            raise MemoryLimit(f"function {self._function} may use {_mib(nbytes)} (memory_mb"
                              f"{', max_output_bytes' if self._settings.abi == 'wasi-command' else ''}); "
                              f"edged's memory budget is {_mib(self._budget.total)}")
        self._guest = self._budget.try_reserve(nbytes)
        if self._guest is None:
            raise Overloaded(f"function {self._function} needs {_mib(nbytes)} and not enough of edged's "
                             f"memory budget is free now")

    def reserve_output(self, nbytes: int) -> bool:
        """A result's copy, from ``edged.output`` (the guest is alive). False when refused."""
        if not self._budget.fits_ever(nbytes):
            return False
        reservation = self._budget.try_reserve(nbytes)
        if reservation is None:
            self.refused = f"a result of {_mib(nbytes)} does not fit in edged's memory budget now"
            return False
        self._held.append(reservation)
        return True

    def guest_gone(self) -> None:
        """The Store is closed: its memory is back with the allocator."""
        if self._guest is not None:
            self._guest.release()
            self._guest = None

    def reserve_encode(self, nbytes: int) -> None:
        """After the Store: encoding a frame result. Raises BadOutput (never fits) or Overloaded."""
        if not self._budget.fits_ever(nbytes):
            raise BadOutput(f"encoding the result needs {_mib(nbytes)}; edged's memory budget is "
                            f"{_mib(self._budget.total)}")
        reservation = self._budget.try_reserve(nbytes)
        if reservation is None:
            raise Overloaded(f"encoding the result needs {_mib(nbytes)} and not enough of edged's memory "
                             f"budget is free now")
        self._held.append(reservation)

    def release(self) -> None:
        self.guest_gone()
        held, self._held = self._held, []
        for reservation in held:
            reservation.release()
