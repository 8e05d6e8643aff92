"""What the benchmarks read of a process from /proc: memory, CPU time and children (Linux only)."""

from __future__ import annotations

import os


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A C{/proc/<pid>/status} memory field in KiB: C{VmRSS} now, C{VmHWM} at its peak; 0 if absent."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of C{pid} so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of C{pid} (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []
