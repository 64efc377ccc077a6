"""Symlinks a guest makes in a writable preopen (WASI ``path_symlink``): what wasmtime refuses, and what it
cannot (docs/ABI.md, "Writable preopens and symlinks").

wasmtime refuses an absolute target and never follows a link out of a preopen, for this guest or any
other. A relative target climbing out (``../x``) is created all the same: only host processes that
follow it escape, so these tests pin that down as the hazard operators are warned about.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edged.settings import FunctionSettings, PoolSettings, Preopen
from edged.wasm.pool import FunctionPool
from tests.pools import call_sync
from tests.wat import OUT_FD, Wat, raw_frame, write_wasm

pytestmark = pytest.mark.timeout(120)

_SYMLINK = ('(import "wasi_snapshot_preview1" "path_symlink" '
            '(func $path_symlink (param i32 i32 i32 i32 i32) (result i32)))')
LOOKUP_FOLLOW = 1
RIGHT_READ = 1 << 1
ERRNO_NOENT, ERRNO_PERM = 44, 63


def m_symlink(target: str, link: str) -> str:
    """path_symlink(target, /out/link), then path_open(/out/link) following it; reports both errnos."""
    w = Wat()
    return w.frame_module(f"""
    (local.set $symlink (call $path_symlink {w.ptr_len(target)} (i32.const 3) {w.ptr_len(link)}))
    (local.set $open (call $path_open (i32.const 3) (i32.const {LOOKUP_FOLLOW}) {w.ptr_len(link)} (i32.const 0)
                                      (i64.const {RIGHT_READ}) (i64.const 0) (i32.const 0) (i32.const {OUT_FD})))
    {w.json(symlink='(local.get $symlink)', open='(local.get $open)')}
    (drop (call $emit)) (i32.const 0)""", locals_="(local $symlink i32) (local $open i32)", imports=_SYMLINK)


def m_follow(link: str) -> str:
    """path_open(/out/link) following symlinks, from a guest that makes none."""
    w = Wat()
    return w.frame_module(f"""
    (local.set $open (call $path_open (i32.const 3) (i32.const {LOOKUP_FOLLOW}) {w.ptr_len(link)} (i32.const 0)
                                      (i64.const {RIGHT_READ}) (i64.const 0) (i32.const 0) (i32.const {OUT_FD})))
    {w.json(open='(local.get $open)')}
    (drop (call $emit)) (i32.const 0)""", locals_="(local $open i32)")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/secret.txt outside, tmp/out/ (the writable preopen) with out/sub/ and out/inside.txt."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "inside.txt").write_text("inside")
    return tmp_path


def run(tree: Path, wat: str, *, writable: bool = True) -> Any:
    path = write_wasm(tree, "fn", wat)
    grant = (Preopen(host=tree / "out", guest="/out", writable=writable),)
    functions = {"fn": FunctionSettings(module=path, preopens=grant)}
    with FunctionPool(functions, PoolSettings(workers=1, queue=1), tree / "cache") as pool:
        return call_sync(pool, "fn", raw_frame(b"{}")).json


@pytest.mark.parametrize("target", ["/etc/passwd", "/out/inside.txt", "{tree}/secret.txt"])
def test_an_absolute_target_is_refused(tree: Path, target: str) -> None:
    got = run(tree, m_symlink(target.replace("{tree}", str(tree)), "abs"))
    assert got["symlink"] == ERRNO_PERM
    assert not (tree / "out" / "abs").is_symlink()


@pytest.mark.parametrize("target", ["../secret.txt", "sub/../../secret.txt", "../../../../../../etc/passwd"])
def test_a_relative_target_outside_is_created_but_the_guest_cannot_follow_it(tree: Path, target: str) -> None:
    got = run(tree, m_symlink(target, "escape"))
    link = tree / "out" / "escape"
    assert got == {"symlink": 0, "open": ERRNO_PERM}
    # What wasmtime cannot prevent: the link is on the host, pointing out of the preopen ...
    assert os.readlink(link) == target
    assert not link.resolve().is_relative_to((tree / "out").resolve())
    # ... and a host process that follows it reads outside (which is why docs/ABI.md warns operators).
    if target.endswith("secret.txt"):
        assert link.read_text() == "secret"
    # Another function given the same directory, read-only this time, cannot follow it either.
    assert run(tree, m_follow("escape"), writable=False) == {"open": ERRNO_PERM}


def test_a_link_inside_the_preopen_is_followed(tree: Path) -> None:
    assert run(tree, m_symlink("sub/../inside.txt", "near")) == {"symlink": 0, "open": 0}
    assert run(tree, m_symlink("missing.txt", "dangling")) == {"symlink": 0, "open": ERRNO_NOENT}
    assert run(tree, m_follow("near"), writable=False) == {"open": 0}


def test_a_read_only_preopen_takes_no_symlink(tree: Path) -> None:
    got = run(tree, m_symlink("../secret.txt", "escape"), writable=False)
    assert got["symlink"] != 0
    assert not (tree / "out" / "escape").is_symlink()
