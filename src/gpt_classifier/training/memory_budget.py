"""How much memory this process may still use: the figure a cache should be sized against.

Inside a container or a SLURM job the limit is the memory cgroup's, not the machine's: a process
that sizes itself by `MemAvailable` there is killed without a word. So the headroom is the smallest
of `MemAvailable` and, for the process's cgroup and each of its ancestors that has a limit, that
limit minus the group's usage (cgroup v2 `memory.max` / `memory.current`, v1
`memory.limit_in_bytes` / `memory.usage_in_bytes`). On a GPU it is the free device memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes")
V2_FILES = ("memory.max", "memory.current")


@dataclass(frozen=True)
class Headroom:
    """Bytes this process may still allocate, and where that figure comes from (for the log)."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    """An integer cgroup file; None if absent or unlimited (`max`, or v1's near-2**63)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= 2**62:
        return None
    return int(text)


def memory_cgroup_dirs(proc_cgroup: str, root: Path = CGROUP_ROOT) -> list[tuple[Path, tuple[str, str]]]:
    """The process's memory cgroup folder and its ancestors (innermost first), with their file names.

    `proc_cgroup` is the text of /proc/self/cgroup: v1 lines name the `memory` controller
    (`4:memory:/a/b`), the v2 line is `0::/a/b`.
    """
    entries = [line.split(":", 2) for line in proc_cgroup.splitlines() if line.count(":") >= 2]
    v1 = [path for _, controllers, path in entries if "memory" in controllers.split(",")]
    v2 = [path for number, controllers, path in entries if number == "0" and controllers == ""]
    if v1:
        base, files, path = root / "memory", V1_FILES, v1[0]
    elif v2:
        base, files, path = root, V2_FILES, v2[0]
    else:
        return []
    folder = base / path.strip("/")
    if not folder.is_dir():  # a container may show its own group as the mount's root
        folder = base
    dirs = [folder, *folder.parents]
    return [(d, files) for d in dirs if d == base or base in d.parents]


def cgroup_headroom(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> Headroom | None:
    """The tightest `limit - usage` over the process's memory cgroups that have a limit, else None."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    best: Headroom | None = None
    for folder, (limit_file, usage_file) in memory_cgroup_dirs(proc_cgroup, root):
        limit = _read_int(folder / limit_file)
        if limit is None:
            continue
        usage = _read_int(folder / usage_file) or 0
        left = max(limit - usage, 0)
        if best is None or left < best.bytes:
            used = f"{limit / 2**30:.2f} GiB, {usage / 2**30:.2f} used"
            best = Headroom(left, f"cgroup {folder / limit_file} ({used})")
    return best


def available_ram() -> Headroom:
    """`MemAvailable` from /proc/meminfo (or torch's view of total memory where that file is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Headroom(int(line.split()[1]) * 1024, "MemAvailable")
    except OSError:
        pass
    return Headroom(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free memory")


def host_headroom() -> Headroom:
    """What this process may still allocate in host memory: the smaller of RAM and its cgroup's."""
    ram, group = available_ram(), cgroup_headroom()
    return group if group is not None and group.bytes < ram.bytes else ram


def device_headroom(device: torch.device) -> Headroom:
    """Free memory on `device` (a CUDA GPU's free memory, else the host's headroom)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Headroom(free, f"free memory of {device}")
    return host_headroom()
