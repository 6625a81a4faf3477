"""What a training process may use of the machine: its CPU threads, and memory handed back.

Threads: torch starts one intra-op thread per core it sees, which on a container limited to 2
CPUs of a bigger machine (an affinity mask or a cgroup quota), or with several processes per
machine (``torchrun --nproc-per-node``), oversubscribes the cores and makes every step slower.
``configure_threads`` gives each process its share of the CPUs it may use; ``OMP_NUM_THREADS``
or the run's ``num_threads`` override it.

Memory: a training step on CPU allocates its activations (a SQuAD window batch of 16 x 256 tokens
holds about 1.5 GB for MiniLM: attention dropout keeps three ``(B, heads, T, T)`` float tensors
per layer) and frees them at the end of the step. glibc's malloc raises its mmap threshold to the
size of each freed large block, so after the first steps such blocks come from the heap instead,
are kept by the process when freed and fragment as batch shapes vary: the resident size grows
step after step to several times what one step needs. ``return_freed_memory`` fixes the mmap
threshold, so that blocks of 1 MiB and more go back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from pathlib import Path

import torch

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 1 << 20


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota is not None else cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` (None: no quota)."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota_us <= 0 else quota_us / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):  # unreadable or unexpected: no quota known
        return None
    return None


def thread_count(requested: int = 0) -> int:
    """Intra-op threads for this process: ``requested`` if > 0, else ``OMP_NUM_THREADS`` if set,
    else torch's current count capped at this process's share of the available CPUs (they are
    shared by the processes of this machine, ``LOCAL_WORLD_SIZE``), so a lower count set by the
    caller (``torch.set_num_threads``) is kept."""
    if requested > 0:
        return requested
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp:
        try:
            return max(1, int(omp.split(",")[0]))
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={omp!r} is not a number of threads") from None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(torch.get_num_threads(), available_cpus() // max(1, local)))


def configure_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads (see ``thread_count``); returns the number set."""
    threads = thread_count(requested)
    torch.set_num_threads(threads)
    return threads


def return_freed_memory() -> bool:
    """Make glibc give freed blocks of 1 MiB and more back to the system (see the module
    docstring); False where the C library is not glibc (nothing is changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
