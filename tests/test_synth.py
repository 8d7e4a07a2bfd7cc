"""Synthetic food data: determinism, parallel == serial, layouts, CLI, and that it is not trivial."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from foodlab.data.synth import ensure_synthetic, generate_synthetic, render


def test_render_same_seed_identical_different_seed_differs():
    img_a, mask_a = render(3, size=64, seed=7, classes=5)
    img_b, mask_b = render(3, size=64, seed=7, classes=5)
    assert np.array_equal(img_a, img_b) and np.array_equal(mask_a, mask_b)
    img_c, mask_c = render(3, size=64, seed=8, classes=5)
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(render(4, size=64, seed=7, classes=5)[0], img_a)
    assert img_a.shape == (64, 64, 3) and img_a.dtype == np.uint8
    assert mask_a.shape == (64, 64) and mask_a.dtype == np.uint8 and mask_a.max() <= 5


def test_synthetic_is_not_trivial():
    """Several classes per image, partial food coverage, textured (not flat) food and background."""
    classes_seen, fractions = set(), []
    for i in range(12):
        img, mask = render(i, size=128, seed=0, classes=8)
        ids = set(np.unique(mask).tolist()) - {0}
        classes_seen |= ids
        fractions.append((mask > 0).mean())
        food = img[mask > 0].astype(np.float32)
        assert food.std() > 5, "food regions should be textured, not flat"
        assert img[mask == 0].astype(np.float32).std() > 5
    assert len(classes_seen) >= 6
    assert np.mean([len(set(np.unique(render(i, 128)[1]).tolist()) - {0}) for i in range(12)]) >= 2
    assert 0.02 < np.mean(fractions) < 0.6


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_parallel_output_equals_serial(tmp_path):
    serial = generate_synthetic(tmp_path / "serial", 64, size=32, seed=5, classes=4, workers=1, progress=False)
    parallel = generate_synthetic(tmp_path / "parallel", 64, size=32, seed=5, classes=4, workers=2, progress=False)
    a, b = _tree_bytes(serial), _tree_bytes(parallel)
    assert len(a) == 64 * 2 + 1
    assert a == b


def test_layouts_written(tmp_path):
    pairs = generate_synthetic(tmp_path / "p", 10, size=32, workers=1, progress=False)
    assert len(list((pairs / "images").glob("*.jpg"))) == 10 == len(list((pairs / "masks").glob("*.png")))
    mask = cv2.imread(str(pairs / "masks" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.ndim == 2
    fs = generate_synthetic(tmp_path / "f", 10, size=32, layout="foodseg103", workers=1, progress=False)
    assert len(list((fs / "Images" / "img_dir" / "train").glob("*.jpg"))) == 8
    assert len(list((fs / "Images" / "ann_dir" / "test").glob("*.png"))) == 2
    assert json.loads((fs / "synth.json").read_text())["layout"] == "foodseg103"
    with pytest.raises(ValueError, match="unknown synthetic layout"):
        generate_synthetic(tmp_path / "x", 2, layout="coco")


def test_ensure_synthetic_reuses(tmp_path):
    root = ensure_synthetic(6, size=32, seed=1, classes=3, root=tmp_path)
    assert root.name == "n6_s32_seed1_c3" and (root / "synth.json").exists()
    stamp = (root / "images" / "000000.jpg").stat().st_mtime_ns
    assert ensure_synthetic(6, size=32, seed=1, classes=3, root=tmp_path) == root
    assert (root / "images" / "000000.jpg").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folder left behind


@pytest.mark.slow   # two interpreter start-ups with the whole CLI imported
def test_cli_synth_and_info(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "foodlab", "data", "synth", "--out", str(out), "--n", "6",
                          "--size", "48", "--seed", "2", "--classes", "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "wrote 6 pairs" in res.stdout
    assert len(list((out / "images").iterdir())) == 6
    a = cv2.imread(str(out / "images" / "000004.jpg"))
    assert np.array_equal(a, cv2.imdecode(cv2.imencode(".jpg", render(4, 48, 2, 3)[0],
                                                       [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR))
    (out / "images" / "000001.jpg").write_bytes(b"")
    info = [sys.executable, "-m", "foodlab", "data", "info", str(out)]
    res = subprocess.run(info, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "layout:   pairs" in res.stdout and "6 kept of 6" in res.stdout and "checked:  0 of 6" in res.stdout
    res = subprocess.run(info + ["--verify"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "5 kept of 6" in res.stdout and "checked:  5 of 5" in res.stdout
    assert "000001.jpg: empty file (0 bytes)" in res.stdout
    res = subprocess.run(info[:-1] + [str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "" and "not a folder" in res.stderr
