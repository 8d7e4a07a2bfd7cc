"""Was the machine quiet while we measured? Load average and other processes' CPU time, with a verdict.

Interleaving makes slow periods hit every variant alike, but a machine that is busy throughout
still stretches the spread and shifts ratios of CPU-bound variants that compete for cores
differently. So each experiment records the 1-minute load average before measuring and the CPU
time other processes took before (a short sample) and during measuring, and calls the result
*noisy* when the others took a real share of the cores. The load average includes this process's
own recent work (data preparation), so the verdict rests on other processes' CPU time, which
excludes ours; the load average is recorded for the reader.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import psutil

# others using more than this share of all cores on average make a result noisy
BUSY_SHARE = 0.25
BEFORE_SAMPLE_S = 0.5
# child processes that stand in for other people's work (``stress.CpuHog``): counted as others, not as ours
_STAND_INS: set[int] = set()


def count_as_others(pids: list[int]) -> None:
    """Count these child processes as other processes' load (a hog simulating a busy machine)."""
    _STAND_INS.update(pids)


def stop_counting_as_others(pids: list[int]) -> None:
    _STAND_INS.difference_update(pids)


@dataclass(frozen=True)
class Snapshot:
    """One reading: time, load average, CPU seconds all processes used, CPU seconds ours used."""

    wall: float
    load1: float
    busy_cpu_s: float
    own_cpu_s: float


def _own_cpu_seconds() -> float:
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        if proc.pid in _STAND_INS:
            continue
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that just exited
            pass
    t = me.cpu_times()
    return total + t.children_user + t.children_system  # reaped children (spawned workers) count too


def read_snapshot() -> Snapshot:
    t = psutil.cpu_times()
    busy = sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))
    return Snapshot(wall=time.monotonic(), load1=os.getloadavg()[0], busy_cpu_s=busy, own_cpu_s=_own_cpu_seconds())


def other_cores(start: Snapshot, end: Snapshot) -> float:
    """Cores other processes kept busy on average between two snapshots."""
    wall = max(end.wall - start.wall, 1e-9)
    return max(0.0, (end.busy_cpu_s - start.busy_cpu_s) - (end.own_cpu_s - start.own_cpu_s)) / wall


@dataclass
class Load:
    """What the machine did around one experiment's measuring, and whether that makes it noisy."""

    cpus: int
    load1_before: float
    load1_after: float
    other_cores_before: float
    other_cores_during: float

    @property
    def noisy(self) -> str:
        """Why the machine was too busy to trust the numbers, or "" when it was quiet."""
        limit = BUSY_SHARE * self.cpus
        worst = max(self.other_cores_before, self.other_cores_during)
        if worst > limit:
            return (f"other processes used {worst:.1f} of {self.cpus} cores "
                    f"(load average {self.load1_before:.1f})")
        return ""

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "noisy": self.noisy}


class LoadMonitor:
    """``with LoadMonitor() as m: measure()`` then ``m.load``; ``reader`` is swappable for tests."""

    def __init__(self, reader: Callable[[], Snapshot] = read_snapshot, cpus: int | None = None,
                 before_sample_s: float = BEFORE_SAMPLE_S):
        self.reader, self.cpus, self.before_sample_s = reader, cpus or os.cpu_count() or 1, before_sample_s
        self.load: Load | None = None
        self.other_cores_before = 0.0  # cores other processes used in the sample before measuring

    def __enter__(self) -> LoadMonitor:
        first = self.reader()
        if self.before_sample_s:
            time.sleep(self.before_sample_s)
        self._start = self.reader()
        self.other_cores_before = other_cores(first, self._start)
        return self

    def __exit__(self, *exc) -> None:
        end = self.reader()
        self.load = Load(cpus=self.cpus, load1_before=self._start.load1, load1_after=end.load1,
                         other_cores_before=self.other_cores_before, other_cores_during=other_cores(self._start, end))
