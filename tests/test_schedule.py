"""The lr plan: cosine to a floor; extending it (a resume with more epochs) continues from the lr reached."""
from __future__ import annotations

import pytest
import torch

from foodlab.train.schedule import MIN_LR_FRACTION, cosine_schedule, extend, planned_steps


def run(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out


def make(total: int):
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    return cosine_schedule(opt, total)


def test_cosine_falls_to_the_floor_and_stays():
    lrs = run(make(10), 12)
    assert lrs[9:] == pytest.approx([MIN_LR_FRACTION] * 3)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_extending_halfway_continues_from_the_reached_lr_without_a_jump():
    sched = make(10)
    before = run(sched, 5)
    extend(sched, 30)
    assert planned_steps(sched) == 30
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(before[-1])
    after = run(sched, 25)
    lrs = before + after
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:]))
    assert after[-1] == pytest.approx(MIN_LR_FRACTION)


def test_the_plan_survives_a_checkpoint_round_trip():
    sched = make(10)
    run(sched, 4)
    extend(sched, 20)
    other = make(10)
    other.load_state_dict(sched.state_dict())
    assert planned_steps(other) == 20
    assert run(other, 3) == pytest.approx(run(sched, 3))
