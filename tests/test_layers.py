"""The rooms of edged/ import only what docs/ARCHITECTURE.md says they may.

A room is a top-level module (``edged/frames.py``) or package (``edged/store/``). Data flows one way
(ingest -> frame -> pool -> store -> publish/sync), and a room may import only the rooms listed for it
below; the face (``app``, ``cli``) wires everything. A new room fails this test until it is given a
line here and in ARCHITECTURE's table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGED = Path(__file__).resolve().parents[1] / "edged"

_LEAVES = frozenset()
ALLOWED: dict[str, frozenset[str]] = {
    # Leaves: the standard library and third-party packages only.
    "errors": _LEAVES, "events": _LEAVES, "retry": _LEAVES, "secrets": _LEAVES, "cgroup_limit": _LEAVES,
    "malloc": _LEAVES, "lifecycle": _LEAVES, "systemd": _LEAVES, "journal": _LEAVES, "statelock": _LEAVES,
    "versions": _LEAVES, "logs": _LEAVES, "atomic": _LEAVES, "cadir": _LEAVES,
    "startgc": _LEAVES,
    "metrics": frozenset({"versions"}),
    "status": frozenset({"metrics"}),
    # settings reach into wasm for one stdlib-only module, the outbound URL policy (checked below).
    "settings": frozenset({"wasm"}),
    "budget": frozenset({"cgroup_limit", "settings"}),
    "decode_guard": frozenset({"errors"}),
    "frames": frozenset({"decode_guard", "errors", "rgb8"}),
    "rgb8": frozenset(),
    "encode": frozenset({"errors", "frames"}),
    "inference": frozenset({"errors", "settings"}),
    "wasm": frozenset({"atomic", "budget", "decode_guard", "encode", "errors", "frames", "inference", "metrics",
                       "rgb8", "settings"}),
    "store": frozenset({"errors", "events", "metrics", "settings"}),
    "mqtt": frozenset({"metrics", "retry", "secrets", "settings", "status"}),
    "pipeline": frozenset({"budget", "errors", "events", "frames", "metrics", "settings", "wasm"}),
    "sync": frozenset({"errors", "events", "metrics", "mqtt", "retry", "secrets", "settings", "status", "store"}),
    # What check-config checks and run refuses to start on: files, secrets, models and modules loaded.
    "preflight": frozenset({"inference", "secrets", "settings", "wasm"}),
    # What a reload may change, checked as check-config checks (preflight) before the face swaps it in.
    "reload": frozenset({"preflight", "settings"}),
    # Functions deployed over the API: modules, versions, ceilings, rollback; the pool only through the face.
    "deploy": frozenset({"atomic", "errors", "settings"}),
    "ingest": frozenset({"budget", "deploy", "errors", "events", "frames", "metrics", "mqtt", "pipeline", "retry",
                         "secrets", "settings", "status", "store", "sync", "wasm"}),
}
#: The face builds and wires every part.
FACE = frozenset({"__main__", "app", "cli"})
#: What settings may import from wasm: the URL policy, which imports nothing from edged.
SETTINGS_FROM_WASM = frozenset({"edged.wasm.host.urls"})


def _module(path: Path) -> str:
    parts = path.relative_to(EDGED.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "edged" or name.startswith("edged.")}


MODULES = sorted(EDGED.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(EDGED)))
def test_room_imports_only_what_it_may(path: Path) -> None:
    module = _module(path)
    room = _room(module)
    if room in FACE or room == "":
        return
    assert room in ALLOWED, f"{module}: a new room; give it a line in ALLOWED and in docs/ARCHITECTURE.md"
    for target in _imports(path):
        other = _room(target)
        if other == room:
            continue
        assert other in ALLOWED[room], f"{module} imports {target}: {room} may import {sorted(ALLOWED[room])}"
        if room == "settings" and other == "wasm":
            assert target in SETTINGS_FROM_WASM, f"{module} imports {target}"


def test_url_policy_imports_nothing_from_edged() -> None:
    for target in SETTINGS_FROM_WASM:
        path = EDGED.parent / (target.replace(".", "/") + ".py")
        assert _imports(path) == set(), f"{target} must stay a leaf: settings import it"


def test_no_room_relies_on_relative_imports() -> None:
    relative = [str(p.relative_to(EDGED)) for p in MODULES
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == []
