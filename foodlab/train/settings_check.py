"""Settings a run cannot use, refused before any work, and settings a resume may not change.

``check_settings`` turns flag values that make no sense (``--epochs 0``, a nan lr, a
missing ``--data`` folder, an ``--out-dir`` that cannot be written) into one-line
``UsageError``s that name the flag and the fix. Best-checkpoint selection is on the
validation mIoU, so a run needs a validation set: ``--val-fraction`` must be in (0, 1).

``resume_conflicts`` compares a checkpoint's settings with the ones given: the settings
that change what the run is (``RUN_DEFINING``) must match; a larger ``--epochs`` extends
the run (see ``schedule``); the others (device, workers, amp, ...) may change and are
logged to MLflow as the resume's own params.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.errors import UsageError

# (section, key, flag): settings that define a run; a resume with another value is refused
RUN_DEFINING = (
    ("data", "image_size", "--image-size"), ("data", "num_classes", "--num-classes"),
    ("model", "head", "--head"), ("model", "use_lightweight_head", "--lightweight-head"),
    ("model", "sam2_model_type", "--model-type"), ("train", "batch_size", "--batch-size"),
    ("train", "lr", "--lr"), ("train", "accum_steps", "--accum-steps"), ("train", "weight_decay", "weight_decay"),
    ("train", "val_fraction", "--val-fraction"), ("train", "seed", "--seed"),
    ("model", "freeze_image_encoder", "--freeze-image-encoder"),
    ("train", "sam2_cached_embeddings", "--sam2-cached-embeddings"),
)


def check_settings(data: DataConfig, model: ModelConfig, train: TrainConfig, max_steps: int | None = None) -> None:
    """Raise a one-line ``UsageError`` for the first setting that cannot work."""
    def positive(value: Any, flag: str) -> None:
        if value is None or value <= 0:
            raise UsageError(f"{flag} must be a positive number, got {value}")

    positive(train.epochs, "--epochs")
    positive(train.batch_size, "--batch-size")
    positive(train.accum_steps, "--accum-steps")
    positive(data.image_size, "--image-size")
    positive(data.num_classes, "--num-classes")
    if max_steps is not None:
        positive(max_steps, "--max-steps")
    if not (isinstance(train.lr, (int, float)) and math.isfinite(train.lr) and train.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {train.lr}")
    if not math.isfinite(train.weight_decay) or train.weight_decay < 0:
        raise UsageError(f"weight_decay must be >= 0, got {train.weight_decay}")
    if train.num_workers is not None and train.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {train.num_workers}")
    if not 0 < train.val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {train.val_fraction}: best.pt is "
                         "chosen on validation mIoU, so a run needs a validation set")
    if model.num_classes != data.num_classes:
        raise UsageError(f"model num_classes={model.num_classes} but data num_classes={data.num_classes}; "
                         "set both with --num-classes")
    if data.root is not None and not Path(data.root).is_dir():
        raise UsageError(f"--data {data.root}: no such folder; pass a dataset folder, or leave --data out for the "
                         "built-in synthetic dataset")
    _check_writable(Path(train.out_dir))


def _check_writable(out_dir: Path) -> None:
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"--out-dir {out_dir}: {existing} is a file, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {out_dir}: {existing} is not writable; pass a folder you can write to")


def resume_conflicts(saved: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """'--flag NEW (run: OLD)' for every run-defining setting that differs, and for fewer epochs than planned."""
    out = []
    for section, key, flag in RUN_DEFINING:
        old, new = saved.get(section, {}).get(key), current[section][key]
        if old != new:
            out.append(f"{flag} {new} (run: {old})")
    old_epochs = saved.get("train", {}).get("epochs", 0)
    if current["train"]["epochs"] < old_epochs:
        out.append(f"--epochs {current['train']['epochs']} (run: {old_epochs}; a resume may only extend a run)")
    return out


def resume_changes(saved: dict[str, dict], current: dict[str, dict]) -> dict[str, Any]:
    """``{"section.key": new}`` for every setting that differs but may change on a resume (epochs included)."""
    defining = {(s, k) for s, k, _ in RUN_DEFINING} | {("train", "resume")}
    return {f"{section}.{key}": value for section, values in current.items() for key, value in values.items()
            if (section, key) not in defining and saved.get(section, {}).get(key) != value}
