"""Time to quality and quality at convergence, counted in optimizer steps, through the real loop.

A wall-clock budget measures the machine as much as the model: under load a head simply runs out
of time earlier. So every quality run here is budgeted in **steps** (``max_steps``, generous, so
each head gets to converge), validated after every epoch, and reports:

- ``steps_to_target`` / ``images_to_target``: the first validated step whose val mIoU reached
  ``target_miou`` (resolution: one epoch of steps);
- ``best_miou``: the best val mIoU within the budget (quality at convergence);
- ``miou_at_equal_steps``: val mIoU at the first validation at or after ``equal_steps``;
- ``time_to_target_s``: ``steps_to_target`` x the head's train-step time, which is measured
  apart, interleaved with the other heads' steps on the same batch (``foodlab.bench.timing``),
  so load that comes and goes hits every head alike. Its per-round samples give its interval.

``sam2_decoder_cached`` trains SAM2's decoder on cached embeddings; without a checkpoint its
weights are random and it is prompted from the ground truth, so its row shows the mechanics.
``loader`` reports the fraction of step time spent waiting for the next batch on the first epoch
(cold decoded-image cache) and the next (warm cache); a fraction, not a comparison of variants.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from foodlab.bench.settings import scale_config

log = logging.getLogger(__name__)

VARIANTS = ("baseline_head", "fast_head", "sam2_decoder_cached", "loader")
METRICS = ("time_to_target_s", "steps_to_target", "images_to_target", "best_miou", "miou_at_equal_steps",
           "final_miou", "step_time_median_s", "data_wait_fraction", "images_per_s")
SCALES = {
    "smoke": {"n_images": 12, "image_size": 32, "batch_size": 4, "target_miou": 0.3, "max_steps": 6,
              "equal_steps": 3, "sam2_image_size": 128, "loader_images": 16, "lr": 3e-3, "repeats": 2},
    "default": {"n_images": 128, "image_size": 128, "batch_size": 8, "target_miou": 0.5, "max_steps": 600,
                "equal_steps": 60, "sam2_image_size": 256, "loader_images": 128, "lr": 3e-3, "repeats": 5},
    "full": {"n_images": 1024, "image_size": 512, "batch_size": 8, "target_miou": 0.7, "max_steps": 4000,
             "equal_steps": 500, "sam2_image_size": 1024, "loader_images": 2048, "lr": 1e-3, "repeats": 5},
}
DEFAULTS = {"num_classes": 1, "sam2_model_type": "tiny", "warmup": 1}


def _configs(cfg: dict, device: str, out_dir: Path, head: str = "fast", lightweight: bool = True, **train_kw):
    from foodlab.config import DataConfig, ModelConfig, TrainConfig

    data = DataConfig(synth_n=cfg["n_images"], synth_size=cfg["image_size"], image_size=cfg["image_size"],
                      cache=train_kw.pop("cache", None))
    model = ModelConfig(head=head, use_lightweight_head=lightweight, freeze_image_encoder=not lightweight)
    train = TrainConfig(epochs=train_kw.pop("epochs", 100_000), batch_size=cfg["batch_size"],
                        lr=cfg["lr"], device=device, out_dir=str(out_dir), val_fraction=0.2, **train_kw)
    return data, model, train


def quality_from_history(history: list[dict], target: float, equal_steps: int, batch_size: int) -> dict:
    """Steps-based quality figures from the loop's per-epoch history (``step``, ``val_miou``)."""
    hit = next((h for h in history if h["val_miou"] >= target), None)
    equal = next((h for h in history if h["step"] >= equal_steps), history[-1])
    return {"reached": hit is not None, "steps_to_target": hit["step"] if hit else None,
            "images_to_target": hit["step"] * batch_size if hit else None,
            "best_miou": max(h["val_miou"] for h in history), "final_miou": history[-1]["val_miou"],
            "miou_at_equal_steps": equal["val_miou"], "equal_steps_measured_at": equal["step"],
            "steps": history[-1]["step"]}


