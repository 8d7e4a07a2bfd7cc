"""Dataset init time: decode vs stat vs manifest (first open, re-open), side by side on the same files.

``manifest_first_open`` lists the folders and writes the manifest; each file's content check
(``data/validity.py``) then runs when the file is loaded. ``manifest_verify`` is a first open that
runs that check on every file up front (``verify=True``: every file read once).

All five are timed in this one process on one synthetic dataset, in interleaved rounds
(``foodlab.bench.timing.interleave``: every strategy once per round), after a warm-up pass that
reads every file once, so the page cache is equally warm for each strategy (the figures are
warm-cache figures, as in real repeated training runs). ``decode`` is the slow path: above
``decode_sample`` images it is timed on an evenly spaced subsample and extrapolated linearly to
N; the record says so in ``params.extrapolated_from`` and the table marks it.

Settings: n, image_size, seed, classes, root (an existing pairs dataset instead of the
synthetic one), repeats (rounds), decode_sample.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from foodlab.bench.settings import scale_config

log = logging.getLogger(__name__)

SCALES = {
    "smoke": {"n": 300, "image_size": 128, "repeats": 3, "decode_sample": 100},
    "default": {"n": 5000, "image_size": 512, "repeats": 3, "decode_sample": 500},
    "full": {"n": 70700, "image_size": 512, "repeats": 3, "decode_sample": 1000},
}
VARIANTS = ("decode", "stat", "manifest_verify", "manifest_first_open", "manifest_reopen")
METRICS = ("init_s", "images")
DEFAULTS = {"seed": 0, "classes": 8, "root": None}


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


def _index_step(root: Path, strategy: str, counts: dict, name: str, verify: bool = False):
    """A zero-argument call that opens the index once (for the interleaved timer); notes its size."""
    from foodlab.data.index import build_index
    from foodlab.data.layouts import resolve_layout

    def step() -> None:
        counts[name] = len(build_index(resolve_layout(root, "pairs"), strategy, verify=verify).samples)
    return step


def _forget_manifest(root: Path):
    """Run before a first-open variant (outside the clock), so it builds the manifest anew."""
    from foodlab.data import manifest
    from foodlab.data.layouts import resolve_layout

    return lambda: manifest.remove(resolve_layout(root, "pairs"))


def run(scale: str = "smoke", device: str = "auto", variants=VARIANTS, **settings) -> list[dict]:
    """One record per variant in ``variants``; ``device`` is unused (indexing is CPU and filesystem work)."""
    import torch

    from foodlab.bench.compare import spread
    from foodlab.bench.timing import interleave
    from foodlab.data.synth import ensure_synthetic

    cfg = scale_config("init_time", SCALES, scale, settings, DEFAULTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown init_time variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    n, size, rounds = int(cfg["n"]), int(cfg["image_size"]), max(1, int(cfg["repeats"]))
    root = Path(cfg["root"]) if cfg["root"] else ensure_synthetic(n, size=size, seed=cfg["seed"],
                                                                   classes=cfg["classes"])
    _warm_page_cache(root)
    base = {"n_images": n, "image_size": size, "root": str(root), "rounds": rounds, "warm_page_cache": True}
    k = min(n, int(cfg["decode_sample"]))
    sub = _subsample(root, k) if k < n and "decode" in variants else root
    images: dict[str, int] = {}
    steps = {"decode": _index_step(sub, "decode", images, "decode"),
             "stat": _index_step(root, "stat", images, "stat"),
             "manifest_verify": _index_step(root, "manifest", images, "manifest_verify", verify=True),
             "manifest_first_open": _index_step(root, "manifest", images, "manifest_first_open"),
             "manifest_reopen": _index_step(root, "manifest", images, "manifest_reopen")}
    prepare = {"manifest_verify": _forget_manifest(root), "manifest_first_open": _forget_manifest(root)}
    ordered = [v for v in VARIANTS if v in variants]
    if "manifest_reopen" in ordered:  # its warm-up call writes the manifest the re-open reads
        ordered = ["manifest_reopen", *[v for v in ordered if v != "manifest_reopen"]]
    try:
        times = interleave({v: steps[v] for v in ordered}, torch.device("cpu"), rounds, warmup=1,
                           prepare={v: p for v, p in prepare.items() if v in ordered})
    finally:
        if sub != root:
            shutil.rmtree(sub, ignore_errors=True)
    records = []
    for variant in [v for v in VARIANTS if v in variants]:
        params = {**base, "strategy": variant.split("_")[0], "verify": variant == "manifest_verify"}
        samples = times[variant]
        if variant == "decode" and k < n:
            params["extrapolated_from"] = k
            samples, images[variant] = [t * n / k for t in samples], n
        s = spread(samples)
        records.append({"variant": variant, "params": params, "samples": {"init_s": samples},
                        "metrics": {"init_s": s["median"], "init_p10_s": s["p10"], "init_p90_s": s["p90"],
                                    "images": images[variant]}})
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'variant':<22} {'images':>8} {'init_s':>10} {'p10-p90 s':>18}  note", "-" * 80]
    notes = []
    for r in records:
        p, m = r["params"], r["metrics"]
        note = f"extrapolated from {p['extrapolated_from']} images" if "extrapolated_from" in p else ""
        band = f"{m['init_p10_s']:.4f}-{m['init_p90_s']:.4f}"
        lines.append(f"{r['variant']:<22} {m['images']:>8} {m['init_s']:>10.4f} {band:>18}  {note}")
    if records:
        p = records[0]["params"]
        notes.append(f"{p['n_images']} pairs at {p['image_size']}px, median of {p['rounds']} interleaved rounds, "
                     "warm page cache (every file read once before timing)")
    return "\n".join(lines + notes)
