"""Torch threads for CPU benchmarks: the cores other processes leave free, chosen before measuring and recorded."""
from __future__ import annotations

import pytest
import torch
from test_bench_runner import _LoadMonitor, fake_bench, spec  # noqa: F401  (fixture reuse)

from foodlab.bench import noise, runner, threads
from foodlab.errors import UsageError


@pytest.mark.parametrize("cpus, others, most, expected", [
    (2, 0.0, 2, 2),    # idle: every core
    (2, 0.4, 2, 2),    # a browser tab: still both
    (2, 0.6, 2, 1),    # more than half a core taken: leave it
    (2, 2.0, 2, 1),    # a hog on every core: one thread, never zero
    (16, 3.2, 16, 13),
    (16, 0.0, 8, 8),   # never more than torch would use (OMP_NUM_THREADS, physical cores)
])
def test_free_threads(cpus, others, most, expected):
    assert threads.free_threads(cpus, others, most) == expected


def test_choose_requested_wins_and_other_devices_keep_torchs_count():
    assert threads.choose("cpu", other_cores=2.0, cpus=2, requested=3) == 3
    assert threads.choose("cuda", other_cores=16.0, cpus=16) == torch.get_num_threads()
    with pytest.raises(UsageError, match="--threads must be a whole number of at least 1"):
        threads.choose("cpu", 0.0, 2, requested=0)


def test_a_bad_thread_count_is_refused_before_any_run_starts(fake_bench):  # noqa: F811
    with pytest.raises(UsageError, match="--threads"):
        runner.run_experiment(spec(), "smoke", "cpu", log_to_mlflow=False, threads=0)
    assert fake_bench.calls == []


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def busy_monitor(others: float):
    """A LoadMonitor whose readings say other processes kept ``others`` cores busy."""
    clock = iter(range(1000))

    def reader():
        t = float(next(clock))
        return noise.Snapshot(wall=t, load1=others, busy_cpu_s=t * (1 + others), own_cpu_s=t)

    return lambda: _LoadMonitor(reader=reader, cpus=2, before_sample_s=0)


def test_a_busy_machine_is_measured_with_the_cores_left_free(fake_bench, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(noise, "LoadMonitor", busy_monitor(2.0))
    seen = []
    fake_bench.on_call = lambda variants: seen.append(torch.get_num_threads())
    before = torch.get_num_threads()
    result = runner.run_experiment(spec(), "smoke", "cpu")
    assert seen == [1] and result.torch_threads == 1
    assert torch.get_num_threads() == before  # given back after measuring
    assert "measured with 1 torch threads" in result.table()
    from foodlab import tracking

    runs = tracking.search_runs(["foodlab-demo"])
    assert set(runs["tags.foodlab.torch_threads"]) == {"1"}  # parent and every child
    parent = runs[runs["run_id"] == result.parent_run_id].iloc[0]
    assert parent["params.torch_threads"] == "1"


def test_an_idle_machine_keeps_every_thread_and_threads_pins_the_count(fake_bench, monkeypatch):  # noqa: F811
    monkeypatch.setattr(noise, "LoadMonitor", busy_monitor(0.0))
    seen = []
    fake_bench.on_call = lambda variants: seen.append(torch.get_num_threads())
    runner.run_experiment(spec(), "smoke", "cpu", log_to_mlflow=False)
    runner.run_experiment(spec(), "smoke", "cpu", log_to_mlflow=False, threads=1)
    assert seen == [min(2, torch.get_num_threads()), 1]
