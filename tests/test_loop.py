"""The training loop in process: NaN handling, stand-in models and datasets, early stops, per-class metrics.

conftest gives every test its own MLFLOW_TRACKING_URI.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from foodlab import tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.train.checkpoint import load_checkpoint
from foodlab.train.loop import TrainingDiverged, train


def tiny_data(n: int = 12, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    ds = TensorDataset(x, (x[:, 0] > 0.5).long())
    return Subset(ds, range(n - 4)), Subset(ds, range(n - 4, n)), ds


class NaNAfter(nn.Module):
    """A tiny conv net whose output turns NaN from its ``k``-th training forward on."""

    def __init__(self, k: int):
        super().__init__()
        self.net, self.k, self.calls = nn.Conv2d(3, 1, 3, padding=1), k, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        y = self.net(x)
        return y * float("nan") if self.training and self.calls >= self.k else y


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=2, device="cpu", num_workers=0, out_dir=str(tmp_path), run_name="nan",
                      amp=False)
    with pytest.raises(TrainingDiverged, match=r"step 6 \(epoch 2, batch 2\)"):
        train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=NaNAfter(k=6), progress=False,
              track=False)
    ckpt = load_checkpoint(tmp_path / "foodlab-train" / "nan" / "last.pt")  # after epoch 1, untouched since
    assert (ckpt["epoch"], ckpt["step"]) == (1, 4)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_from_a_huge_learning_rate_is_reported(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e30, device="cpu", num_workers=0, out_dir=str(tmp_path),
                      amp=False)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    with pytest.raises(TrainingDiverged, match="at step"):
        train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=model, progress=False, track=False)


def test_stand_in_training_tracks_and_returns_result(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, device="cpu", num_workers=0, out_dir=str(tmp_path),
                      experiment="standin", accum_steps=2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    r = train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=model, progress=False)
    assert r.steps == 2 and r.epochs == 2 and not r.interrupted  # 8 images / 4 = 2 batches = 1 step per epoch
    assert r.best_checkpoint.is_file() and r.last_checkpoint.is_file()
    assert 0.0 <= r.best_miou <= 1.0 and "val_miou" in r.metrics
    run = tracking.get_run(r.run_id)
    assert run.data.params["train.accum_steps"] == "2"
    assert "val_dice" in run.data.metrics


def test_max_steps_and_on_epoch_end_stop_early(tmp_path):
    cfg = TrainConfig(epochs=5, batch_size=2, device="cpu", num_workers=0, out_dir=str(tmp_path))
    mk = lambda: nn.Conv2d(3, 1, 1)  # noqa: E731
    r = train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=mk(), max_steps=3, progress=False,
              track=False)
    assert r.steps == 3 and r.epochs == 1
    assert (load_checkpoint(r.last_checkpoint)["epoch"], load_checkpoint(r.last_checkpoint)["batch"]) == (0, 3)
    r = train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=mk(), progress=False, track=False,
              on_epoch_end=lambda entry: entry["epoch"] == 2)
    assert r.epochs == 2 and r.steps == 8


def test_multiclass_validation_reports_per_class_metrics(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    y = (x[:, 0] * 3).long().clamp(max=2)
    ds = TensorDataset(x, y)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", num_workers=0, out_dir=str(tmp_path))
    r = train(DataConfig(num_classes=3), ModelConfig(num_classes=3), cfg, model=nn.Conv2d(3, 3, 1),
              datasets=(Subset(ds, range(4)), Subset(ds, range(4, 8)), ds), progress=False, track=False)
    assert {"val_iou_class_2", "val_dice_class_1"} <= set(r.metrics)
