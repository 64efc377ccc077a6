"""Bounds-checked access to a guest's exported linear memory: the one place host code touches it.

Every host import (``edged.*``, WASI-NN) and the pool's input write go through ``GuestMemory``. It takes
the memory's base address and size once, when it is made: that snapshot stays valid while the guest is
suspended (during one host import, or between two guest calls on the same thread), because only
``memory.grow`` moves or resizes a linear memory, only guest code grows it here, and the engine has no
shared memories. Make a new one after the guest has run again.
"""

from __future__ import annotations

import ctypes
import struct

import wasmtime

__all__ = ["U32", "GuestMemory", "GuestMemoryError", "u32"]

U32 = 0xFFFF_FFFF
_U32 = struct.Struct("<I")


def u32(value: int) -> int:
    """Wasm i32 values arrive signed; pointers and lengths are unsigned."""
    return value & U32


class GuestMemoryError(ValueError):
    """A guest pointer/length pair lies outside the guest's memory."""


class GuestMemory:
    """The guest's memory as it is now (see the module docstring for how long that holds)."""

    __slots__ = ("_base", "size")

    def __init__(self, memory: wasmtime.Memory, store: wasmtime.Store | wasmtime.Caller) -> None:
        self.size = int(memory.data_len(store))
        self._base = ctypes.cast(memory.data_ptr(store), ctypes.c_void_p).value or 0

    @classmethod
    def at(cls, base: int, size: int) -> GuestMemory:
        """A snapshot from the memory's base address and size (edged.wasm.rawstore reads both raw)."""
        memory = cls.__new__(cls)
        memory._base, memory.size = base, int(size)
        return memory

    @classmethod
    def of_caller(cls, caller: wasmtime.Caller) -> GuestMemory | None:
        """The calling instance's export ``memory``, or None when it exports none."""
        memory = caller.get("memory")
        return cls(memory, caller) if isinstance(memory, wasmtime.Memory) else None

    def _address(self, ptr: int, length: int, what: str) -> int:
        if ptr < 0 or length < 0 or ptr + length > self.size or (length and not self._base):
            where = f"{what}: " if what else ""
            raise GuestMemoryError(f"{where}{length} bytes at {ptr:#x} are outside the guest's {self.size} bytes")
        return self._base + ptr

    def check(self, ptr: int, length: int, what: str = "") -> None:
        """Raise GuestMemoryError unless ``length`` bytes at ``ptr`` lie inside the memory."""
        self._address(ptr, length, what)

    def view(self, ptr: int, length: int, what: str = "") -> ctypes.Array[ctypes.c_ubyte]:
        """A zero-copy view of ``length`` bytes at ``ptr``; as valid as this snapshot."""
        return (ctypes.c_ubyte * length).from_address(self._address(ptr, length, what))

    def read(self, ptr: int, length: int, what: str = "") -> bytes:
        address = self._address(ptr, length, what)
        return ctypes.string_at(address, length) if length else b""

    def u32s(self, ptr: int, count: int, what: str = "") -> tuple[int, ...]:
        return struct.unpack(f"<{count}I", self.view(ptr, 4 * count, what))

    def write(self, ptr: int, data: bytes | bytearray | memoryview, what: str = "") -> None:
        """Copy ``data`` (any C-contiguous buffer, e.g. a numpy array's memoryview) to ``ptr``."""
        if isinstance(data, bytes):
            ctypes.memmove(self._address(ptr, len(data), what), data, len(data))
            return
        source = memoryview(data).cast("B")
        address = self._address(ptr, source.nbytes, what)
        if source.nbytes:
            memoryview((ctypes.c_ubyte * source.nbytes).from_address(address)).cast("B")[:] = source

    def write_u32(self, ptr: int, value: int, what: str = "") -> None:
        self.write(ptr, _U32.pack(value & U32), what)
