"""One epoch of training and one validation pass: what every kind of training run shares.

A batch is anything ``step_fn(model, batch) -> (loss, logits, target)`` understands, so
supervised training, full-SAM2 training, decoder-only training on cached embeddings and
distillation all run through ``train_one_epoch``. ``Session`` holds what an epoch needs;
``loop.train`` builds it once per run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from foodlab import devices, tracking
from foodlab.config import TrainConfig
from foodlab.errors import FoodlabError
from foodlab.labels import class_ids
from foodlab.train.checkpoint import StopOnSignal
from foodlab.train.ddp import Dist
from foodlab.train.losses import segmentation_loss
from foodlab.train.metrics import SegMetrics

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]

class TrainingDiverged(FoodlabError):
    """The loss became NaN/inf; the last good checkpoint is left as it was."""

    exit_code = 3


@dataclass
class Session:
    """Everything one epoch needs; built once by ``train``."""
    model: nn.Module            # what the forward runs through (maybe DDP / compiled)
    raw_model: nn.Module        # what gets saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step_fn: StepFn
    device: torch.device
    amp_dtype: torch.dtype | None
    cfg: TrainConfig
    dist: Dist
    track: bool
    progress: bool
    max_steps: int | None
    num_classes: int
    step: int = 0


def supervised_step(full_sam2: bool = False) -> StepFn:
    """(images, masks) batches; full SAM2 is prompted from the ground-truth masks."""
    def step(model: nn.Module, batch: Any):
        images, masks = batch[0], batch[1]
        logits = model(images, masks=masks) if full_sam2 else model(images)
        return segmentation_loss(logits, masks), logits, masks
    return step


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=device.type == "cuda")
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(s: Session, loader, num_classes: int) -> tuple[dict[str, float], tuple | None]:
    """Validation metrics over this rank's share (confusion summed over ranks) and a sample for overlays."""
    s.raw_model.eval()
    metrics, loss_sum, n, sample = SegMetrics(num_classes), 0.0, 0, None
    for batch in loader:
        batch = to_device(batch, s.device)
        with devices.autocast(s.device, s.amp_dtype):
            loss, logits, target = s.step_fn(s.raw_model, batch)
        pred = class_ids(logits.float())
        metrics.update(pred, target)
        loss_sum, n = loss_sum + float(loss) * len(target), n + len(target)
        images = batch[0] if isinstance(batch, (list, tuple)) else None
        if sample is None and isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == 3:
            sample = (images[:4].cpu(), target[:4].cpu(), pred[:4].cpu())
    metrics.confusion = s.dist.all_reduce_sum(metrics.confusion, s.device)
    totals = s.dist.all_reduce_sum(torch.tensor([loss_sum, float(n)], dtype=torch.float64), s.device)
    out = metrics.compute()
    out["loss"] = float(totals[0] / max(1.0, float(totals[1])))
    s.raw_model.train()
    return out, sample


def train_one_epoch(s: Session, loader, epoch: int, first_batch: int, stop: StopOnSignal) -> dict:
    """Train until the loader ends, ``max_steps`` or a stop signal; returns the epoch's statistics.

    Stops are honoured only where an optimizer step just finished, so a saved position
    never splits a gradient-accumulation group.
    """
    cfg, accum = s.cfg, max(1, s.cfg.accum_steps)
    n_batches = first_batch + len(loader)
    bar = tqdm(total=n_batches, initial=first_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (s.progress and s.dist.is_main), leave=False, dynamic_ncols=True)
    stats = {"loss_sum": 0.0, "images": 0, "wait_s": 0.0, "busy_s": 0.0, "batch": first_batch, "reason": "end"}
    s.model.train()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        b = stats["batch"]
        is_step = (b + 1) % accum == 0 or b + 1 == n_batches
        batch = to_device(batch, s.device, cfg.channels_last)
        with s.dist.no_sync(s.model, sync=is_step):
            with devices.autocast(s.device, s.amp_dtype):
                loss, _, target = s.step_fn(s.model, batch)
            bad, stopping = s.dist.any(not bool(torch.isfinite(loss.detach())), stop.requested, device=s.device)
            if bad:
                raise TrainingDiverged(
                    f"loss became {float(loss.detach()):g} at step {s.step + 1} (epoch {epoch + 1}, batch {b + 1}); "
                    "stopped without saving, the last good checkpoint is kept; lower --lr or try --no-amp")
            s.scaler.scale(loss / accum).backward()
        if is_step:
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.optimizer.zero_grad(set_to_none=True)
            s.scheduler.step()
            s.step += 1
        t2 = time.perf_counter()
        n_img, loss_val = len(target) * s.dist.world_size, float(loss.detach())
        stats["batch"], stats["images"] = b + 1, stats["images"] + n_img
        stats["loss_sum"] += loss_val * n_img
        stats["wait_s"], stats["busy_s"] = stats["wait_s"] + (t1 - t0), stats["busy_s"] + (t2 - t0)
        ips = n_img / max(t2 - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_val:.4f}", img_s=f"{ips:.1f}")
        bar.update()
        if s.track and s.dist.is_main and is_step and s.step % max(1, cfg.log_every) == 0:
            tracking.log_metrics({"train_loss": loss_val, "images_per_s": ips,
                                  "lr": s.optimizer.param_groups[0]["lr"]}, step=s.step)
        if is_step and stopping:
            stats["reason"] = "signal"
            break
        if is_step and s.max_steps is not None and s.step >= s.max_steps:
            stats["reason"] = "max_steps"
            break
    bar.close()
    stats["complete"] = stats["batch"] >= n_batches
    return stats
