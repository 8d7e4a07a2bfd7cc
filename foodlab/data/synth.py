"""Procedural food plates: the built-in dataset when no real data can be downloaded.

Each image is a table (wood, cloth or tiles) seen from above with one or two
plates, cutlery and a napkin as background clutter, and several food items
drawn in painter's order so later items partly hide earlier ones. Every food
class has a fixed look (hue, texture, shape family: blob, polygon, sticks,
clusters, egg) with per-instance jitter, so class ids are learnable but not
trivial. Masks are uint8 class-id PNGs: 0 = background, 1..classes = food.

Image ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so the
output is the same whether written serially or by a pool of processes.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from foodlab.atomic import write_text_atomic
from foodlab.data.layouts import default_cache_root
from foodlab.errors import UsageError

log = logging.getLogger(__name__)

SYNTH_LAYOUTS = ("pairs", "foodseg103")
TEST_FRACTION = 0.2        # foodseg103 layout: the last 20% of indices go to test/
_SHAPES = ("blob", "polygon", "sticks", "cluster", "egg")


@cache
def _noise_tile(scale: int, size: int = 1024) -> np.ndarray:
    """A fixed float32 noise tile in ~[-1, 1] (same in every process): crops of it texture surfaces."""
    rng = np.random.default_rng(1234 + scale)
    small = rng.standard_normal((size // scale + 2, size // scale + 2)).astype(np.float32)
    tile = cv2.resize(small, (size + 2 * scale, size + 2 * scale), interpolation=cv2.INTER_CUBIC)
    tile = tile[scale:scale + size, scale:scale + size]
    return np.clip(tile / 2.5, -1, 1)


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    tile = _noise_tile(scale, max(1024, 1 << (max(h, w) - 1).bit_length()))
    y = int(rng.integers(0, tile.shape[0] - h + 1))
    x = int(rng.integers(0, tile.shape[1] - w + 1))
    return tile[y:y + h, x:x + w]


@cache
def class_style(c: int) -> dict:
    """The fixed look of food class ``c`` (1-based): colour, texture scale/strength, shape family."""
    rng = np.random.default_rng([99, c])
    hue = (c * 0.381966) % 1.0                      # golden-ratio spread of hues
    sat = 0.45 + 0.5 * rng.random()
    val = 0.45 + 0.5 * rng.random()
    rgb = np.array(_hsv_to_rgb(hue, sat, val), np.float32) * 255
    return {
        "color": rgb,
        "shape": _SHAPES[(c - 1) % len(_SHAPES)],
        "tex_scale": (2, 4, 8, 16)[int(rng.integers(4))],
        "tex_amp": float(0.08 + 0.3 * rng.random()),
        "size": float(0.07 + 0.06 * rng.random()),   # radius as a fraction of the image
    }


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _table(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 RGB table surface: wood grain, cloth weave or tiles."""
    base = rng.uniform(60, 200, 3).astype(np.float32)
    kind = int(rng.integers(3))
    yy, xx = np.ogrid[:size, :size]
    if kind == 0:    # wood: stretched noise + sinusoidal grain
        grain = np.sin((xx * rng.uniform(0.05, 0.2) + 6 * _noise(rng, size, size, 16)).astype(np.float32))
        tex = 0.15 * grain + 0.1 * _noise(rng, size, size, 4)
    elif kind == 1:  # cloth: fine checker weave
        period = int(rng.integers(8, 40))
        check = (((yy // period) + (xx // period)) % 2).astype(np.float32) * 2 - 1
        tex = 0.12 * check + 0.08 * _noise(rng, size, size, 2)
    else:            # tiles: grout lines
        period = int(rng.integers(40, 140))
        grout = ((yy % period) < 3) | ((xx % period) < 3)
        tex = 0.06 * _noise(rng, size, size, 8) - 0.35 * grout.astype(np.float32)
    return base * (1 + tex[..., None])


def _poly(rng: np.random.Generator, cx: float, cy: float, r: float, n: int, jitter: float) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * (1 + jitter * rng.uniform(-1, 1, n))
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)


def _draw_item(canvas: np.ndarray, rng: np.random.Generator, shape: str, cx: float, cy: float, r: float,
               value: int) -> None:
    """Rasterise one food item of a shape family into the uint8 ``canvas`` with ``value``."""
    if shape == "blob":
        cv2.fillPoly(canvas, [_poly(rng, cx, cy, r, 24, 0.18)], value, cv2.LINE_8)
    elif shape == "polygon":
        cv2.fillPoly(canvas, [_poly(rng, cx, cy, r, int(rng.integers(3, 7)), 0.3)], value, cv2.LINE_8)
    elif shape == "sticks":
        for _ in range(int(rng.integers(2, 6))):
            ang = rng.uniform(0, 180)
            c = (cx + rng.uniform(-r, r) * 0.6, cy + rng.uniform(-r, r) * 0.6)
            box = cv2.boxPoints((c, (r * rng.uniform(1.2, 2.0), r * rng.uniform(0.18, 0.35)), ang))
            cv2.fillPoly(canvas, [box.round().astype(np.int32)], value, cv2.LINE_8)
    elif shape == "cluster":
        for _ in range(int(rng.integers(3, 9))):
            rr = r * rng.uniform(0.25, 0.5)
            c = (int(cx + rng.uniform(-r, r) * 0.7), int(cy + rng.uniform(-r, r) * 0.7))
            cv2.circle(canvas, c, max(2, int(rr)), value, -1, cv2.LINE_8)
    else:  # egg: white ellipse; the yolk is drawn as texture by the caller
        axes = (max(2, int(r)), max(2, int(r * rng.uniform(0.6, 0.9))))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, value, -1, cv2.LINE_8)


def render(index: int, size: int = 512, seed: int = 0, classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Draw sample ``index``: (image uint8 HxWx3 BGR, mask uint8 HxW class ids)."""
    rng = np.random.default_rng([seed, index])
    img = _table(rng, size)
    mask = np.zeros((size, size), np.uint8)
    layer = np.zeros((size, size), np.uint8)

    def paint(color: np.ndarray, shade: float, tex_scale: int, tex_amp: float, label: int = -1) -> None:
        """Fill ``layer``'s pixels into ``img`` (and ``mask`` when label >= 0) inside its bounding box,
        with a textured colour, then clear ``layer`` there."""
        x, y, w, h = cv2.boundingRect(layer)
        if w == 0 or h == 0:
            return
        roi = layer[y:y + h, x:x + w]
        region = roi.view(bool)
        shading = _noise(rng, h, w, tex_scale) * tex_amp + 1
        np.copyto(img[y:y + h, x:x + w], shading[..., None] * (color * shade), where=region[..., None])
        if label >= 0:
            mask[y:y + h, x:x + w][region] = label
        roi[:] = 0

    # clutter on the table (background class): napkin and cutlery
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.5:
            c = rng.uniform(0, size, 2)
            box = cv2.boxPoints((tuple(c), tuple(rng.uniform(0.15, 0.35, 2) * size), rng.uniform(0, 90)))
        else:
            c = rng.uniform(0, size, 2)
            box = cv2.boxPoints((tuple(c), (size * rng.uniform(0.3, 0.5), size * 0.025), rng.uniform(0, 180)))
        cv2.fillPoly(layer, [box.round().astype(np.int32)], 1)
        paint(rng.uniform(120, 240, 3).astype(np.float32), 1.0, 4, 0.05)

    for _ in range(1 if rng.random() < 0.75 else 2):
        pr = size * rng.uniform(0.28, 0.45)
        pc = rng.uniform(size * 0.3, size * 0.7, 2)
        axes = (int(pr), int(pr * rng.uniform(0.75, 1.0)))
        tilt = rng.uniform(0, 180)
        # soft shadow, then plate with a rim
        shadow = np.zeros((size, size), np.float32)
        cv2.ellipse(shadow, (int(pc[0] + 0.06 * pr), int(pc[1] + 0.08 * pr)), axes, tilt, 0, 360, 1.0, -1)
        shadow = cv2.blur(shadow, (31, 31))
        img *= (1 - 0.35 * shadow)[..., None]
        plate_col = rng.uniform(170, 250, 3).astype(np.float32) if rng.random() < 0.7 \
            else rng.uniform(40, 200, 3).astype(np.float32)
        cv2.ellipse(layer, (int(pc[0]), int(pc[1])), axes, tilt, 0, 360, 1, -1)
        paint(plate_col * 0.85, 1.0, 8, 0.03)
        inner = (int(axes[0] * 0.8), int(axes[1] * 0.8))
        cv2.ellipse(layer, (int(pc[0]), int(pc[1])), inner, tilt, 0, 360, 1, -1)
        paint(plate_col, 1.0, 8, 0.03)

        for _ in range(int(rng.integers(2, 7))):
            c = int(rng.integers(1, classes + 1))
            style = class_style(c)
            r = size * style["size"] * rng.uniform(0.7, 1.3)
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.75) * pr
            cx, cy = pc[0] + dist * math.cos(ang), pc[1] + dist * math.sin(ang)
            _draw_item(layer, rng, style["shape"], cx, cy, r, 1)
            color = np.clip(style["color"] * rng.uniform(0.85, 1.15, 3), 0, 255).astype(np.float32)
            paint(color, 1.0, style["tex_scale"], style["tex_amp"], label=c)
            if style["shape"] == "egg":  # yolk
                cv2.circle(img, (int(cx), int(cy)), max(2, int(r * 0.35)), (40, 170, 240), -1)

    # lighting: directional gradient, global gain, colour cast, sensor noise
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    theta, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.35)
    light = 1 + strength * (ramp[None, :] * math.cos(theta) + ramp[:, None] * math.sin(theta))
    gain = (rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)[::-1]  # BGR order
    light = light + (6 / 128) * _noise(rng, size, size, 1)   # sensor noise, multiplicative
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    bgr *= light[..., None]
    bgr *= gain
    return np.clip(bgr, 0, 255).astype(np.uint8), mask


def _paths(out: Path, layout: str, index: int, n: int) -> tuple[Path, Path]:
    name = f"{index:06d}"
    if layout == "pairs":
        return out / "images" / f"{name}.jpg", out / "masks" / f"{name}.png"
    split = "test" if index >= n - int(n * TEST_FRACTION) else "train"
    return (out / "Images" / "img_dir" / split / f"{name}.jpg",
            out / "Images" / "ann_dir" / split / f"{name}.png")


def _write_range(job: tuple) -> int:
    """Pool task: render and write indices [start, stop). Top-level so spawn can pickle it."""
    out, start, stop, n, size, seed, classes, layout = job
    cv2.setNumThreads(1)
    for i in range(start, stop):
        img, mask = render(i, size, seed, classes)
        img_path, mask_path = _paths(Path(out), layout, i, n)
        ok_i, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        ok_m, png = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not (ok_i and ok_m):
            raise RuntimeError(f"could not encode synthetic sample {i}")
        img_path.write_bytes(jpg.tobytes())
        mask_path.write_bytes(png.tobytes())
    return stop - start


def generate_synthetic(out: str | Path, n: int, size: int = 512, seed: int = 0, classes: int = 8,
                       layout: str = "pairs", workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n`` image/mask pairs under ``out`` in ``layout`` (pairs | foodseg103); returns ``out``."""
    from tqdm.auto import tqdm

    if layout not in SYNTH_LAYOUTS:
        raise UsageError(f"unknown synthetic layout {layout!r}; choose one of {', '.join(SYNTH_LAYOUTS)}")
    if n < 1 or size < 16 or not 1 <= classes <= 255:
        raise UsageError(f"need n >= 1, size >= 16 and 1 <= classes <= 255 (got n={n}, size={size}, classes={classes})")
    out = Path(out)
    for i in {0, n - 1}:
        for p in _paths(out, layout, i, n):
            p.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n // 32 or 1))
    chunk = max(1, min(256, n // (workers * 8) or 1))
    jobs = [(str(out), s, min(s + chunk, n), n, size, seed, classes, layout) for s in range(0, n, chunk)]
    bar = tqdm(total=n, desc="synth", unit="img", disable=not progress)
    if workers == 1:
        for job in jobs:
            bar.update(_write_range(job))
    else:
        # spawn: safe after torch/OpenMP were imported by the caller, and the same on every OS
        with mp.get_context("spawn").Pool(workers) as pool:
            for done in pool.imap_unordered(_write_range, jobs):
                bar.update(done)
    bar.close()
    meta = {"n": n, "size": size, "seed": seed, "classes": classes, "layout": layout, "generator": "foodlab.synth/1"}
    write_text_atomic(out / "synth.json", json.dumps(meta, indent=1))   # written last: marks a complete dataset
    return out


def ensure_synthetic(n: int, size: int = 512, seed: int = 0, classes: int = 8, root: str | Path | None = None,
                     layout: str = "pairs", workers: int | None = None) -> Path:
    """The synthetic dataset for these settings, generated once into a cache folder and reused.

    Generation goes to a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a half-written dataset that looks complete.
    """
    base = Path(root) if root is not None else default_cache_root() / "synth"
    suffix = "" if layout == "pairs" else f"_{layout}"
    final = base / f"n{n}_s{size}_seed{seed}_c{classes}{suffix}"
    if (final / "synth.json").exists():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("generating %d synthetic %dx%d pairs into %s", n, size, size, final)
    try:
        generate_synthetic(tmp, n, size=size, seed=seed, classes=classes, layout=layout, workers=workers)
    except BaseException:  # interrupted or failed: leave no half-written (possibly GBs) folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "synth.json").exists():
            raise
    return final
