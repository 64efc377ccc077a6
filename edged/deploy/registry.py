"""The functions deployed over the API and their versions, kept in ``state_dir/deploy/functions.json``.

Every change is written whole and atomically (edged.atomic.write_atomic) before it counts; the
event store is not involved. A version's ``spec`` is the function as accepted, every default filled in,
with ``module`` as ``sha256:<hex>``; ``previous`` is the version that was current when it was made (what
a rollback goes back to); ``succeeded`` is set the first time one of its calls succeeds.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.atomic import write_atomic

__all__ = ["Deployed", "Registry", "Version", "registry_path"]

log = logging.getLogger(__name__)

_FORMAT = 1


def registry_path(state_dir: Path) -> Path:
    return state_dir / "deploy" / "functions.json"


@dataclass
class Version:
    number: int
    spec: dict[str, Any]
    created_at: float
    previous: int | None = None
    succeeded: bool = False

    @property
    def digest(self) -> str:
        return str(self.spec["module"])


@dataclass
class Deployed:
    """One API function: its versions by number (oldest first) and which one runs."""

    current: int
    versions: dict[int, Version] = field(default_factory=dict)

    @property
    def running(self) -> Version:
        return self.versions[self.current]

    def add(self, spec: dict[str, Any], now: float, keep: int) -> Version:
        """A new current version; of the earlier ones, the one it replaces (what a rollback goes back to)
        and the newest others up to ``keep`` in all are kept."""
        number = max(self.versions, default=0) + 1
        previous = self.current if self.versions else None
        version = Version(number, spec, now, previous=previous)
        self.versions[number] = version
        self.current = number
        others = [n for n in self.versions if n not in (number, previous)]
        room = keep - (previous is not None)
        for old in others[:max(0, len(others) - room)]:
            del self.versions[old]
        return version


class Registry:
    """Deployed functions by name; ``copy()`` gives a candidate to change, ``save()`` makes it durable."""

    def __init__(self, path: Path, functions: dict[str, Deployed] | None = None) -> None:
        self.path = path
        self.functions: dict[str, Deployed] = functions if functions is not None else {}

    @classmethod
    def load(cls, path: Path) -> Registry:
        """The registry at ``path``; empty when there is none yet. ValueError when it cannot be read."""
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the deploy registry {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a deploy registry of format {_FORMAT}")
        functions = {}
        for name, entry in raw["functions"].items():
            versions = {int(v["number"]): Version(**v) for v in entry["versions"]}
            functions[name] = Deployed(int(entry["current"]), versions)
        return cls(path, functions)

    def copy(self) -> Registry:
        return Registry(self.path, copy.deepcopy(self.functions))

    def save(self) -> None:
        document = {"format": _FORMAT, "functions": {
            name: {"current": d.current, "versions": [asdict(v) for v in d.versions.values()]}
            for name, d in self.functions.items()}}
        write_atomic(self.path, json.dumps(document, indent=1, sort_keys=True).encode())
