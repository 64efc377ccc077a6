"""Uploaded modules, content-addressed: ``state_dir/modules/sha256/<hex>.wasm``, each written atomically."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edged.atomic import write_atomic

__all__ = ["ModuleStore", "Stored", "digest_hex"]

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def digest_hex(ref: str) -> str | None:
    """The hex of a ``sha256:<64 lowercase hex>`` reference, None for anything else."""
    match = _DIGEST.fullmatch(ref)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Stored:
    """One stored module: its digest, size, and when it was (last) uploaded (the file's mtime)."""

    hexdigest: str
    size: int
    uploaded_at: float


class ModuleStore:
    """The modules uploaded to this device, by sha256. A module's mtime is its upload time (``now``)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "modules" / "sha256"

    def path(self, hexdigest: str) -> Path:
        return self.root / f"{hexdigest}.wasm"

    def has(self, hexdigest: str) -> bool:
        return self.path(hexdigest).is_file()

    def put(self, hexdigest: str, wasm: bytes, now: float) -> bool:
        """Store ``wasm`` (whose sha256 the caller checked), uploaded at ``now``; False when it was already
        there (its upload time is renewed then)."""
        path = self.path(hexdigest)
        new = not path.is_file()
        if new:
            write_atomic(path, wasm)
        os.utime(path, (now, now))
        return new

    def stored(self) -> list[Stored]:
        """Every module in the store (not the temporary files of a write in progress)."""
        found = []
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    hexdigest = entry.name.removesuffix(".wasm")
                    if entry.name.endswith(".wasm") and digest_hex(f"sha256:{hexdigest}"):
                        with contextlib.suppress(FileNotFoundError):
                            st = entry.stat()
                            found.append(Stored(hexdigest, st.st_size, st.st_mtime))
        except FileNotFoundError:
            pass  # nothing uploaded yet
        return found

    def remove(self, hexdigest: str) -> bool:
        """Remove a module; False when it was not there."""
        try:
            self.path(hexdigest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digest_of(self, path: Path) -> str | None:
        """``sha256:<hex>`` when ``path`` is one of this store's modules, else None."""
        if path.parent != self.root or path.suffix != ".wasm":
            return None
        ref = f"sha256:{path.stem}"
        return ref if digest_hex(ref) else None
