"""Dataset init time: decode vs stat vs manifest (first open, re-open), side by side on the same files.

``manifest_first_open`` lists the folders and writes the manifest; each file's integrity check
then runs when the file is loaded. ``manifest_verify`` is a first open that checks every file's
size and end marker up front (``verify=True``), what a first open cost before the check moved.

All five are timed in this one process on one synthetic dataset, after a warm-up pass that
reads every file once, so the page cache is equally warm for each strategy (the figures are
warm-cache figures, as in real repeated training runs). ``decode`` is the slow historic path:
above ``decode_sample`` images it is timed on an evenly spaced subsample and extrapolated
linearly to N — the record says so in ``params.extrapolated_from`` and the table marks it.

Overrides: n, image_size, seed, classes, root (an existing pairs dataset instead of the
synthetic one), repeats, decode_sample.
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from foodlab.bench import scale_config

log = logging.getLogger(__name__)

SCALES = {
    "smoke": {"n": 300, "image_size": 128, "repeats": 3, "decode_sample": 100},
    "default": {"n": 5000, "image_size": 512, "repeats": 3, "decode_sample": 500},
    "full": {"n": 70700, "image_size": 512, "repeats": 3, "decode_sample": 1000},
}
VARIANTS = ("decode", "stat", "manifest_verify", "manifest_first_open", "manifest_reopen")


def _warm_page_cache(root: Path) -> None:
    """Read every file once so no strategy pays for cold disk reads the others do not."""
    for folder in ("images", "masks"):
        with os.scandir(root / folder) as it:
            for e in it:
                with open(e.path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def _subsample(root: Path, k: int) -> Path:
    """A temporary pairs folder of ``k`` evenly spaced samples (symlinks, so the same bytes)."""
    names = sorted(os.listdir(root / "images"))
    step = max(1, len(names) // k)
    picked = names[::step][:k]
    masks = {os.path.splitext(m)[0]: m for m in os.listdir(root / "masks")}
    sub = Path(tempfile.mkdtemp(prefix="foodlab_decode_sample_"))
    (sub / "images").mkdir()
    (sub / "masks").mkdir()
    for name in picked:
        stem = os.path.splitext(name)[0]
        os.symlink(root / "images" / name, sub / "images" / name)
        if stem in masks:
            os.symlink(root / "masks" / masks[stem], sub / "masks" / masks[stem])
    return sub


def _time_index(root: Path, strategy: str, verify: bool = False, first_open: bool = False) -> tuple[float, int]:
    from foodlab.data import manifest
    from foodlab.data.index import build_index
    from foodlab.data.layouts import resolve_layout

    if first_open:
        manifest.remove(resolve_layout(root, "pairs"))
    start = time.perf_counter()
    index = build_index(resolve_layout(root, "pairs"), strategy, verify=verify)
    return time.perf_counter() - start, len(index.samples)


def run(scale: str = "smoke", device: str = "auto", **overrides) -> list[dict]:
    """One record per variant in VARIANTS; ``device`` is unused (indexing is CPU and filesystem work)."""
    from foodlab.data.synth import ensure_synthetic

    cfg = scale_config("init_time", SCALES, scale, overrides, defaults={"seed": 0, "classes": 8, "root": None})
    n, size, repeats = int(cfg["n"]), int(cfg["image_size"]), max(1, int(cfg["repeats"]))
    root = Path(cfg["root"]) if cfg["root"] else ensure_synthetic(n, size=size, seed=cfg["seed"],
                                                                   classes=cfg["classes"])
    _warm_page_cache(root)
    base = {"n_images": n, "image_size": size, "root": str(root), "repeats": repeats, "warm_page_cache": True}
    records = []

    k = min(n, int(cfg["decode_sample"]))
    sub = _subsample(root, k) if k < n else root
    try:
        secs, images = _time_index(sub, "decode")
    finally:
        if sub != root:
            shutil.rmtree(sub, ignore_errors=True)
    decode_params = {**base, "strategy": "decode"}
    if k < n:
        decode_params["extrapolated_from"] = k
        secs, images = secs * n / k, n
    records.append({"variant": "decode", "params": decode_params, "metrics": {"init_s": secs, "images": images}})

    times = [_time_index(root, "stat") for _ in range(repeats)]
    records.append({"variant": "stat", "params": {**base, "strategy": "stat"},
                    "metrics": {"init_s": statistics.median(t for t, _ in times), "images": times[0][1]}})

    runs = {
        "manifest_verify": [_time_index(root, "manifest", verify=True, first_open=True) for _ in range(repeats)],
        "manifest_first_open": [_time_index(root, "manifest", first_open=True) for _ in range(repeats)],
        "manifest_reopen": [_time_index(root, "manifest") for _ in range(max(5, repeats))],
    }
    for variant, times in runs.items():
        params = {**base, "strategy": "manifest", "verify": variant == "manifest_verify"}
        records.append({"variant": variant, "params": params,
                        "metrics": {"init_s": statistics.median(t for t, _ in times), "images": times[0][1]}})
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<22} {'images':>8} {'init_s':>10}  note", "-" * 64]
    notes = []
    for r in records:
        p, m = r["params"], r["metrics"]
        note = ""
        if "extrapolated_from" in p:
            note = f"extrapolated from {p['extrapolated_from']} images"
        lines.append(f"{r['variant']:<22} {m['images']:>8} {m['init_s']:>10.4f}  {note}")
    if records:
        p = records[0]["params"]
        notes.append(f"{p['n_images']} pairs at {p['image_size']}px, median of {p['repeats']} runs, "
                     "warm page cache (every file read once before timing)")
    return "\n".join(lines + notes)
