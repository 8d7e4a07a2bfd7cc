"""Distillation: a SAM2 teacher runs once over the dataset, the lightweight head learns from it.

The teacher is the full SAM2 (``FoodDetector(use_lightweight_head=False)``) prompted
from the ground-truth masks' boxes; an image without labels (an empty mask) is
prompted with the whole-image box, which is how unlabelled food photos get targets.
Its mask logits are cached once as an fp16 ``.npy`` memmap keyed by the dataset
fingerprint and the teacher, so later runs (other heads, other settings) reuse them.
The student trains through the ordinary loop with ``distill_step``: soft targets
(sigmoid/softmax of the teacher's logits), or hard ones (its thresholded masks),
optionally mixed with the ground-truth loss by ``alpha``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from foodlab import devices, tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.models.sam2_cache import TeacherTargets, teacher_logits
from foodlab.train.loop import StepFn, TrainResult, train
from foodlab.train.losses import segmentation_loss
from foodlab.train.metrics import predictions
from foodlab.train.setup import build_datasets, map_split

log = logging.getLogger(__name__)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, targets: str = "soft",
                 alpha: float = 0.0) -> torch.Tensor:
    """Loss against the teacher (soft probabilities or hard masks), plus ``alpha`` x the ground-truth loss."""
    logits, teacher = logits.float(), teacher.float()
    if targets == "hard":
        t_loss = segmentation_loss(logits, predictions(teacher))
    elif logits.shape[1] == 1:
        t_loss = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher))
    else:
        t_loss = -(torch.softmax(teacher, dim=1) * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if alpha <= 0:
        return t_loss
    return (1 - alpha) * t_loss + alpha * segmentation_loss(logits, target)


def distill_step(targets: str = "soft", alpha: float = 0.0) -> StepFn:
    if targets not in ("soft", "hard"):
        raise ValueError(f"targets must be 'soft' or 'hard', got {targets!r}")

    def step(model, batch):
        images, masks, teacher = batch
        logits = model(images)
        return distill_loss(logits, teacher, masks, targets, alpha), logits, masks
    return step


def distill(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, *, teacher: str = "random",
            targets: str = "soft", alpha: float = 0.0, teacher_cache: str | Path | None = None,
            teacher_image_size: int | None = None, max_steps: int | None = None, progress: bool = True,
            track: bool = True) -> TrainResult:
    """Train the lightweight head on a SAM2 teacher's cached logits (``teacher``: checkpoint path or "random")."""
    if not model_cfg.use_lightweight_head:
        raise ValueError("distillation trains the lightweight head: drop --no-lightweight-head")
    step_fn = distill_step(targets, alpha)  # validates ``targets`` before any work
    if track:  # fail on a dead tracking server before the (expensive) teacher pass
        tracking.configure(check=True)
    if data_cfg.augment:  # the teacher's cached logits belong to the un-augmented images
        log.warning("distillation: turning data augmentation off (teacher targets are cached per image)")
        data_cfg = dataclasses.replace(data_cfg, augment=False)
    device = devices.resolve_device(train_cfg.device)
    cache_dir = Path(teacher_cache or Path(train_cfg.out_dir) / "teacher_cache")
    train_ds, val_ds, full = build_datasets(data_cfg, train_cfg.val_fraction, train_cfg.seed)

    def with_teacher(base):
        return TeacherTargets(base, teacher_logits(base, teacher, model_cfg, cache_dir, device, seed=train_cfg.seed,
                                                   sam2_image_size=teacher_image_size))

    params = {"distill": {"teacher": teacher, "targets": targets, "alpha": alpha,
                          "teacher_image_size": teacher_image_size}}
    return train(data_cfg, model_cfg, train_cfg, max_steps=max_steps, progress=progress, track=track,
                 datasets=(map_split(train_ds, with_teacher), map_split(val_ds, with_teacher), full), step_fn=step_fn,
                 extra_params=params)
