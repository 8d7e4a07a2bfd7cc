"""``foodlab bench stress``: both runs' ratios side by side, the hog bounded; a smoke run, never a timing check."""
from __future__ import annotations

import time

from test_bench_runner import fake_bench, spec  # noqa: F401  (fixture reuse)

from foodlab.bench import stress


def test_pairing_and_verdict():
    idle = [{"experiment": "e", "metric": "init_s", "before": "a", "after": "b", "ratio": 10.0}]
    loaded = [{"experiment": "e", "metric": "init_s", "before": "a", "after": "b", "ratio": 7.0}]
    (row,) = stress.pair_rows(idle, loaded)
    assert round(row.change, 2) == -0.3 and not row.agrees
    (row,) = stress.pair_rows(idle, [{**loaded[0], "ratio": 9.0}])
    assert row.agrees


def test_the_hog_stops_by_itself():
    with stress.CpuHog(processes=1, max_s=0.5) as hog:
        (proc,) = hog.procs
        assert proc.is_alive()
        proc.join(timeout=30)  # its own deadline ends it
        assert not proc.is_alive()


def test_stress_smoke_prints_idle_and_loaded_ratios_side_by_side(fake_bench):  # noqa: F811
    outcome = stress.run_stress("smoke", "cpu", experiments=(spec(),), hog_processes=1)
    assert len(fake_bench.calls) == 2  # once idle, once under the hog
    text = stress.format_stress(outcome)
    assert "idle" in text and "under hog" in text
    assert "demo: init_s (slow -> faster)" in text and "holds" in text
    assert "measured with" in text and "torch threads" in text


def test_the_hog_is_stopped_when_measuring_ends():
    start = time.monotonic()
    with stress.CpuHog(processes=1, max_s=600) as hog:
        pass
    assert all(not p.is_alive() for p in hog.procs) and time.monotonic() - start < 60


def test_bench_stress_command_prints_the_side_by_side_table(fake_bench, monkeypatch, capsys):  # noqa: F811
    from foodlab.cli import main

    monkeypatch.setattr(stress, "EXPERIMENTS", (spec(),))
    monkeypatch.setattr(stress.os, "cpu_count", lambda: 1)  # one hog process is enough for a smoke run
    assert main(["bench", "stress", "--scale", "smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "under hog" in out and "demo: images_per_s (slow -> fast)" in out


def test_the_hog_counts_as_other_processes_load():
    """The hog stands in for other people's work: the load monitor must see it as such, not as ours."""
    from foodlab.bench.noise import LoadMonitor

    with stress.CpuHog(processes=1, max_s=30):
        with LoadMonitor(before_sample_s=0) as monitor:
            import time
            time.sleep(1.5)
    assert monitor.load.other_cores_during > 0.3, monitor.load


def test_the_idle_run_measures_with_the_threads_the_hog_will_leave(fake_bench, monkeypatch):  # noqa: F811
    """Idle and loaded runs differ in the load only, not in how many threads a model got."""
    import torch

    monkeypatch.setattr(stress.os, "cpu_count", lambda: 2)
    seen = []
    fake_bench.on_call = lambda variants: seen.append(torch.get_num_threads())
    outcome = stress.run_stress("smoke", "cpu", experiments=(spec(),), hog_processes=1)
    assert seen == [1, 1]  # 2 cores, 1 hog: 1 free, idle and loaded alike
    assert outcome["idle"][0].torch_threads == outcome["loaded"][0].torch_threads == 1
    pinned = []
    fake_bench.on_call = lambda variants: pinned.append(torch.get_num_threads())
    stress.run_stress("smoke", "cpu", experiments=(spec(),), hog_processes=1, threads=2)
    assert pinned == [2, 2]
