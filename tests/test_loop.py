"""The training loop in process: NaN handling, stand-in models and datasets, early stops, per-class metrics.

conftest gives every test its own MLFLOW_TRACKING_URI.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from foodlab import tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.errors import UsageError
from foodlab.train.checkpoint import load_checkpoint
from foodlab.train.epoch import TrainingDiverged
from foodlab.train.loop import train
from foodlab.train.schedule import MIN_LR_FRACTION


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


# ------------------------------------------------------------------ run folders, resume, MLflow end states

def stand_in() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))


def quick_cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 2, "lr": 1e-2, "device": "cpu", "num_workers": 0,
                          "out_dir": str(tmp_path / "runs"), "amp": False, **kw})


def logged_lrs(tmp_path, run_id: str) -> list[float]:
    db = sqlite3.connect(tmp_path / "mlflow.db")
    return [v for (v,) in db.execute("select value from metrics where key='lr' and run_uuid=? order by step",
                                     (run_id,))]


def test_two_runs_of_one_experiment_never_share_checkpoints(tmp_path):
    a = train(DataConfig(), ModelConfig(), quick_cfg(tmp_path, experiment="same"), datasets=tiny_data(),
              model=stand_in(), progress=False)
    best_a = a.best_checkpoint.read_bytes()
    b = train(DataConfig(), ModelConfig(), quick_cfg(tmp_path, experiment="same"), datasets=tiny_data(seed=1),
              model=stand_in(), progress=False)
    assert a.run_folder != b.run_folder and a.best_checkpoint.read_bytes() == best_a
    assert a.run_folder.parent == tmp_path / "runs" / "same" and a.run_folder.name.endswith(a.run_id[:8])
    for r in (a, b):
        run = tracking.get_run(r.run_id)
        art = Path(run.info.artifact_uri.replace("file://", ""))
        files = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()}
        assert {"checkpoints/best.pt", "weights/model.pt", "logs/training.log"} <= files, files


def test_resume_with_more_epochs_extends_the_run_and_the_lr_never_climbs_back(tmp_path):
    cfg = quick_cfg(tmp_path, experiment="extend")
    first = train(DataConfig(), ModelConfig(), cfg, datasets=tiny_data(), model=stand_in(), progress=False)
    more = train(DataConfig(), ModelConfig(), dataclasses.replace(cfg, epochs=4, resume=str(first.run_folder)),
                 datasets=tiny_data(), model=stand_in(), progress=False)
    assert more.run_id == first.run_id and more.run_folder == first.run_folder
    assert more.epochs == 4 and more.steps == 16  # 8 train images / batch 2 = 4 steps per epoch
    lrs = logged_lrs(tmp_path, first.run_id)
    assert len(lrs) == 16 and all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[8:] == pytest.approx([cfg.lr * MIN_LR_FRACTION] * 8)  # a finished run continues at its final lr
    run = tracking.get_run(first.run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.params["resume_at_step_8.train.epochs"] == "4"
    assert run.data.tags["epochs"] == "4" and run.info.status == "FINISHED"


def test_resume_refuses_changed_settings_naming_each_difference(tmp_path):
    cfg = quick_cfg(tmp_path)
    data = tiny_data()
    data[2].fingerprint = "data-a"
    first = train(DataConfig(), ModelConfig(), cfg, datasets=data, model=stand_in(), progress=False, track=False)
    changed = dataclasses.replace(cfg, lr=1e-3, batch_size=4, resume=str(first.run_folder))
    with pytest.raises(UsageError) as err:
        train(DataConfig(), ModelConfig(), changed, datasets=data, model=stand_in(), progress=False, track=False)
    msg = str(err.value)
    assert str(first.run_folder) in msg and "--lr 0.001 (run: 0.01)" in msg and "--batch-size 4 (run: 2)" in msg
    other = tiny_data()
    other[2].fingerprint = "data-b"
    with pytest.raises(UsageError, match="dataset changed"):
        train(DataConfig(), ModelConfig(), dataclasses.replace(cfg, resume=str(first.run_folder)), datasets=other,
              model=stand_in(), progress=False, track=False)


class Breaks(nn.Module):
    """A stand-in whose third training forward raises ``exc``."""

    def __init__(self, exc: BaseException):
        super().__init__()
        self.net, self.exc, self.calls = nn.Conv2d(3, 1, 1), exc, 0

    def forward(self, x):
        self.calls += self.training
        if self.calls == 3:
            raise self.exc
        return self.net(x)


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_crashed_run_ends_failed_and_an_interrupted_one_killed(tmp_path, exc, status):
    with pytest.raises(type(exc)):
        train(DataConfig(), ModelConfig(), quick_cfg(tmp_path, experiment="ends"), datasets=tiny_data(),
              model=Breaks(exc), progress=False)
    runs = tracking.search_runs(["ends"])
    assert list(runs["status"]) == [status]


def test_each_run_logs_to_its_own_file(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    a = train(DataConfig(), ModelConfig(), quick_cfg(tmp_path, run_name="a"), datasets=tiny_data(),
              model=stand_in(), progress=False, track=False)
    b = train(DataConfig(), ModelConfig(), quick_cfg(tmp_path, run_name="b"), datasets=tiny_data(),
              model=stand_in(), progress=False, track=False)
    text_a, text_b = (r.run_folder / "training.log" for r in (a, b))
    text_a, text_b = text_a.read_text(), text_b.read_text()
    assert "epoch 2/2" in text_a and str(a.run_folder) in text_a and str(b.run_folder) not in text_a
    assert str(b.run_folder) in text_b and str(a.run_folder) not in text_b


def test_mostly_bad_data_fails_in_its_first_epoch_with_the_reasons(tmp_path):
    """15 of 24 images truncated, drop_last on: the run must not train on the other 9 and say 'done'."""
    from foodlab.data.synth import generate_synthetic
    from foodlab.data.validity import DatasetError

    root = generate_synthetic(tmp_path / "d", 24, size=32, seed=0, classes=2, workers=1, progress=False)
    for jpg in sorted((root / "images").glob("*.jpg"))[:15]:
        jpg.write_bytes(jpg.read_bytes()[:200])
    cfg = TrainConfig(epochs=3, batch_size=4, device="cpu", num_workers=0, out_dir=str(tmp_path / "runs"),
                      val_fraction=0.2)
    with pytest.raises(DatasetError, match="bad.*truncated"):
        train(DataConfig(root=str(root), image_size=32), ModelConfig(), cfg, progress=False, track=False)
