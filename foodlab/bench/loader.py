"""Data-loader throughput: worker processes and the decoded-image cache.

Variants iterate the same synthetic dataset through ``foodlab.data.make_loader``:
``w0`` (decode in the training process), ``w4`` (4 worker processes), and the same
two with the decoded cache (``w0_cache``, ``w4_cache``). The first epoch (worker
start-up, cache fill) is timed separately from the steady epochs that follow.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time

from foodlab.bench import scale_config

log = logging.getLogger(__name__)

VARIANTS = ("w0", "w4", "w0_cache", "w4_cache")
SCALES = {
    "smoke": {"n_images": 16, "image_size": 64, "batch_size": 4, "epochs": 2, "workers": 2},
    "default": {"n_images": 128, "image_size": 512, "batch_size": 8, "epochs": 2, "workers": 4},
    "full": {"n_images": 2048, "image_size": 512, "batch_size": 16, "epochs": 3, "workers": 4},
}


def _epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for _images, _masks in loader:
        pass
    return time.perf_counter() - start


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **overrides) -> list[dict]:
    from foodlab.data import FoodSegDataset, ensure_synthetic, make_loader
    from foodlab.devices import resolve_device

    cfg = scale_config("loader", SCALES, scale, overrides)
    dev = resolve_device(device)
    root = ensure_synthetic(cfg["n_images"], size=cfg["image_size"])
    records = []
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown loader variant {name!r}; choose from {', '.join(VARIANTS)}")
        workers = 0 if name.startswith("w0") else cfg["workers"]
        with tempfile.TemporaryDirectory(prefix="foodlab-cache-") as cache_dir:
            ds = FoodSegDataset(root, image_size=cfg["image_size"],
                                cache=cache_dir if name.endswith("_cache") else None)
            loader = make_loader(ds, cfg["batch_size"], dev, num_workers=workers, shuffle=True, seed=0)
            first = _epoch_seconds(loader)
            steady = [_epoch_seconds(loader) for _ in range(max(1, cfg["epochs"] - 1))]
            del loader
        epoch_s = statistics.median(steady)
        log.info("loader %s: first epoch %.2f s, steady %.2f s", name, first, epoch_s)
        records.append({
            "variant": name,
            "params": {"num_workers": workers, "cache": name.endswith("_cache"), "n_images": len(ds),
                       "image_size": cfg["image_size"], "batch_size": cfg["batch_size"], "epochs": cfg["epochs"]},
            "metrics": {"first_epoch_s": first, "epoch_s": epoch_s,
                        "images_per_s": len(ds) / epoch_s,
                        "batches_per_s": -(-len(ds) // cfg["batch_size"]) / epoch_s},
        })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<10} {'workers':>7} {'cache':>6} {'1st epoch s':>11} {'epoch s':>8} {'img/s':>8}"]
    for r in records:
        p, m = r["params"], r["metrics"]
        lines.append(f"{r['variant']:<10} {p['num_workers']:>7} {str(p['cache']):>6} {m['first_epoch_s']:>11.2f} "
                     f"{m['epoch_s']:>8.2f} {m['images_per_s']:>8.1f}")
    return "\n".join(lines)
