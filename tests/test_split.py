"""The validation holdout (data/split.py): membership a stable function of each file's relative path."""
from __future__ import annotations

import pytest

from foodlab.data.dataset import FoodSegDataset
from foodlab.data.split import holdout, holdout_keys
from foodlab.data.synth import generate_synthetic
from foodlab.errors import UsageError


def _dataset_of(root, names, jpg, png):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "images" / f"{name}.jpg").write_bytes(jpg)
        (root / "masks" / f"{name}.png").write_bytes(png)
    return root


def _sides(ds, train, val):
    paths = ds.relative_paths()
    return {paths[i]: "val" for i in val} | {paths[i]: "train" for i in train}


@pytest.fixture(scope="module")
def pair_bytes(tmp_path_factory):
    src = generate_synthetic(tmp_path_factory.mktemp("one"), 1, size=16, workers=1, progress=False)
    return (src / "images" / "000000.jpg").read_bytes(), (src / "masks" / "000000.png").read_bytes()


def test_adding_or_removing_files_moves_no_other_file(tmp_path, pair_bytes):
    root = _dataset_of(tmp_path / "d", [f"img{i:04d}" for i in range(1000)], *pair_bytes)
    ds = FoodSegDataset(root, image_size=16)
    train, val = holdout(ds, 0.1, seed=3)
    before = _sides(ds, train, val)
    assert 70 <= len(val) <= 130 and len(train) + len(val) == 1000 and not set(train) & set(val)
    assert holdout(FoodSegDataset(root, image_size=16), 0.1, seed=3) == (train, val)   # reproducible

    _dataset_of(root, ["added"], *pair_bytes)                  # one image added ...
    grown = FoodSegDataset(root, image_size=16)
    after = _sides(grown, *holdout(grown, 0.1, seed=3))
    assert len(after) == 1001 and {p: s for p, s in after.items() if p in before} == before
    for name in ("img0003", "img0500"):                        # ... and two removed
        (root / "images" / f"{name}.jpg").unlink()
    shrunk = FoodSegDataset(root, image_size=16)
    left = _sides(shrunk, *holdout(shrunk, 0.1, seed=3))
    assert len(left) == 999 and all(after[p] == s for p, s in left.items())

    other = _sides(ds, *holdout(ds, 0.1, seed=4))
    assert other != before                                     # the seed picks another split


def test_fraction_and_small_datasets():
    keys = [f"images/{i}.jpg" for i in range(5000)]
    for fraction in (0.05, 0.2, 0.5):
        train, val = holdout_keys(keys, fraction, seed=0)
        assert abs(len(val) / 5000 - fraction) < 0.02 and len(train) + len(val) == 5000
    assert holdout_keys(keys[:2], 0.01, seed=0)[1] != []        # n > 1: at least one validation sample
    assert all(len(holdout_keys(keys[:n], 0.99, seed=s)[0]) >= 1 for n in (2, 3) for s in range(5))
    assert holdout_keys(keys[:1], 0.5, seed=0) in (([0], []), ([], [0]))
    assert holdout_keys(keys[:50], 0.0, seed=0) == (list(range(50)), [])
    with pytest.raises(UsageError, match="val_fraction"):
        holdout_keys(keys, 1.0, seed=0)


def test_a_file_found_bad_moves_no_other_file(tmp_path):
    import os

    root = generate_synthetic(tmp_path / "d", 20, size=32, seed=0, classes=2, workers=1, progress=False)
    ds = FoodSegDataset(root, image_size=32)
    train, val = holdout(ds, 0.25, seed=3)
    assert val and sorted(train + val) == list(range(20))
    before = _sides(ds, train, val)
    victim = sorted(p for p, side in before.items() if side == "train")[0]
    (root / victim).write_bytes(b"")
    ds[[os.path.relpath(p, root) for p, _ in ds.samples].index(victim)]    # found bad at load, remembered
    again = FoodSegDataset(root, image_size=32)
    assert len(again) == 19
    after = _sides(again, *holdout(again, 0.25, seed=3))
    assert after == {p: side for p, side in before.items() if p != victim}
