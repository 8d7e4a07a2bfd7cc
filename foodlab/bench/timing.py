"""Interleaved step timing shared by the benchmarks: every variant once per round, rounds repeated.

Variants of one experiment are timed in rounds (A B C D, then D C B A, ...) in one process, so a
slow period on the machine lands on every variant alike instead of on whichever ran during it;
alternating the direction keeps any variant from always following the same neighbour. The
device is synchronized before the clock is read at both ends, so queued GPU kernels are inside
the measurement.

Each sample is a *block*: a step shorter than ``MIN_BLOCK_S`` is called back to back so that the
block lasts about that long (the count comes from the first timed call and is kept for every
round; the device is synchronized at the block's ends and after that first call), and the sample
is the block's time per call. Callers whose one call is the unit (an epoch) pass
``min_block_s=0``. A 0.1 s step timed once catches whatever the scheduler did in that instant (a
busy core, a migration); a block of many calls averages it, as a 30 s step does on its own. Steps
with a ``prepare`` (work that must stay off the clock) are timed one call at a time.

Why not ``torch.utils.benchmark.Timer`` itself: its ``blocked_autorange``/``adaptive_autorange``
run one statement block after block until a time budget is spent, which is exactly the "measure
A, then B, minutes apart" pattern interleaving exists to avoid, and ``Timer.timeit(n)`` runs two
untimed warm-up calls before every measurement, which would triple the cost of a SAM2 train step
that takes seconds and put extra calls between the rounds. Its pieces that fit are what this loop
does: blocks of calls sized to a minimum run time, a device-synchronized clock, median and IQR
(here also p10/p90, via ``foodlab.bench.compare.spread``) over the samples. Threads are set by the
runner (``foodlab.bench.threads``).

Every block also records the CPU seconds this process spent (all its threads): on a busy machine
the wall time of a step depends on the share of a core the scheduler gave it while it ran, which
differs from variant to variant, while its CPU time is the work itself (measured: a hog on both
cores of a 2-core EPYC stretched wall times 1.35x-1.58x depending on the model, CPU times
0.97x-1.06x). ``summarize(..., cpu=...)`` reports it as ``step_cpu_s``; on a GPU it is the host's
time only, so the benchmarks report it on CPU.

``train_step`` builds the usual forward/loss/backward/optimizer step for a model that maps images
to logits, with optional autocast and channels_last.
"""
from __future__ import annotations

import ctypes
import gc
import math
import time
from typing import Callable, Mapping

import torch

from foodlab.bench.compare import spread
from foodlab.devices import autocast, needs_grad_scaler, synchronize

Step = Callable[[], object]

# a sample times back-to-back calls for at least this long (see the module docstring)
MIN_BLOCK_S = 0.5


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it mapped), so the next
    variant's RSS-based peak memory is its own, not the previous variant's leftovers."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def synced_clock(device: torch.device) -> Callable[[], float]:
    """A clock that waits for the device's queued work before reading the time."""
    def clock() -> float:
        synchronize(device)
        return time.perf_counter()
    return clock


def round_order(names: list[str], round_index: int) -> list[str]:
    """Forward on even rounds, backward on odd ones (A B C D, D C B A, ...)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


class Timings(dict):
    """name -> wall seconds per call, one value per round; ``cpu``: the same in CPU seconds of this process."""

    def __init__(self, wall: dict[str, list[float]], cpu: dict[str, list[float]]):
        super().__init__(wall)
        self.cpu = cpu


def interleave(steps: Mapping[str, Step], device: torch.device, rounds: int, warmup: int = 1,
               prepare: Mapping[str, Step] | None = None, min_block_s: float | None = None) -> Timings:
    """Seconds per call of each step, one value per round (every round times every step once).

    ``warmup`` untimed calls of each step come first (allocator, autotuning, lazy init).
    ``prepare[name]``, when given, runs before each timed call of ``name``, outside the clock.
    ``min_block_s`` (default ``MIN_BLOCK_S``): how long a block of back-to-back calls one sample
    times should last; the first timed call of each step decides how many calls that takes.
    """
    names = list(steps)
    prepare = dict(prepare or {})
    block_s = MIN_BLOCK_S if min_block_s is None else min_block_s
    clock = synced_clock(device)
    for _ in range(warmup):
        for name in names:
            prepare.get(name, lambda: None)()
            steps[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    calls: dict[str, int] = {}
    for r in range(rounds):
        for name in round_order(names, r):
            if name in prepare:  # its preparation must stay off the clock: one call per sample
                prepare[name]()
                calls[name] = 1
            start, cpu_start = clock(), time.process_time()
            steps[name]()
            if name not in calls:  # the first call of the first round sizes the block for every round
                first = clock() - start
                calls[name] = 1 if first >= block_s else math.ceil(block_s / max(first, 1e-7))
            for _ in range(calls[name] - 1):
                steps[name]()
            samples[name].append((clock() - start) / calls[name])
            cpu[name].append((time.process_time() - cpu_start) / calls[name])
    return Timings(samples, cpu)


def summarize(times: list[float], images_per_step: int, cpu: list[float] | None = None
              ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, per-round samples) for step times: median, p10/p90, IQR and images/s from the median;
    with ``cpu`` (CPU seconds per step, one per round) also ``step_cpu_s``, their median."""
    s = spread(times)
    metrics = {
        "step_time_median_s": s["median"], "step_time_p10_s": s["p10"], "step_time_p90_s": s["p90"],
        "step_time_iqr_s": s["iqr"], "step_time_relative_spread": s["relative_spread"],
        "images_per_s": images_per_step / s["median"] if s["median"] > 0 else float("nan"),
    }
    samples = {"step_time_median_s": list(times), "images_per_s": [images_per_step / t for t in times]}
    if cpu:
        metrics["step_cpu_s"] = spread(cpu)["median"]
        samples["step_cpu_s"] = list(cpu)
    return metrics, samples


def cpu_samples(times: Timings, name: str, device: torch.device) -> list[float] | None:
    """The CPU seconds per step of ``name`` when the step ran on the CPU, else None (a GPU step's host time)."""
    return times.cpu[name] if torch.device(device).type == "cpu" else None


def train_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
               amp_dtype: torch.dtype | None = None, channels_last: bool = False, lr: float = 1e-3,
               forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
               ) -> Callable[[], torch.Tensor]:
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
    from foodlab.data.dataset import FoodSegDataset
    from foodlab.data.synth import ensure_synthetic

    root = ensure_synthetic(max(batch_size, 8), size=image_size, seed=seed)
    ds = FoodSegDataset(root, image_size=image_size, num_classes=num_classes)
    items = [ds[i % len(ds)] for i in range(batch_size)]
    return torch.stack([im for im, _ in items]), torch.stack([m for _, m in items])
