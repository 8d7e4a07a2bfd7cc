"""Inference speed and memory: SAM2-refined masks vs the head's own, one photo or a batch, fp32 or autocast.

What is timed is the path users run: ``foodlab.models.predict.segment`` (``foodlab predict`` and
the MLflow Model both call it) on a list of RGB photos at their own size, under
``torch.inference_mode``. ``sam2_*`` variants run ``mode="sam2"`` (the head at its training size,
then SAM2 on each photo resized to its own input, logits upsampled to the photo and thresholded);
``head_*`` variants run ``mode="lightweight"`` (the head only, its mask resized to the photo).
``b1``/``b8`` is how many photos one call gets; ``autocast`` runs the call under
``foodlab.devices.autocast`` (bf16 on CPU/CUDA, fp16 on MPS), ``fp32`` without it.

The detector has random weights (no checkpoint can be downloaded), which is fine for speed and
memory. Its head counts as untrained, so SAM2 is prompted with the whole-photo box, as
``segment`` does for an untrained head; a trained head adds one box and a few points per food
region, which costs decoder calls only, and the image encoder dominates the SAM2 path.
The photos come from the synthetic dataset (``foodlab.data.synth``), identical for every variant.

All variants share one detector and are timed in interleaved rounds (``foodlab.bench.timing``), one
sample per round per variant. ``images_per_s`` is photos per second of one call (batch / median
call time). ``peak_memory_mb`` is the peak above what the process held right before the call
(activations and workspace; the weights are already loaded), read with
``foodlab.devices.PeakMemory`` over each variant's warm-up calls, one variant after another before
the timed rounds: a peak does not depend on what else the machine runs, a time does.
``model_params_mb`` is the weights the variant's path uses. Numbers, never tests.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from foodlab.bench.settings import scale_config
from foodlab.bench.timing import interleave, release_memory, summarize
from foodlab.devices import PeakMemory, autocast, autocast_dtype, device_name, resolve_device

log = logging.getLogger(__name__)

MODES = {"sam2": "sam2", "head": "lightweight"}  # variant prefix -> segment() mode
BATCH_SIZES = (1, 8)
PRECISIONS = ("fp32", "autocast")
# the expensive path first: sam2_b1_fp32 is what `foodlab predict --mode sam2` on one photo costs
VARIANTS = tuple(f"{prefix}_b{b}_{p}" for prefix in MODES for b in BATCH_SIZES for p in PRECISIONS)
METRICS = ("images_per_s", "peak_memory_mb", "step_time_median_s", "model_params_mb")
# photo_size: the synthetic photos' side (segment sees them at this size); image_size: the head's
# training size; sam2_image_size: SAM2's square input (1024 is SAM2's own). warmup: untimed calls of
# each variant (the memory is read over them); repeats: interleaved timed rounds.
SCALES = {
    "smoke": {"photo_size": 96, "image_size": 64, "sam2_image_size": 128, "warmup": 1, "repeats": 2},
    "default": {"photo_size": 1024, "image_size": 512, "sam2_image_size": 1024, "warmup": 1, "repeats": 2},
    "full": {"photo_size": 1024, "image_size": 512, "sam2_image_size": 1024, "warmup": 1, "repeats": 5},
}
DEFAULTS = {"head": "fast", "num_classes": 1, "sam2_model_type": "tiny", "seed": 0}


def parse_variant(variant: str) -> tuple[str, int, str]:
    """``sam2_b8_autocast`` -> ("sam2", 8, "autocast"): segment() mode, photos per call, precision."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown inference variant {variant!r}; choose from {', '.join(VARIANTS)}")
    prefix, batch, precision = variant.split("_")
    return MODES[prefix], int(batch[1:]), precision