def _step_times(cfg: dict, variants: list[str], dev) -> dict[str, dict]:
    """Each variant's train-step time, interleaved with the others on one synthetic batch."""
    from foodlab.bench.throughput import prepare_variant
    from foodlab.bench.timing import interleave, summarize, synthetic_batch

    images, masks = synthetic_batch(cfg["batch_size"], cfg["image_size"], cfg["num_classes"])
    prepared = {v: prepare_variant(v, "fp32", "contiguous", cfg, dev, images, masks) for v in variants}
    times = interleave({v: p["step"] for v, p in prepared.items()}, dev, cfg["repeats"], warmup=0)
    return {v: dict(zip(("metrics", "samples"), summarize(times[v], cfg["batch_size"]))) for v in variants}


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    from foodlab.devices import resolve_device
    from foodlab.train.build import sam2_decoder_setup
    from foodlab.train.loop import train

    cfg = scale_config("quality", SCALES, scale, settings, DEFAULTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown quality variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    dev = resolve_device(device)
    params = {k: cfg[k] for k in ("n_images", "image_size", "batch_size", "target_miou", "lr", "max_steps",
                                  "equal_steps")}
    models = [v for v in VARIANTS if v in variants and v != "loader"]
    timed = _step_times(cfg, models, dev) if models else {}
    records = []
    with tempfile.TemporaryDirectory(prefix="foodlab-quality-") as tmp:
        out = Path(tmp)
        for variant in models:
            extra, setup = {}, {}
            if variant == "sam2_decoder_cached":
                configs = _configs(cfg, str(dev), out / variant, lightweight=False, num_workers=0,
                                   sam2_cached_embeddings=True)
                setup = sam2_decoder_setup(*configs, dev, sam2_image_size=cfg["sam2_image_size"])
                extra = {"sam2_image_size": cfg["sam2_image_size"], "sam2_weights": "random"}
            else:
                configs = _configs(cfg, str(dev), out / variant, head=variant[: -len("_head")], num_workers=0)
                extra = {"head": variant[: -len("_head")]}
            log.info("quality: training %s for %d steps", variant, cfg["max_steps"])
            result = train(*configs, max_steps=cfg["max_steps"], progress=False, track=False, **setup)
            metrics = quality_from_history(result.history, cfg["target_miou"], cfg["equal_steps"], cfg["batch_size"])
            step = timed[variant]
            metrics["step_time_median_s"] = step["metrics"]["step_time_median_s"]
            samples = {"step_time_median_s": step["samples"]["step_time_median_s"]}
            if metrics["steps_to_target"] is not None:
                metrics["time_to_target_s"] = metrics["steps_to_target"] * metrics["step_time_median_s"]
                samples["time_to_target_s"] = [metrics["steps_to_target"] * t for t in samples["step_time_median_s"]]
            records.append({"variant": variant, "params": {**params, **extra}, "metrics": metrics,
                            "samples": samples})
        if "loader" in variants:
            lcfg = {**cfg, "n_images": cfg["loader_images"]}
            configs = _configs(lcfg, str(dev), out / "loader", epochs=2, cache=str(out / "decoded"))
            r = train(*configs, progress=False, track=False)  # default workers / pin_memory for the device
            for name, h in zip(("loader_cold_cache", "loader_warm_cache"), r.history):
                records.append({"variant": name, "params": {**params, "n_images": lcfg["n_images"],
                                                            "num_workers": "default", "cache": True},
                                "metrics": {"data_wait_fraction": h["data_wait_fraction"],
                                            "images_per_s": h["images_per_s"], "epoch_s": h["epoch_s"]}})
    return records


def format_table(records: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'variant':<22} {'reached':>7} {'steps to':>8} {'images to':>9} {'to target s':>11} "
             f"{'best mIoU':>9} {'mIoU@eq':>7} {'step s':>7} {'data wait':>9}"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['variant']:<22} {f(m.get('reached'), ''):>7} {f(m.get('steps_to_target'), 'd'):>8} "
                     f"{f(m.get('images_to_target'), 'd'):>9} {f(m.get('time_to_target_s'), '.1f'):>11} "
                     f"{f(m.get('best_miou'), '.3f'):>9} {f(m.get('miou_at_equal_steps'), '.3f'):>7} "
                     f"{f(m.get('step_time_median_s'), '.3f'):>7} {f(m.get('data_wait_fraction'), '.1%'):>9}")
    if records and "max_steps" in records[0]["params"]:
        p = records[0]["params"]
        lines.append(f"budget {p['max_steps']} steps per model; mIoU@eq at the first validation >= "
                     f"{p['equal_steps']} steps; time to target = steps x interleaved step time")
    return "\n".join(lines)
