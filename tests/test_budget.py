"""edged.budget: the memory budget's accounting, the cgroup limit read from fake /proc and /sys trees."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edged.budget import MIN_WORK_BYTES, MemoryBudget, detect_work_budget, work_budget_bytes
from edged.cgroup_limit import detect_memory_limit, mem_total
from edged.settings import ConfigError, LimitsSettings, load_settings

MiB = 1024 * 1024
V1_NONE = "9223372036854771712"
HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def test_cgroup_v2_memory_max_of_the_service(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/system.slice/edged.service\n", V2_MOUNTS, {
        "/sys/fs/cgroup/system.slice/memory.max": "max",
        "/sys/fs/cgroup/system.slice/edged.service/memory.max": str(512 * MiB),
    })
    assert detect_memory_limit(root) == 512 * MiB


def test_the_smallest_limit_on_the_way_up_applies(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/edge.slice/edged.service\n", V2_MOUNTS, {
        "/sys/fs/cgroup/edge.slice/memory.max": str(300 * MiB),
        "/sys/fs/cgroup/edge.slice/edged.service/memory.max": str(512 * MiB),
    })
    assert detect_memory_limit(root) == 300 * MiB


def test_max_everywhere_is_no_limit(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/system.slice/edged.service\n", V2_MOUNTS, {
        "/sys/fs/cgroup/system.slice/edged.service/memory.max": "max",
    })
    assert detect_memory_limit(root) is None


def test_cgroup_v1_memory_limit_in_a_hybrid_hierarchy(tmp_path: Path) -> None:
    cgroup = "12:cpu,cpuacct:/\n4:memory:/system.slice/edged.service\n0::/system.slice/edged.service\n"
    root = _tree(tmp_path, cgroup, HYBRID_MOUNTS, {
        "/sys/fs/cgroup/unified/system.slice/edged.service/cgroup.procs": "1",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_NONE,
        "/sys/fs/cgroup/memory/system.slice/memory.limit_in_bytes": V1_NONE,
        "/sys/fs/cgroup/memory/system.slice/edged.service/memory.limit_in_bytes": str(256 * MiB),
    })
    assert detect_memory_limit(root) == 256 * MiB


def test_cgroup_v1_huge_value_is_no_limit(tmp_path: Path) -> None:
    root = _tree(tmp_path, "4:memory:/user.slice\n", HYBRID_MOUNTS, {
        "/sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes": V1_NONE,
    })
    assert detect_memory_limit(root) is None


def test_a_container_without_a_cgroup_namespace_reads_its_mount(tmp_path: Path) -> None:
    # /proc/self/cgroup shows the host's path; the container's own cgroup is mounted at the mount point.
    mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    root = _tree(tmp_path, "9:memory:/docker/abc\n", mounts, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(128 * MiB),
    })
    assert detect_memory_limit(root) == 128 * MiB


def test_no_cgroup_files_is_no_limit(tmp_path: Path) -> None:
    assert detect_memory_limit(tmp_path) is None
    assert detect_memory_limit(_tree(tmp_path / "t", "0::/\n", "", {})) is None


def test_mem_total(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:        1012736 kB\nMemFree:          12345 kB\n")
    assert mem_total(tmp_path) == 1012736 * 1024
    assert mem_total(tmp_path / "nothing") is None


def test_work_budget_is_the_limit_less_the_reserve() -> None:
    defaults = LimitsSettings(reserve_mb=160)
    # memory_mb wins over everything detected.
    limits = LimitsSettings(memory_mb=512, reserve_mb=160)
    assert work_budget_bytes(limits, cgroup_limit=2048 * MiB, ram=8192 * MiB) == 352 * MiB
    assert work_budget_bytes(defaults, cgroup_limit=512 * MiB, ram=8192 * MiB) == 352 * MiB
    assert work_budget_bytes(defaults, cgroup_limit=None, ram=1024 * MiB) == (512 - 160) * MiB
    assert work_budget_bytes(defaults, cgroup_limit=None, ram=None) == (512 - 160) * MiB  # a 1 GiB guess
    assert work_budget_bytes(defaults, cgroup_limit=100 * MiB, ram=None) == MIN_WORK_BYTES


def test_detected_work_budget_follows_this_process() -> None:
    limit, ram = detect_memory_limit(), mem_total()
    expected = work_budget_bytes(LimitsSettings(), cgroup_limit=limit, ram=ram)
    assert detect_work_budget(LimitsSettings()) == expected


def test_limits_settings_need_room_for_work(tmp_path: Path) -> None:
    config = tmp_path / "edged.toml"
    config.write_text("[limits]\nmemory_mb = 128\nreserve_mb = 160\n")
    with pytest.raises(ConfigError, match="limits"):
        load_settings(config)
    config.write_text("[limits]\nmemory_mb = 1024\n")
    assert load_settings(config).limits == LimitsSettings(memory_mb=1024, reserve_mb=176)


def test_reservations_count_and_refuse() -> None:
    budget = MemoryBudget(100)
    assert budget.fits_ever(100)
    assert not budget.fits_ever(101)
    first = budget.try_reserve(60)
    assert first is not None
    assert budget.try_reserve(41) is None
    second = budget.try_reserve(40)
    assert second is not None
    stats = budget.stats()
    assert (stats.in_use, stats.peak, stats.admitted, stats.refused) == (100, 100, 2, 1)
    first.release()
    first.release()  # idempotent
    assert first.nbytes == 0
    with second:
        second.shrink(10)
        assert budget.stats().in_use == 10
        second.shrink(20)  # growing is not shrinking: ignored
        assert second.nbytes == 10
    assert budget.stats().in_use == 0
    assert budget.stats().peak == 100


def test_reserve_waits_for_a_release_from_another_thread() -> None:
    budget = MemoryBudget(100)
    held = budget.try_reserve(80)
    assert held is not None
    assert budget.reserve(30, timeout=0.01) is None
    releaser = threading.Thread(target=held.release)
    releaser.start()
    got = budget.reserve(30, timeout=10)
    releaser.join(10)
    assert got is not None
    assert budget.stats().in_use == 30
    with pytest.raises(ValueError, match="never fit"):
        budget.reserve(101, timeout=1)


def test_reservations_from_many_threads_balance() -> None:
    budget = MemoryBudget(1000)
    peaks: list[int] = []

    def churn() -> None:
        for _ in range(2000):
            reservation = budget.try_reserve(7)
            if reservation is not None:
                peaks.append(budget.stats().in_use)
                reservation.release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stats = budget.stats()
    assert stats.in_use == 0
    assert stats.admitted + stats.refused == 8 * 2000
    assert max(peaks) <= 1000
