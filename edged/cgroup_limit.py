"""How much memory this process may use: its memory cgroup's limit, or the machine's RAM.

systemd's ``MemoryMax=`` (and a container's memory limit) is a cgroup limit: cgroup v2 ``memory.max``,
or cgroup v1 ``memory.limit_in_bytes`` under a hybrid or legacy hierarchy. The limit that applies is
the smallest one on the path from this process's cgroup up to the hierarchy's root. Every path is read
under ``root`` so tests can hand in a fake tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["UNLIMITED_V1", "detect_memory_limit", "mem_total"]

#: cgroup v1 reports "no limit" as the largest page-aligned counter (9223372036854771712 on 4 KiB
#: pages); anything this large means none.
UNLIMITED_V1 = 1 << 60


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the cgroup path mounted there (not "/" inside a container without a cgroup namespace)
    point: str


def detect_memory_limit(root: Path = Path("/")) -> int | None:
    """This process's memory cgroup limit in bytes; None when there is none (or it cannot be read)."""
    try:
        membership = (root / "proc/self/cgroup").read_text()
        mountinfo = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return None
    v2_path, v1_path = _membership(membership)
    v2_mount, v1_mount = _mounts(mountinfo)
    if v2_path is not None and v2_mount is not None:
        limit = _smallest(root, v2_mount, v2_path, "memory.max")
        if limit is not None:
            return limit
    if v1_path is not None and v1_mount is not None:
        return _smallest(root, v1_mount, v1_path, "memory.limit_in_bytes")
    return None


def mem_total(root: Path = Path("/")) -> int | None:
    """``MemTotal`` from /proc/meminfo in bytes; None if unreadable."""
    try:
        text = (root / "proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def _membership(text: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) from /proc/self/cgroup ("ID:controllers:path" lines)."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _mounts(text: str) -> tuple[_Mount | None, _Mount | None]:
    """(cgroup2 mount, v1 memory-controller mount) from /proc/self/mountinfo."""
    v2 = v1 = None
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mount = _Mount(root=_unescape(fields[3]), point=_unescape(fields[4]))
        if tail[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif tail[0] == "cgroup" and "memory" in tail[2].split(",") and v1 is None:
            v1 = mount
    return v2, v1


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _smallest(root: Path, mount: _Mount, cgroup_path: str, name: str) -> int | None:
    """The smallest numeric ``name`` from the process's cgroup directory up to the mount point."""
    path, base = PurePosixPath(cgroup_path), PurePosixPath(mount.root)
    # Outside a cgroup namespace a container sees its full path, mounted at its own cgroup: use the mount.
    relative = path.relative_to(base) if path.is_relative_to(base) else PurePosixPath()
    top = root / mount.point.lstrip("/")
    directory = top / relative
    limits: list[int] = []
    while True:
        value = _read_limit(directory / name)
        if value is not None:
            limits.append(value)
        if directory == top:
            break
        directory = directory.parent
    return min(limits) if limits else None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2): no limit at this level
        return None
    value = int(text)
    return value if value < UNLIMITED_V1 else None
