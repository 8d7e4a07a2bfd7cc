"""Precision and memory-layout levers on a lightweight-head train step.

Variants (same model weights, same batch, same process, timed in interleaved rounds):
``fp32``, ``autocast`` (bf16 on CPU/CUDA, fp16 on MPS, via ``foodlab.devices.autocast_dtype``),
``channels_last`` and ``autocast_channels_last``. The head is ``fast`` by default
(``head=baseline`` to measure the original head). Whether bf16 and channels_last pay off depends
on the CPU (AMX / AVX-512 BF16) or GPU, which the runner records with every run.
"""
from __future__ import annotations

import copy
import logging

from foodlab.bench.settings import scale_config
from foodlab.bench.timing import cpu_samples, interleave, summarize, synthetic_batch, train_step

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "autocast", "channels_last", "autocast_channels_last")
METRICS = ("step_time_median_s", "step_cpu_s", "images_per_s")
# repeats: interleaved rounds (each round times every variant once)
SCALES = {
    "smoke": {"batch_size": 2, "image_size": 64, "warmup": 1, "repeats": 2},
    "default": {"batch_size": 4, "image_size": 256, "warmup": 1, "repeats": 3},
    "full": {"batch_size": 8, "image_size": 512, "warmup": 2, "repeats": 10},
}
DEFAULTS = {"head": "fast", "num_classes": 1}


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    import torch

    from foodlab.devices import autocast_dtype, resolve_device
    from foodlab.models.lightweight import build_head

    cfg = scale_config("precision", SCALES, scale, settings, DEFAULTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown precision variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    dev = resolve_device(device)
    images, masks = synthetic_batch(cfg["batch_size"], cfg["image_size"], cfg["num_classes"])
    torch.manual_seed(0)
    reference = build_head(cfg["head"], cfg["num_classes"])
    steps, dtypes = {}, {}
    for name in variants:
        dtypes[name] = autocast_dtype(dev) if name.startswith("autocast") else None
        steps[name] = train_step(copy.deepcopy(reference), images, masks, dev, amp_dtype=dtypes[name],
                                 channels_last=name.endswith("channels_last"))
    times = interleave(steps, dev, cfg["repeats"], cfg["warmup"])
    records = []
    for name in variants:
        metrics, samples = summarize(times[name], cfg["batch_size"], cpu_samples(times, name, dev))
        log.info("precision %s: median %.3f s/step", name, metrics["step_time_median_s"])
        records.append({
            "variant": name,
            "params": {"head": cfg["head"], "dtype": str(dtypes[name] or torch.float32).replace("torch.", ""),
                       "channels_last": name.endswith("channels_last"), "batch_size": cfg["batch_size"],
                       "image_size": cfg["image_size"], "warmup": cfg["warmup"], "rounds": cfg["repeats"]},
            "metrics": metrics, "samples": samples,
        })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<24} {'dtype':<9} {'median s':>9} {'p10 s':>8} {'p90 s':>8} {'img/s':>8}"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['variant']:<24} {r['params']['dtype']:<9} {m['step_time_median_s']:>9.3f} "
                     f"{m['step_time_p10_s']:>8.3f} {m['step_time_p90_s']:>8.3f} {m['images_per_s']:>8.2f}")
    return "\n".join(lines)
