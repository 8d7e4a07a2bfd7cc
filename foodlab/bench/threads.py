"""How many torch threads a CPU benchmark uses: the cores other processes leave free.

With as many torch threads as cores and another process busy on some of them, every parallel
region waits at its end for the thread the kernel has just descheduled. A step made of many
short operators (the fast head, a fraction of a second) pays that wait far more often than one
made of few long operators (a SAM2 step, tens of seconds), so a busy machine changes the ratio
between them, and interleaving cannot undo it: it is the workload that changed, not the order.
So on CPU every experiment measures with ``threads = cores other processes leave free`` (read in
the load monitor's short sample right before measuring; at least 1, at most what torch would use
anyway), and records the count with the run. ``--threads N`` pins it instead (to compare runs taken
on different days, or to measure the single-thread case).

On CUDA and MPS the steps run on the device; torch's thread count is left as it is and recorded.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

from foodlab.errors import UsageError

# a core counts as free when other processes used less than this share of it
BUSY_CORE = 0.5


def free_threads(cpus: int, other_cores: float, most: int) -> int:
    """Torch threads for a CPU benchmark: cores left free by others (rounded), between 1 and ``most``."""
    free = math.floor(cpus - other_cores + BUSY_CORE)
    return max(1, min(most, free))


def check_requested(requested: int | None) -> None:
    """Refuse a pinned thread count below 1 (before anything is measured or logged)."""
    if requested is not None and (not isinstance(requested, int) or requested < 1):
        raise UsageError(f"--threads must be a whole number of at least 1, got {requested!r}")


def choose(device, other_cores: float, cpus: int, requested: int | None = None) -> int:
    """The thread count to measure with: ``requested`` if given, the free cores on CPU, else torch's own."""
    import torch

    check_requested(requested)
    if requested is not None:
        return requested
    current = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        return current
    return free_threads(cpus, other_cores, current)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
