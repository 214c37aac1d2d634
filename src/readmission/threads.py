"""How many threads the model's own scikit-learn code may use in a service, and the cap that holds it there.

scikit-learn's OpenMP loops (histogram gradient boosting) and BLAS size their pools from the CPUs the machine
has, not from the container's CPU limit: a pod limited to 2 CPUs on a 32-core node runs 32 threads per call,
which the kernel's CFS quota then throttles. ``available_cpus`` reads the limit; ``ThreadCap`` applies it
around each model call (threadpoolctl), in the calling thread, where OpenMP keeps its setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs of the cgroup's quota, rounded up; None when unlimited or unreadable.

    cgroup v2 ``cpu.max`` holds "QUOTA PERIOD" (microseconds) or "max PERIOD"; cgroup v1 splits them into
    ``cpu/cpu.cfs_quota_us`` (-1: unlimited) and ``cpu/cpu.cfs_period_us`` (Linux kernel documentation,
    admin-guide/cgroup-v2 and scheduler/sched-bwc). A Kubernetes CPU limit of 1500m is "150000 100000": 2."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        cpus = math.ceil(int(quota) / int(period))
    except (ValueError, ZeroDivisionError):
        return None
    return max(cpus, 1)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: the CPU affinity mask's size, lowered to the cgroup quota when there is one."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    return min(affinity, limit) if limit else affinity


def thread_cap(threads: int | None) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of context managers that limit the OpenMP and BLAS pools to ``threads`` while open (in the
    thread that opens it). It knows the libraries loaded when it is made (make it once the model is loaded);
    with None, or when no pool is larger than ``threads`` (nothing to cap), it makes no-op context managers,
    which cost nothing per call. Raises ``ValueError`` below 1."""
    if threads is None:
        return nullcontext
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    if all(pool.num_threads <= threads for pool in controller.lib_controllers):
        return nullcontext
    return lambda: controller.limit(limits=threads)


def limit_n_jobs(model: Any, threads: int) -> list[str]:
    """Set ``n_jobs`` to ``threads`` on every estimator inside ``model`` that asks for more (-1: every CPU, as
    the random forest does): joblib's threads, which threadpoolctl does not cap. Returns the classes changed."""
    changed: list[str] = []
    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if isinstance(obj, (list, tuple)) and len(obj) < 64:  # pipeline steps, calibrated copies; not forests' trees
            stack.extend(obj)
            continue
        if id(obj) in seen or not type(obj).__module__.startswith(("sklearn.", "readmission.")):
            continue
        seen.add(id(obj))
        jobs = getattr(obj, "n_jobs", None)
        if isinstance(jobs, int) and (jobs < 0 or jobs > threads):
            obj.n_jobs = threads  # set directly: FrozenEstimator refuses set_params; results do not depend on it
            changed.append(type(obj).__name__)
        stack.extend(getattr(obj, "__dict__", {}).values())
    return changed
