"""Precision and memory-layout levers on a lightweight-head train step.

Variants (same model weights, same batch, same process): ``fp32``, ``autocast``
(bf16 on CPU/CUDA, fp16 on MPS, via ``foodlab.devices.autocast_dtype``),
``channels_last`` and ``autocast_channels_last``. The head is ``fast`` by default
(``head=baseline`` to measure the original head).
"""
from __future__ import annotations

import copy
import logging

from foodlab.bench import scale_config
from foodlab.bench.timing import summarize, synthetic_batch, time_steps, train_step

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "autocast", "channels_last", "autocast_channels_last")
SCALES = {
    "smoke": {"batch_size": 2, "image_size": 64, "warmup": 1, "repeats": 2},
    "default": {"batch_size": 4, "image_size": 256, "warmup": 1, "repeats": 3},
    "full": {"batch_size": 4, "image_size": 512, "warmup": 2, "repeats": 10},
}


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, head: str = "fast",
        num_classes: int = 1, **overrides) -> list[dict]:
    import torch

    from foodlab.devices import autocast_dtype, resolve_device
    from foodlab.models import build_head

    cfg = scale_config("precision", SCALES, scale, overrides)
    dev = resolve_device(device)
    images, masks = synthetic_batch(cfg["batch_size"], cfg["image_size"], num_classes)
    torch.manual_seed(0)
    reference = build_head(head, num_classes)
    records = []
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown precision variant {name!r}; choose from {', '.join(VARIANTS)}")
        amp = autocast_dtype(dev) if name.startswith("autocast") else None
        channels_last = name.endswith("channels_last")
        step = train_step(copy.deepcopy(reference), images, masks, dev, amp_dtype=amp, channels_last=channels_last)
        times = time_steps(step, dev, cfg["warmup"], cfg["repeats"])
        log.info("precision %s: median %.3f s/step", name, sorted(times)[len(times) // 2])
        records.append({
            "variant": name,
            "params": {"head": head, "dtype": str(amp or torch.float32).replace("torch.", ""),
                       "channels_last": channels_last, "batch_size": cfg["batch_size"],
                       "image_size": cfg["image_size"], "warmup": cfg["warmup"], "repeats": cfg["repeats"]},
            "metrics": summarize(times, cfg["batch_size"]),
        })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<24} {'dtype':<9} {'median s':>9} {'p90 s':>8} {'img/s':>8}"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['variant']:<24} {r['params']['dtype']:<9} {m['step_time_median_s']:>9.3f} "
                     f"{m['step_time_p90_s']:>8.3f} {m['images_per_s']:>8.2f}")
    return "\n".join(lines)
