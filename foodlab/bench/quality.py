"""Time-to-quality and loader efficiency, measured through the real training loop.

- ``time_to_target``: wall-clock training time (validation excluded) until val mIoU on
  the synthetic data reaches ``target_miou``, for the baseline head, the fast head and
  SAM2's decoder trained on cached image embeddings (embedding time reported apart as
  ``prep_s``). Capped by ``max_epochs`` / ``max_time_s``: ``reached`` says whether it got
  there. SAM2 without a checkpoint has random weights and is prompted from the ground
  truth, so its row measures the mechanics, not what a real checkpoint would reach.
- ``equal_steps``: val mIoU of baseline vs fast head after the same number of steps.
- ``loader``: the fraction of step time spent waiting for the next batch with the
  default loader settings, on the first epoch (cold decoded-image cache, being filled)
  and the next (warm cache). Target: under 10% once warm.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from foodlab.bench import scale_config

log = logging.getLogger(__name__)

SCALES = {
    "smoke": {"n_images": 12, "image_size": 32, "batch_size": 4, "target_miou": 0.3, "max_epochs": 2,
              "max_time_s": 60.0, "equal_steps": 4, "sam2_image_size": 128, "loader_images": 16, "lr": 3e-3},
    "default": {"n_images": 128, "image_size": 128, "batch_size": 8, "target_miou": 0.5, "max_epochs": 20,
                "max_time_s": 150.0, "equal_steps": 60, "sam2_image_size": 256, "loader_images": 128, "lr": 3e-3},
    "full": {"n_images": 1024, "image_size": 512, "batch_size": 8, "target_miou": 0.7, "max_epochs": 30,
             "max_time_s": 3600.0, "equal_steps": 500, "sam2_image_size": 1024, "loader_images": 2048, "lr": 1e-3},
}
VARIANTS = ("baseline_head", "fast_head", "sam2_decoder_cached", "equal_steps", "loader")


def _configs(cfg: dict, device: str, out_dir: Path, head: str = "fast", lightweight: bool = True, **train_kw):
    from foodlab.config import DataConfig, ModelConfig, TrainConfig

    data = DataConfig(synth_n=cfg["n_images"], synth_size=cfg["image_size"], image_size=cfg["image_size"],
                      cache=train_kw.pop("cache", None))
    model = ModelConfig(head=head, use_lightweight_head=lightweight, freeze_image_encoder=not lightweight)
    train = TrainConfig(epochs=train_kw.pop("epochs", cfg["max_epochs"]), batch_size=cfg["batch_size"],
                        lr=cfg["lr"], device=device, out_dir=str(out_dir), val_fraction=0.2, **train_kw)
    return data, model, train


def _time_to_target(cfg: dict, configs: tuple, **train_kw) -> dict:
    from foodlab.train import train

    target, cap = cfg["target_miou"], cfg["max_time_s"]
    result = train(*configs, progress=False, track=False,
                   on_epoch_end=lambda e: e["val_miou"] >= target or e["train_time_s"] >= cap, **train_kw)
    hit = next((h for h in result.history if h["val_miou"] >= target), None)
    last = result.history[-1]
    return {"reached": hit is not None, "time_to_target_s": hit["train_time_s"] if hit else None,
            "steps_to_target": hit["step"] if hit else None, "final_miou": last["val_miou"],
            "best_miou": result.best_miou, "steps": result.steps, "train_time_s": last["train_time_s"],
            "images_per_s": last["images_per_s"]}


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **overrides) -> list[dict]:
    from foodlab.devices import resolve_device
    from foodlab.train import train
    from foodlab.train.setup import sam2_decoder_setup

    cfg = scale_config("quality", SCALES, scale, overrides)
    dev = resolve_device(device)
    params = {k: cfg[k] for k in ("n_images", "image_size", "batch_size", "target_miou", "lr")}
    records = []
    with tempfile.TemporaryDirectory(prefix="foodlab-quality-") as tmp:
        out = Path(tmp)
        for head in ("baseline", "fast"):
            if f"{head}_head" in variants:
                metrics = _time_to_target(cfg, _configs(cfg, str(dev), out / head, head=head, num_workers=0))
                records.append({"variant": f"{head}_head", "params": {**params, "head": head}, "metrics": metrics})
        if "sam2_decoder_cached" in variants:
            configs = _configs(cfg, str(dev), out / "sam2", lightweight=False, num_workers=0,
                               sam2_cached_embeddings=True)
            t0 = time.perf_counter()
            setup = sam2_decoder_setup(*configs, dev, sam2_image_size=cfg["sam2_image_size"])
            prep = time.perf_counter() - t0
            metrics = {**_time_to_target(cfg, configs, **setup), "prep_s": prep}
            records.append({"variant": "sam2_decoder_cached", "params": {
                **params, "sam2_image_size": cfg["sam2_image_size"], "sam2_weights": "random"}, "metrics": metrics})
        if "equal_steps" in variants:
            for head in ("baseline", "fast"):
                configs = _configs(cfg, str(dev), out / f"eq_{head}", head=head, num_workers=0, epochs=10_000)
                r = train(*configs, max_steps=cfg["equal_steps"], progress=False, track=False)
                records.append({"variant": f"{head}_head@{cfg['equal_steps']}_steps",
                                "params": {**params, "head": head, "steps": cfg["equal_steps"]},
                                "metrics": {"final_miou": r.metrics["val_miou"], "steps": r.steps,
                                            "train_time_s": r.metrics["train_time_s"]}})
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

    lines = [f"{'variant':<26} {'reached':>7} {'to target s':>11} {'steps':>6} {'final mIoU':>10} "
             f"{'train s':>8} {'img/s':>7} {'data wait':>9}"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{r['variant']:<26} {f(m.get('reached'), ''):>7} {f(m.get('time_to_target_s'), '.1f'):>11} "
                     f"{f(m.get('steps'), 'd'):>6} {f(m.get('final_miou'), '.3f'):>10} "
                     f"{f(m.get('train_time_s', m.get('epoch_s')), '.1f'):>8} {f(m.get('images_per_s'), '.1f'):>7} "
                     f"{f(m.get('data_wait_fraction'), '.1%'):>9}")
    return "\n".join(lines)
