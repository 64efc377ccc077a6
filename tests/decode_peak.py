"""Measure the peak resident memory of ``edged.frames.decode`` for each file named on the command line.

Run as a script in a fresh process (``python -m tests.decode_peak FILE[@WxH]...``; ``@WxH`` decodes with that
``need``, a JPEG draft): prints one line per file,
``estimate peak`` in bytes, where peak is the growth of the peak RSS (VmHWM, reset through
/proc/self/clear_refs before each decode) over the RSS just before it. glibc's mmap threshold is pinned
as the daemon pins it, so freed frames go back to the system between files.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from edged.frames import decode, read_header
from edged.malloc import pin_mmap_threshold


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(paths: list[str]) -> None:
    pin_mmap_threshold()
    for arg in paths:
        path, _, size = arg.partition("@")
        need = tuple(int(side) for side in size.split("x")) if size else None
        assert need is None or len(need) == 2
        data = Path(path).read_bytes()
        estimate = read_header(data, max_pixels=10**10, need=need).decode_cost  # type: ignore[arg-type]
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        frame = decode(data, max_pixels=10**10, need=need)  # type: ignore[arg-type]
        peak = _status_kib("VmHWM") - before
        del frame
        print(estimate, peak * 1024, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
