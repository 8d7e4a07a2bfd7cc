"""Data-loader throughput: worker processes and the decoded-image cache.

Variants iterate the same synthetic dataset through ``foodlab.data.loader.make_loader``:
``w0`` (decode in the training process), ``w4`` (4 worker processes), and the same two with
the decoded cache (``w0_cache``, ``w4_cache``). The first epoch of each (worker start-up, cache
fill) is timed on its own, one variant after another; the steady epochs that follow are timed
in interleaved rounds (one epoch of every variant per round), with all loaders kept alive.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time

from foodlab.bench.settings import scale_config

log = logging.getLogger(__name__)

VARIANTS = ("w0", "w4", "w0_cache", "w4_cache")
METRICS = ("images_per_s", "batches_per_s", "epoch_s", "first_epoch_s")
# epochs: the first epoch plus (epochs - 1) interleaved rounds of steady epochs
SCALES = {
    "smoke": {"n_images": 16, "image_size": 64, "batch_size": 4, "epochs": 2, "workers": 2},
    "default": {"n_images": 128, "image_size": 512, "batch_size": 8, "epochs": 2, "workers": 4},
    "full": {"n_images": 2048, "image_size": 512, "batch_size": 16, "epochs": 3, "workers": 4},
}


def _epoch(loader) -> None:
    for _images, _masks in loader:
        pass


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    from foodlab.bench.compare import spread
    from foodlab.bench.timing import interleave
    from foodlab.data.dataset import FoodSegDataset
    from foodlab.data.loader import make_loader
    from foodlab.data.synth import ensure_synthetic
    from foodlab.devices import resolve_device

    cfg = scale_config("loader", SCALES, scale, settings)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown loader variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    dev = resolve_device(device)
    root = ensure_synthetic(cfg["n_images"], size=cfg["image_size"])
    loaders, first, n = {}, {}, {}
    with contextlib.ExitStack() as stack:
        for name in variants:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="foodlab-cache-"))
            cache = cache_dir if name.endswith("_cache") else None
            ds = FoodSegDataset(root, image_size=cfg["image_size"], cache=cache)
            workers = 0 if name.startswith("w0") else cfg["workers"]
            loaders[name] = make_loader(ds, cfg["batch_size"], dev, num_workers=workers, shuffle=True, seed=0)
            n[name] = len(ds)
            start = time.perf_counter()
            _epoch(loaders[name])
            first[name] = time.perf_counter() - start
        times = interleave({name: (lambda ld=ld: _epoch(ld)) for name, ld in loaders.items()}, dev,
                           max(1, cfg["epochs"] - 1), warmup=0, min_block_s=0)  # one epoch per sample
        loaders.clear()
    records = []
    for name in variants:
        s = spread(times[name])
        workers = 0 if name.startswith("w0") else cfg["workers"]
        batches = -(-n[name] // cfg["batch_size"])
        log.info("loader %s: first epoch %.2f s, steady %.2f s", name, first[name], s["median"])
        records.append({
            "variant": name,
            "params": {"num_workers": workers, "cache": name.endswith("_cache"), "n_images": n[name],
                       "image_size": cfg["image_size"], "batch_size": cfg["batch_size"], "epochs": cfg["epochs"]},
            "metrics": {"first_epoch_s": first[name], "epoch_s": s["median"], "epoch_p10_s": s["p10"],
                        "epoch_p90_s": s["p90"], "images_per_s": n[name] / s["median"],
                        "batches_per_s": batches / s["median"]},
            "samples": {"epoch_s": times[name], "images_per_s": [n[name] / t for t in times[name]]},
        })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<10} {'workers':>7} {'cache':>6} {'1st epoch s':>11} {'epoch s':>8} {'p10-p90 s':>12} "
             f"{'img/s':>8}"]
    for r in records:
        p, m = r["params"], r["metrics"]
        band = f"{m['epoch_p10_s']:.2f}-{m['epoch_p90_s']:.2f}"
        lines.append(f"{r['variant']:<10} {p['num_workers']:>7} {str(p['cache']):>6} {m['first_epoch_s']:>11.2f} "
                     f"{m['epoch_s']:>8.2f} {band:>12} {m['images_per_s']:>8.1f}")
    return "\n".join(lines)
