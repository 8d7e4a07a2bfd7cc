"""Honest step timing shared by the benchmarks: warm-up, synchronize, medians.

A step is any zero-argument callable. ``time_steps`` runs it ``warmup`` times untimed
(allocator, autotuning, lazy init), then ``repeats`` times, synchronizing the device
before reading the clock each time so queued GPU kernels are inside the measurement.
``train_step`` builds the usual forward/loss/backward/optimizer step for a model that
maps images to logits, with optional autocast and channels_last.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from foodlab.devices import autocast, needs_grad_scaler, synchronize


def time_steps(step: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) without numpy."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(times: list[float], images_per_step: int) -> dict[str, float]:
    """step_time_median_s, step_time_p90_s and images_per_s (from the median)."""
    median = statistics.median(times)
    return {
        "step_time_median_s": median,
        "step_time_p90_s": percentile(times, 90),
        "images_per_s": images_per_step / median if median > 0 else float("nan"),
    }


def train_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
               amp_dtype: torch.dtype | None = None, channels_last: bool = False, lr: float = 1e-3,
               forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
    """A closure doing one optimizer step of ``model(images)`` against ``masks``; returns the (detached) loss.

    ``forward(images, masks) -> logits`` replaces ``model(images)`` for models that need the masks
    (SAM2 takes its prompts from them); ``model`` then only supplies the trainable parameters.
    """
    from foodlab.train.losses import segmentation_loss

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    images = images.to(device).contiguous(memory_format=memory_format)
    masks = masks.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(device, amp_dtype) else None

    run = forward or (lambda x, _y: model(x))

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            logits = run(images, masks)
        loss = segmentation_loss(logits.float(), masks)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    return step


def synthetic_batch(batch_size: int, image_size: int, num_classes: int = 1, seed: int = 0):
    """One (images, masks) batch from the synthetic food dataset, identical for every variant."""
    from foodlab.data import FoodSegDataset, ensure_synthetic

    root = ensure_synthetic(max(batch_size, 8), size=image_size, seed=seed)
    ds = FoodSegDataset(root, image_size=image_size, num_classes=num_classes)
    items = [ds[i % len(ds)] for i in range(batch_size)]
    return torch.stack([im for im, _ in items]), torch.stack([m for _, m in items])
