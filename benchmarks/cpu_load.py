"""How busy the rest of the machine is: CPU-timing benchmarks say whether their times compare."""

from __future__ import annotations

import os
import time
from pathlib import Path


def other_cpu_use(seconds: float = 2.0) -> float:
    """Cores' worth of CPU time the rest of the machine used over `seconds` (Linux /proc/stat; this process
    sleeps meanwhile). The load average would lag by a minute and count stopped or niced jobs alike."""

    def busy_and_total() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = busy_and_total()
    time.sleep(seconds)
    busy1, total1 = busy_and_total()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
