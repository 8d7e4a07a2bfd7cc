"""Training: the loop, checkpoints, DDP and distillation.

``from foodlab.train import train, TrainResult`` — imported lazily so that
``foodlab --help`` does not pay for torch.
"""
from __future__ import annotations

__all__ = ["train", "TrainResult", "TrainingDiverged", "distill"]


def __getattr__(name: str):
    if name in ("train", "TrainResult", "TrainingDiverged"):
        from foodlab.train import loop

        return getattr(loop, name)
    if name == "distill":
        from foodlab.train.distill import distill

        return distill
    raise AttributeError(f"module 'foodlab.train' has no attribute {name!r}")
