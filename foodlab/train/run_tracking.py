"""What a training run records in MLflow, so the MLflow run is the source of truth.

At the start: tags describing the machine and data, and the settings as params (a
resume logs what it changed as params of its own, ``resume_at_step_<N>.*``, since MLflow
params cannot be overwritten). At the end: ``best.pt``, the final model, the bad-sample
report and the run's own ``training.log``, then the run's status: FINISHED, KILLED (a
stop signal or Ctrl-C) or FAILED (an exception). Deleting ``runs/`` then loses nothing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foodlab import devices, tracking
from foodlab.atomic import atomic_write

log = logging.getLogger(__name__)


def log_run_start(s: Any, full_ds: Any, configs: dict, run_facts: dict, extra_params: dict,
                  changes: dict[str, Any] | None) -> None:
    """Tags, and params: all of them for a new run (``changes`` None), only the changed ones for a resume."""
    tracking.set_tags({"device": devices.device_name(s.device), "device_type": s.device.type,
                       "torch_version": torch.__version__, "foodlab_commit": tracking.git_commit(),
                       "dataset_fingerprint": str(getattr(full_ds, "fingerprint", "n/a")),
                       "world_size": s.dist.world_size, "amp_dtype": run_facts["amp_dtype"]})
    if changes is None:
        tracking.log_params({**configs, "run": run_facts, **extra_params})
        return
    tracking.set_tags({"resumed_from_step": s.step})
    if changes:
        tracking.log_params({f"resume_at_step_{s.step}": changes})
        if "train.epochs" in changes:
            tracking.set_tags({"epochs": changes["train.epochs"]})  # the plan the run now follows


def save_final_model(model: nn.Module, path: Path) -> Path:
    """The final model file: the head (name + classes + weights, ``FoodDetector.from_head_file`` reads it), or
    the whole trained module's state dict."""
    if getattr(model, "use_lightweight_head", False) and hasattr(model, "save_head"):
        return model.save_head(path)
    with atomic_write(path) as f:
        torch.save(model.state_dict(), f)
    return path


def log_final_model(model: nn.Module, path: Path, *, image_size: int, register: str | None = None) -> None:
    """Save the final model to ``path`` and log it to the active MLflow run: the file under ``weights/``,
    and a trained lightweight head also as an MLflow Model (``runs:/<id>/model``, registered as a new
    version of ``register`` when given), so it can be loaded by URI, registered and served."""
    tracking.log_artifact(save_final_model(model, path), "weights")
    if getattr(model, "use_lightweight_head", False):
        from foodlab.models.pyfunc import log_detector

        log_detector(model, image_size=image_size, registered_name=register)
    elif register:
        log.warning("--register %s: only a lightweight head is logged as an MLflow Model; nothing registered",
                    register)


def finish(folder: Any, interrupted: bool, *, log_model: nn.Module | None, skipped: dict | None,
           status: str, image_size: int = 512, register: str | None = None) -> None:
    """Upload the run's files and end the MLflow run with ``status``.

    On a failure (``log_model`` None) this is best effort: an upload error must not hide the
    error that ended the run.
    """
    try:
        if skipped is not None:
            tracking.log_dict(skipped, "bad_samples.json")
        if folder.best.exists():
            tracking.log_artifact(folder.best, "checkpoints")
        if log_model is not None and not interrupted:
            log_final_model(log_model, folder.model, image_size=image_size, register=register)
        for handler in logging.getLogger().handlers:
            handler.flush()
        if folder.log_file.exists():
            tracking.log_artifact(folder.log_file, "logs")
    except Exception:
        if log_model is not None:
            raise
        log.warning("could not upload the run's files to MLflow", exc_info=True)
    tracking.end_run(status)
