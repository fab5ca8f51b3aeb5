"""How many CPU threads the numerical libraries may use (``--threads`` of the training steps and ``tissuemap run``).

On a shared machine, one thread per core this process may use is the most that helps: OpenMP threads that have to
wait for a core spin at every operation, and a torch fit with more threads than free cores was measured 20 times
slower than with one. The default is therefore the CPUs this process may run on (its affinity mask, capped by a
cgroup CPU quota, as a container or a batch scheduler sets it), and an ``OMP_NUM_THREADS`` the user set lowers it.

Libraries can change torch's count behind our back (numba, which scanpy's QC metrics run on, resets OpenMP's thread
count when it starts its own pool), so each training step applies the count again right before it trains.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tissuemap.errors import InputError
from tissuemap.log import counted, logger

# Read by OpenMP, MKL, OpenBLAS and numba when they start their thread pools (later in this process, or in a child).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _quota_v2(folder: Path) -> float | None:
    """CPUs allowed by ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") in ``folder``; ``None`` when unlimited/absent."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in ``folder``; ``None`` when -1 or absent."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup and its ancestors (the smallest applies), in CPUs; ``None`` if none.

    cgroup v2: ``cpu.max`` along the process's path under ``root``; v1: ``cpu.cfs_quota_us`` under ``root/cpu``
    (or ``cpu,cpuacct``). Inside a container the path is usually ``/``, so the files at the root are the container's.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[tuple[Path, object]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = Path(path.lstrip("/"))
        if controllers == "":
            bases = [(root, _quota_v2)]
        elif "cpu" in controllers.split(","):
            bases = [(root / name, _quota_v1) for name in ("cpu", "cpu,cpuacct", controllers)]
        else:
            continue
        for base, read in bases:
            for depth in range(len(relative.parts), -1, -1):
                folders.append((base.joinpath(*relative.parts[:depth]), read))
    if not lines:
        folders = [(root, _quota_v2), (root / "cpu", _quota_v1)]
    limits = [limit for folder, read in dict.fromkeys(folders) if (limit := read(folder)) is not None]
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota (whole CPUs, rounded down, at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return cpus


def default_threads() -> int:
    """``--threads`` when not given: :func:`available_cpus`, or fewer when the user set ``OMP_NUM_THREADS`` lower."""
    cpus = available_cpus()
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return cpus
    return min(cpus, asked) if asked >= 1 else cpus


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: ``threads`` if given (a warning when above the CPUs available), else the default."""
    if threads is None:
        return default_threads()
    if threads < 1:
        raise InputError(f"--threads {threads}: give at least 1 thread")
    cpus = available_cpus()
    if threads > cpus:
        logger.warning("--threads %d: this process may use only %s; more threads than cores slow training down",
                       threads, counted(cpus, "CPU"))
    return threads


def use_threads(threads: int) -> None:
    """Make torch compute on ``threads`` threads now, and the thread pools started later in this process (OpenMP,
    MKL, OpenBLAS, numba) start with that many. Called when a step starts and again right before training."""
    import torch

    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
