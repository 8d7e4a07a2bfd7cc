"""make_loader: a DataLoader with sensible per-device defaults.

- ``pin_memory`` only on CUDA (it only helps host->GPU copies; on MPS it warns, on CPU it wastes time);
- ``persistent_workers`` when there are workers, so each epoch does not re-spawn them;
- every worker sets ``cv2.setNumThreads(0)`` (OpenCV's own pool oversubscribes the cores when
  N workers each spawn N threads) and seeds numpy/random from torch's per-worker seed;
- macOS starts workers with spawn: the dataset and ``_worker_init`` are picklable top-level objects.
"""
from __future__ import annotations

import os
import random
import signal
import sys

import numpy as np
import torch

from foodlab.devices import resolve_device


def default_num_workers(device) -> int:
    cpus = os.cpu_count() or 1
    kind = resolve_device(device).type
    cap = {"cuda": 8, "mps": 4}.get(kind, 4)
    return max(0, min(cap, cpus - 1))


def _worker_init(worker_id: int) -> None:
    import cv2

    # Ctrl-C reaches the whole process group: workers ignore it so the trainer can finish the
    # batch, save its checkpoint and shut the loader down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32      # torch derives it from the loader's generator + worker id
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset, batch_size: int, device="auto", num_workers: int | None = None, shuffle: bool = True,
                sampler=None, drop_last: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    device = resolve_device(device)
    if num_workers is None:
        num_workers = default_num_workers(device)
    generator = torch.Generator().manual_seed(seed)
    kwargs = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, worker_init_fn=_worker_init, prefetch_factor=2)
        if sys.platform == "darwin":
            kwargs["multiprocessing_context"] = "spawn"
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, pin_memory=device.type == "cuda", drop_last=drop_last,
        generator=generator, **kwargs)
