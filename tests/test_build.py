"""What a training run is built from: the seeded holdout."""
from __future__ import annotations

import os

from foodlab.data.dataset import FoodSegDataset
from foodlab.data.synth import generate_synthetic
from foodlab.train.build import dataset_holdout


def test_holdout_is_drawn_over_candidates_so_a_bad_file_moves_nothing(tmp_path):

    root = generate_synthetic(tmp_path / "d", 20, size=32, seed=0, classes=2, workers=1, progress=False)
    ds = FoodSegDataset(root, image_size=32)
    train, val = dataset_holdout(ds, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == list(range(20))

    def names(d, idx):
        return {os.path.basename(d.samples[i][0]) for i in idx}

    before_train, before_val = names(ds, train), names(ds, val)
    victim = sorted(before_train)[0]
    (root / "images" / victim).write_bytes(b"")
    ds[[os.path.basename(p) for p, _ in ds.samples].index(victim)]    # found bad at load, remembered
    again = FoodSegDataset(root, image_size=32)
    assert len(again) == 19
    train2, val2 = dataset_holdout(again, 0.25, seed=3)
    assert names(again, val2) == before_val and names(again, train2) == before_train - {victim}
