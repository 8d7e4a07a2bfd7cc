"""Train-step throughput and memory: SAM2 full vs SAM2 decoder on cached embeddings vs the heads.

All variants run in one process on the same batch (B, 3, S, S) + masks: the heads at
S (512 by default, the training resolution), SAM2 resizing it to its 1024 input as
it does in training. A step is forward + loss + backward + optimizer step. Each
variant is built at every candidate setting (precision x memory format); every
(variant, setting) is then timed in interleaved rounds (``foodlab.bench.timing``) and
the fastest setting of each variant is flagged ``selected`` ("each model at its best
settings for the device"). ``speedup_vs_sam2_full`` is computed per round too, so its
spread is the spread of a ratio measured seconds apart.

Memory: ``peak_memory_mb`` is the peak above what the process held right before the
steps (activations, gradients, optimizer state, workspace), read with
``foodlab.devices.PeakMemory`` (CPU: sampled process RSS, with freed heap handed
back to the OS between variants so one variant's leftovers do not hide the next's)
over each variant's warm-up steps, one variant after another before the timed rounds
(a peak does not depend on what else the machine runs; a time does).
``model_params_mb`` is the weights held. Numbers, never tests.
"""
from __future__ import annotations

import logging
import time

import torch

from foodlab.bench.compare import spread
from foodlab.bench.settings import scale_config
from foodlab.bench.timing import cpu_samples, interleave, release_memory, summarize, synthetic_batch, train_step
from foodlab.devices import PeakMemory, autocast, autocast_dtype, device_name, resolve_device

log = logging.getLogger(__name__)

VARIANTS = ("fast_head", "baseline_head", "sam2_decoder_cached", "sam2_full")  # small -> large footprint
METRICS = ("step_time_median_s", "step_cpu_s", "images_per_s", "peak_memory_mb", "model_params_mb",
           "speedup_vs_sam2_full", "memory_ratio_vs_sam2_full", "init_s")
HEAD_SETTINGS = (("fp32", "contiguous"), ("amp", "contiguous"), ("amp", "channels_last"))
SAM2_SETTINGS = (("fp32", "contiguous"), ("amp", "contiguous"))
# repeats: interleaved rounds (each round times every variant at every setting once)
SCALES = {
    "smoke": dict(batch_size=1, image_size=64, sam2_image_size=128, warmup=1, repeats=2,
                  head_settings=(("fp32", "contiguous"), ("amp", "channels_last")),
                  sam2_settings=(("fp32", "contiguous"),)),
    "default": dict(batch_size=4, image_size=512, sam2_image_size=1024, warmup=1, repeats=2,
                    head_settings=HEAD_SETTINGS, sam2_settings=SAM2_SETTINGS),
    "full": dict(batch_size=4, image_size=512, sam2_image_size=1024, warmup=2, repeats=5,
                 head_settings=HEAD_SETTINGS, sam2_settings=SAM2_SETTINGS),
}
DEFAULTS = {"num_classes": 1, "sam2_model_type": "tiny", "seed": 0}


def _build(variant: str, cfg: dict, dev: torch.device, images: torch.Tensor, masks: torch.Tensor, dtype):
    """(module whose parameters train, step_forward(images, masks) -> logits)."""
    from foodlab.models.lightweight import build_head

    if variant.endswith("_head"):
        head = build_head(variant[: -len("_head")], cfg["num_classes"]).to(dev)
        return head, lambda x, y: head(x)
    from foodlab.models import sam2_backend
    from foodlab.models.detector import FoodDetector

    if variant == "sam2_full":
        det = FoodDetector(use_lightweight_head=False, sam2_model_type=cfg["sam2_model_type"], device=dev,
                           num_classes=cfg["num_classes"], sam2_image_size=cfg["sam2_image_size"])
        det.train()
        return det, lambda x, y: det(x, y)
    sam = sam2_backend.build_sam2_model(cfg["sam2_model_type"], None, dev, image_size=cfg["sam2_image_size"])
    # decoder on cached embeddings: encode once (like `foodlab embed`, stored fp16), then drop the encoder
    with torch.no_grad(), autocast(dev, dtype):
        feats = sam2_backend.encode(sam, images)
    feats = {"image_embed": feats["image_embed"].half(), "high_res_feats": [f.half() for f in feats["high_res_feats"]]}
    from foodlab.train.build import SAM2Decoder  # what `foodlab train --sam2-cached-embeddings` trains

    sam.image_encoder = None
    decoder = SAM2Decoder(sam, cfg["num_classes"], seed=0).train()
    return decoder, lambda x, y: decoder(feats, y)


