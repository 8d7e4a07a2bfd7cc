"""The learning-rate schedule, including what happens when a resumed run is given more epochs.

A run's lr follows a cosine from ``lr`` down to ``MIN_LR_FRACTION * lr`` over its planned
optimizer steps. When ``--resume`` brings a larger ``--epochs``, the plan is extended from
where the run stands: a new cosine starts at the lr the run has reached and falls to the
same floor over the new total. So the lr never rises: a run that had finished continues
at its final lr, one stopped halfway decays more slowly over the longer plan. The plan
lives in the scheduler's state, so it is saved in every checkpoint.
"""
from __future__ import annotations

import math

import torch

MIN_LR_FRACTION = 0.01


class CosinePlan:
    """lr factor per optimizer step: cosine from ``start_factor`` at ``start_step`` to the floor at ``total_steps``.

    A callable object rather than a function, so ``LambdaLR.state_dict()`` saves its fields.
    """

    def __init__(self, total_steps: int, start_step: int = 0, start_factor: float = 1.0,
                 end_factor: float = MIN_LR_FRACTION):
        self.total_steps, self.start_step = max(1, total_steps), start_step
        self.start_factor, self.end_factor = start_factor, end_factor

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return self.end_factor
        t = (step - self.start_step) / max(1, self.total_steps - self.start_step)
        return self.end_factor + (self.start_factor - self.end_factor) * 0.5 * (1 + math.cos(math.pi * t))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, CosinePlan(total_steps))


def planned_steps(scheduler: torch.optim.lr_scheduler.LambdaLR) -> int:
    return scheduler.lr_lambdas[0].total_steps


def extend(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Extend the plan to ``total_steps`` from the current step, starting at the lr reached (no jump)."""
    plan, step = scheduler.lr_lambdas[0], scheduler.last_epoch
    plan.start_factor, plan.start_step, plan.total_steps = plan(step), step, total_steps
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * plan(step)
