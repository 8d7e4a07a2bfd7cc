"""Peak memory of one train step per variant, and the largest batch that fits (CUDA/MPS).

Peak memory is what each device can honestly report (``foodlab.devices.PeakMemory``):
``max_memory_allocated`` on CUDA, sampled driver memory on MPS, sampled RSS of the
process tree on CPU. CPU RSS never shrinks back after a variant ran, so on CPU and MPS
each variant is measured in its own fresh (spawned) process; on CUDA the peak
counters are reset in-process. ``peak_memory_mb`` is the absolute peak,
``step_memory_mb`` the part the step itself added. The largest-batch search doubles
the batch until an out-of-memory error; on CPU it is skipped and recorded as "n/a"
(the OS swaps instead of failing).

Peaks are not timed, so they are not interleaved: what else the machine runs does not change
how many bytes a step allocates.
"""
from __future__ import annotations

import logging

from foodlab.bench.settings import scale_config

log = logging.getLogger(__name__)

VARIANTS = ("baseline_fp32", "fast_fp32", "fast_autocast")
METRICS = ("peak_memory_mb", "step_memory_mb", "largest_batch")
SCALES = {
    "smoke": {"batch_size": 2, "image_size": 64, "steps": 1, "max_batch": 8},
    "default": {"batch_size": 4, "image_size": 256, "steps": 2, "max_batch": 256},
    "full": {"batch_size": 4, "image_size": 512, "steps": 3, "max_batch": 1024},
}
MB = 1024 * 1024


def _split(variant: str) -> tuple[str, bool]:
    head, precision = variant.rsplit("_", 1)
    return head, precision == "autocast"


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def measure_step(variant: str, batch_size: int, image_size: int, steps: int, device: str) -> dict[str, float]:
    """Peak and step-added memory (MB) over ``steps`` train steps of ``variant``; runs in a worker."""
    import torch

    from foodlab.bench.timing import synthetic_batch, train_step
    from foodlab.devices import PeakMemory, autocast_dtype, resolve_device
    from foodlab.models.lightweight import build_head

    dev = resolve_device(device)
    head, amp = _split(variant)
    torch.manual_seed(0)
    images, masks = synthetic_batch(batch_size, image_size)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    with PeakMemory(dev) as peak:
        step = train_step(build_head(head, 1), images, masks, dev, amp_dtype=autocast_dtype(dev) if amp else None)
        for _ in range(steps):
            step()
    return {"peak_memory_mb": peak.peak_bytes / MB, "step_memory_mb": peak.delta_bytes / MB}


def largest_batch(variant: str, start: int, image_size: int, device: str, max_batch: int) -> int | None:
    """Largest power-of-two multiple of ``start`` whose train step fits; None on CPU."""
    import torch

    from foodlab.devices import resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        return None
    fits, batch = 0, start
    while batch <= max_batch:
        try:
            measure_step(variant, batch, image_size, 1, device)
            fits, batch = batch, batch * 2
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not _is_oom(exc):
                raise
            break
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            elif dev.type == "mps":
                torch.mps.empty_cache()
    return fits or None


def _isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh spawned process, so its RSS peak is its own."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    from foodlab.devices import resolve_device

    cfg = scale_config("memory", SCALES, scale, settings)
    dev = resolve_device(device)
    records = []
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown memory variant {name!r}; choose from {', '.join(VARIANTS)}")
        args = (name, cfg["batch_size"], cfg["image_size"], cfg["steps"], str(dev))
        metrics = measure_step(*args) if dev.type == "cuda" else _isolated(measure_step, *args)
        largest = largest_batch(name, cfg["batch_size"], cfg["image_size"], str(dev), cfg["max_batch"])
        if largest is not None:
            metrics["largest_batch"] = largest
        log.info("memory %s: peak %.0f MB (step %.0f MB), largest batch %s", name, metrics["peak_memory_mb"],
                 metrics["step_memory_mb"], largest or "n/a")
        head, amp = _split(name)
        records.append({
            "variant": name,
            "params": {"head": head, "autocast": amp, "batch_size": cfg["batch_size"],
                       "image_size": cfg["image_size"], "steps": cfg["steps"],
                       "largest_batch": largest if largest is not None else "n/a",
                       "memory_source": {"cuda": "max_memory_allocated", "mps": "driver_allocated_memory"}.get(
                           dev.type, "process-tree RSS (sampled)")},
            "metrics": metrics,
        })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<16} {'peak MB':>9} {'step MB':>9} {'largest batch':>14}"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['variant']:<16} {m['peak_memory_mb']:>9.0f} {m['step_memory_mb']:>9.0f} "
                     f"{str(r['params']['largest_batch']):>14}")
    return "\n".join(lines)