def prepare_variant(variant: str, precision: str, memory_format: str, cfg: dict, dev, images, masks) -> dict:
    """Build one (variant, setting), run its warm-up steps under the memory reader; the step is kept."""
    dtype = autocast_dtype(dev) if precision == "amp" else None
    x, y = images.to(dev), masks.to(dev)
    t0 = time.perf_counter()
    model, step_forward = _build(variant, cfg, dev, x, y, dtype)
    init_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = train_step(model, x, y, dev, amp_dtype=dtype, channels_last=memory_format == "channels_last", lr=1e-4,
                      forward=step_forward)
    losses: list[float] = []
    release_memory()
    with PeakMemory(dev) as mem:
        for _ in range(max(1, cfg["warmup"])):
            losses.append(float(step()))
    return {
        "variant": variant, "step": lambda: losses.append(float(step())), "losses": losses,
        "params": {
            "batch_size": int(images.shape[0]), "image_size": int(images.shape[-1]),
            "model_input_size": cfg["sam2_image_size"] if variant.startswith("sam2") else int(images.shape[-1]),
            "precision": str(dtype).replace("torch.", "") if dtype else "fp32", "memory_format": memory_format,
            "num_classes": cfg["num_classes"], "device": str(dev), "device_name": device_name(dev),
            "sam2_model_type": cfg["sam2_model_type"] if variant.startswith("sam2") else None,
            "warmup": cfg["warmup"], "rounds": cfg["repeats"],
        },
        "metrics": {
            "init_s": init_s,
            "peak_memory_mb": mem.delta_bytes / 2**20,
            "model_params_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "trainable_params_m": trainable / 1e6,
        },
    }


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    """One record per (variant, setting); the fastest setting of each variant has params["selected"] True.

    Settings: batch_size, image_size, sam2_image_size, warmup, repeats (rounds), num_classes,
    sam2_model_type, head_settings, sam2_settings (tuples of (precision "fp32"|"amp", memory format)), seed.
    """
    cfg = scale_config("throughput", SCALES, scale, settings, DEFAULTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown throughput variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    dev = resolve_device(device)
    images, masks = synthetic_batch(cfg["batch_size"], cfg["image_size"], cfg["num_classes"], cfg["seed"])
    prepared: dict[str, dict] = {}
    for variant in [v for v in VARIANTS if v in variants]:
        for precision, memory_format in cfg["sam2_settings"] if variant.startswith("sam2") else cfg["head_settings"]:
            log.info("throughput: building %s %s %s", variant, precision, memory_format)
            prepared[f"{variant}/{precision}/{memory_format}"] = prepare_variant(
                variant, precision, memory_format, cfg, dev, images, masks)
    times = interleave({k: p["step"] for k, p in prepared.items()}, dev, cfg["repeats"], warmup=0)
    records = []
    for key, p in prepared.items():
        metrics, samples = summarize(times[key], int(images.shape[0]), cpu_samples(times, key, dev))
        records.append({"variant": p["variant"], "params": p["params"], "samples": samples,
                        "metrics": {**p["metrics"], **metrics, "loss_first": p["losses"][0],
                                    "loss_last": p["losses"][-1]}})
    for variant in dict.fromkeys(r["variant"] for r in records):
        mine = [r for r in records if r["variant"] == variant]
        best = min(mine, key=lambda r: r["metrics"]["step_time_median_s"])
        for r in mine:
            r["params"]["selected"] = r is best
    ref = next((r for r in records if r["variant"] == "sam2_full" and r["params"]["selected"]), None)
    if ref is not None:
        ref_times = ref["samples"]["step_time_median_s"]
        for r in records:
            per_round = [a / b for a, b in zip(ref_times, r["samples"]["step_time_median_s"])]
            r["samples"]["speedup_vs_sam2_full"] = per_round
            r["metrics"]["speedup_vs_sam2_full"] = spread(per_round)["median"]
            r["metrics"]["memory_ratio_vs_sam2_full"] = (ref["metrics"]["peak_memory_mb"]
                                                         / max(r["metrics"]["peak_memory_mb"], 1e-3))
    return records


def format_table(records: list[dict]) -> str:
    """Plain-text table; '*' marks each variant's selected (fastest) setting; p10-p90 over rounds."""
    head = f"{'variant':<22}{'precision':<11}{'format':<15}{'input':>6}{'step med s':>12}{'p10-p90 s':>16}" \
           f"{'img/s':>9}{'peak MB':>10}{'x SAM2':>9}{'mem x':>8}"
    lines = [head, "-" * len(head)]
    for r in records:
        p, m = r["params"], r["metrics"]
        mark = "*" if p.get("selected") else " "
        speed = f"{m['speedup_vs_sam2_full']:.1f}" if "speedup_vs_sam2_full" in m else "-"
        memx = f"{m['memory_ratio_vs_sam2_full']:.1f}" if "memory_ratio_vs_sam2_full" in m else "-"
        band = f"{m['step_time_p10_s']:.3f}-{m['step_time_p90_s']:.3f}"
        lines.append(f"{mark}{r['variant']:<21}{p['precision']:<11}{p['memory_format']:<15}{p['model_input_size']:>6}"
                     f"{m['step_time_median_s']:>12.3f}{band:>16}{m['images_per_s']:>9.2f}"
                     f"{m['peak_memory_mb']:>10.0f}{speed:>9}{memx:>8}")
    if records:
        lines.append(f"device: {records[0]['params']['device_name']}; batch {records[0]['params']['batch_size']}; "
                     "peak MB = train-step memory above the pre-step baseline")
    return "\n".join(lines)
