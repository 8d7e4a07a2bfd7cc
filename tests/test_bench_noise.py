"""The machine-load verdict, from fake readings (never from this machine's real load)."""
from __future__ import annotations

import pytest

from foodlab.bench.noise import Load, LoadMonitor, Snapshot, other_cores


def readings(*snaps):
    it = iter(snaps)
    return lambda: next(it)


def test_other_processes_cpu_excludes_our_own():
    start = Snapshot(wall=0.0, load1=0.5, busy_cpu_s=100.0, own_cpu_s=10.0)
    end = Snapshot(wall=10.0, load1=0.5, busy_cpu_s=118.0, own_cpu_s=20.0)  # 18 s busy, 10 s of it ours
    assert other_cores(start, end) == 0.8


def test_quiet_machine_is_not_noisy():
    mon = LoadMonitor(readings(Snapshot(0, 0.2, 0, 0), Snapshot(1, 0.2, 0.1, 0), Snapshot(11, 0.3, 10.5, 10)),
                      cpus=2, before_sample_s=0)
    with mon:
        pass
    assert mon.load.noisy == "" and mon.load.other_cores_during == pytest.approx(0.04)


def test_busy_during_or_before_measuring_is_noisy():
    during = LoadMonitor(readings(Snapshot(0, 1.0, 0, 0), Snapshot(1, 1.0, 0, 0), Snapshot(11, 2.5, 25, 10)),
                         cpus=2, before_sample_s=0)
    with during:
        pass
    assert during.load.noisy == "other processes used 1.5 of 2 cores (load average 1.0)"
    before = Load(cpus=2, load1_before=1.9, load1_after=0.1, other_cores_before=1.9, other_cores_during=0.0)
    assert before.noisy.startswith("other processes used 1.9 of 2 cores")
    assert before.as_dict()["noisy"] == before.noisy
