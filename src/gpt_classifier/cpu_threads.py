"""How many CPU threads torch should use: the CPUs this process may use, less those other work keeps busy.

torch's default is one thread per core of the machine, and its OpenMP threads busy-wait for each
other: with other work on the cores, a waiting thread spins on a core another thread needs, and a
run can slow down tenfold. So the default here counts only the CPUs this process may use (its
affinity, and its cgroup CPU quota as a container or a SLURM job sets it), and leaves out those
that other processes keep busy, measured over a tenth of a second at start. An explicit choice
always wins: the `threads` setting, or `OMP_NUM_THREADS` in the environment.

No torch import at module level: the command lines import this before deciding to load torch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
# cgroup v1 mounts the cpu controller under one of these names.
CGROUP_V1_CPU = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (`cpu.max` of cgroup v2, `cpu.cfs_quota_us / cpu.cfs_period_us` of v1),
    or None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for name in CGROUP_V1_CPU:
        try:
            quota_us = int((root / name / "cpu.cfs_quota_us").read_text())
            period_us = int((root / name / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def process_affinity() -> set[int]:
    """The CPUs this process may run on (every CPU where the OS does not say: macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def usable_cpus(root: Path = CGROUP_ROOT, affinity: set[int] | None = None) -> int:
    """CPUs this process may run on: its affinity, capped by the cgroup quota (at least 1)."""
    if affinity is None:
        affinity = (
            os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        )
    cpus = len(affinity) or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def cpu_times(cpus: set[int], stat: Path = PROC_STAT) -> dict[int, tuple[int, int]]:
    """(idle, total) clock ticks since boot of each CPU in `cpus`, from /proc/stat's `cpuN` lines."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            numbers = [int(tick) for tick in ticks]
            times[int(name[3:])] = (numbers[3] + numbers[4], sum(numbers[:8]))  # idle + iowait
    return times


def busy_cpus(cpus: set[int], seconds: float = 0.1, stat: Path = PROC_STAT) -> float:
    """How many of `cpus` other work keeps busy, measured over `seconds` while this process sleeps
    (0.0 where /proc/stat cannot be read)."""
    try:
        before = cpu_times(cpus, stat)
        time.sleep(seconds)
        after = cpu_times(cpus, stat)
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = 0.0
    for cpu, (idle, total) in after.items():
        elapsed = total - before.get(cpu, (idle, total))[1]
        if elapsed > 0:
            busy += 1 - (idle - before[cpu][0]) / elapsed
    return busy


def automatic_threads(usable: int, busy: float) -> int:
    """`usable` CPUs less those other work keeps busy (rounded half up), at least 1."""
    return max(1, usable - math.floor(busy + 0.5))


def choose_threads(threads: int | None = None, root: Path = CGROUP_ROOT) -> tuple[int | None, str]:
    """The number of threads to set (None: leave the library's own default) and why.

    `threads`: None = automatic (unless `OMP_NUM_THREADS` is set: then the libraries read it),
    0 = the library's own default, N = exactly N.
    """
    if threads == 0:
        return None, "the library's default"
    if threads is not None:
        return threads, "set"
    if os.environ.get("OMP_NUM_THREADS"):
        return None, "OMP_NUM_THREADS"
    affinity = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    )
    usable, busy = usable_cpus(root, affinity), busy_cpus(affinity)
    return automatic_threads(usable, busy), f"{usable} usable CPUs, {busy:.1f} busy with other work"


def apply_threads(
    threads: int | None = None, root: Path = CGROUP_ROOT, *, log_level: int = logging.DEBUG
) -> int:
    """Set torch's intra-op threads as `choose_threads` says and return the number in force (logged
    at `log_level`: a training run's log says it; a command line's errors stay one line)."""
    import torch

    count, reason = choose_threads(threads, root)
    if count:
        torch.set_num_threads(count)
    log.log(log_level, "CPU threads: %d (%s)", torch.get_num_threads(), reason)
    return torch.get_num_threads()
