"""Interleaved timing: every variant once per round, alternating direction, preparation off the clock."""
from __future__ import annotations

import pytest
import torch

from foodlab.bench.timing import interleave, round_order, summarize, train_step

CPU = torch.device("cpu")


def test_rounds_interleave_the_variants():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in "ABC"}
    times = interleave(steps, CPU, rounds=3, warmup=1, min_block_s=0)
    assert calls == list("ABC") + list("ABC") + list("CBA") + list("ABC")  # warm-up, then rounds
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert round_order(["A", "B"], 1) == ["B", "A"]


def test_short_steps_are_timed_in_blocks_long_ones_once():
    """A 20 ms step is called back to back until a sample lasts 0.1 s; a 0.15 s step once per round."""
    import time

    calls = []

    def step(name: str, seconds: float):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    times = interleave({"short": step("short", 0.02), "long": step("long", 0.15)}, CPU, rounds=3, warmup=0,
                       min_block_s=0.1)
    assert calls.count("long") == 3
    per_block = calls.count("short") / 3
    assert per_block == int(per_block) and 2 <= per_block <= 5  # same count in every round, from the first
    assert all(0.015 < t < 0.06 for t in times["short"]), times  # time per call, not per block
    assert all(0.14 < t < 0.4 for t in times["long"]), times


def test_cpu_time_is_the_work_not_the_wait():
    """A step that waits costs wall time but no CPU time; one that computes costs both."""
    import time

    def wait():
        time.sleep(0.05)

    def work():
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass

    times = interleave({"wait": wait, "work": work}, CPU, rounds=2, warmup=0, min_block_s=0)
    assert all(t < 0.02 for t in times.cpu["wait"]) and all(t >= 0.045 for t in times["wait"])
    assert all(t >= 0.045 for t in times.cpu["work"])
    metrics, samples = summarize(times["work"], 1, times.cpu["work"])
    assert metrics["step_cpu_s"] >= 0.045 and len(samples["step_cpu_s"]) == 2
    assert "step_cpu_s" not in summarize(times["work"], 1)[0]


def test_prepare_runs_before_each_timed_call():
    calls = []
    interleave({"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}, CPU, rounds=2, warmup=0,
               prepare={"A": lambda: calls.append("prep")}, min_block_s=0)
    assert calls == ["prep", "A", "B", "B", "prep", "A"]


def test_summarize_gives_median_band_and_per_round_samples():
    metrics, samples = summarize([1.0, 2.0, 4.0], images_per_step=4)
    assert metrics["step_time_median_s"] == 2.0 and metrics["images_per_s"] == 2.0
    assert metrics["step_time_p10_s"] == pytest.approx(1.2) and metrics["step_time_p90_s"] == pytest.approx(3.6)
    assert samples == {"step_time_median_s": [1.0, 2.0, 4.0], "images_per_s": [4.0, 2.0, 1.0]}


def test_train_step_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    images = torch.rand(2, 3, 16, 16)
    masks = (images[:, 0] > 0.5).long()
    step = train_step(model, images, masks, CPU, lr=0.05)
    first = float(step())
    for _ in range(8):
        last = float(step())
    assert last < first