def synthetic_photos(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB uint8 photos (size x size) from the synthetic food dataset, as a user's files decode."""
    from foodlab.data.dataset import read_image
    from foodlab.data.synth import ensure_synthetic

    root = ensure_synthetic(n, size=size, seed=seed)
    files = sorted(p for p in (root / "images").iterdir() if p.is_file())
    return [read_image(p) for p in files[:n]]


def _build_detector(cfg: dict, dev: torch.device, with_sam2: bool):
    from foodlab.models.detector import FoodDetector

    torch.manual_seed(cfg["seed"])
    det = FoodDetector(use_lightweight_head=True, head=cfg["head"], num_classes=cfg["num_classes"],
                       sam2_model_type=cfg["sam2_model_type"], sam2_image_size=cfg["sam2_image_size"], device=dev)
    if with_sam2:
        det.sam  # noqa: B018  (built now, so no variant's call pays for building it)
    return det.eval()


def _params_mb(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    """One record per variant, in ``VARIANTS`` order.

    Settings: photo_size, image_size, sam2_image_size, warmup, repeats (rounds), head, num_classes,
    sam2_model_type, seed.
    """
    from foodlab.models.predict import segment

    cfg = scale_config("inference", SCALES, scale, settings, DEFAULTS)
    wanted = [v for v in VARIANTS if v in variants]
    for v in variants:
        parse_variant(v)  # an unknown name fails before anything is built
    dev = resolve_device(device)
    photos = synthetic_photos(max(BATCH_SIZES), cfg["photo_size"], cfg["seed"])
    detector = _build_detector(cfg, dev, with_sam2=any(parse_variant(v)[0] == "sam2" for v in wanted))

    def call(mode: str, batch: int, dtype):
        def step():
            with torch.inference_mode(), autocast(dev, dtype):
                return segment(detector, photos[:batch], mode=mode, image_size=cfg["image_size"])
        return step

    steps, params, metrics = {}, {}, {}
    for variant in wanted:
        mode, batch, precision = parse_variant(variant)
        dtype = autocast_dtype(dev) if precision == "autocast" else None
        steps[variant] = call(mode, batch, dtype)
        log.info("inference: warming up %s", variant)
        release_memory()
        with PeakMemory(dev) as mem:
            for _ in range(max(1, cfg["warmup"])):
                steps[variant]()
        used = [detector.head, detector.sam] if mode == "sam2" else [detector.head]
        params[variant] = {
            "mode": mode, "batch_size": batch, "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
            "photo_size": cfg["photo_size"], "image_size": cfg["image_size"],
            "model_input_size": cfg["sam2_image_size"] if mode == "sam2" else cfg["image_size"],
            "head": cfg["head"], "num_classes": cfg["num_classes"],
            "sam2_model_type": cfg["sam2_model_type"] if mode == "sam2" else None,
            "sam2_prompt": "whole-photo box (untrained head)" if mode == "sam2" else None,
            "device": str(dev), "device_name": device_name(dev), "warmup": max(1, cfg["warmup"]),
            "rounds": cfg["repeats"],
        }
        metrics[variant] = {"peak_memory_mb": mem.delta_bytes / 2**20,
                            "model_params_mb": sum(_params_mb(m) for m in used)}
    times = interleave(steps, dev, cfg["repeats"], warmup=0)
    records = []
    for variant in wanted:
        timed, samples = summarize(times[variant], params[variant]["batch_size"])
        log.info("inference %s: %.2f images/s", variant, timed["images_per_s"])
        records.append({"variant": variant, "params": params[variant], "samples": samples,
                        "metrics": {**metrics[variant], **timed}})
    return records


def format_table(records: list[dict]) -> str:
    """Plain-text table; a step is one segment() call on the batch; p10-p90 over rounds."""
    head = f"{'variant':<20}{'mode':<13}{'batch':>6}{'precision':>11}{'input':>7}{'call med s':>12}" \
           f"{'p10-p90 s':>17}{'img/s':>10}{'peak MB':>10}"
    lines = [head, "-" * len(head)]
    for r in records:
        p, m = r["params"], r["metrics"]
        band = f"{m['step_time_p10_s']:.3f}-{m['step_time_p90_s']:.3f}"
        lines.append(f"{r['variant']:<20}{p['mode']:<13}{p['batch_size']:>6}{p['precision']:>11}"
                     f"{p['model_input_size']:>7}{m['step_time_median_s']:>12.3f}{band:>17}"
                     f"{m['images_per_s']:>10.2f}{m['peak_memory_mb']:>10.0f}")
    if records:
        p = records[0]["params"]
        lines.append(f"device: {p['device_name']}; photos {p['photo_size']}x{p['photo_size']}; "
                     "peak MB = memory above the pre-call baseline (weights already loaded)")
    return "\n".join(lines)
