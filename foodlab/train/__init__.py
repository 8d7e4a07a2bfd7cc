"""Training: the loop, checkpoints, DDP and distillation.

``from foodlab.train import train, TrainResult`` — imported lazily so that
``foodlab --help`` does not pay for torch.
"""
from __future__ import annotations

from foodlab._lazy import lazy_exports

_EXPORTS = {"train": "foodlab.train.loop", "TrainResult": "foodlab.train.loop",
            "TrainingDiverged": "foodlab.train.loop", "distill": "foodlab.train.distill"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
