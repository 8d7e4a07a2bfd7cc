"""Training loop: the CLI end to end with its MLflow run, resume after a real kill, NaN, dead tracking server.

Everything runs on the synthetic dataset at 32-64 px so a 2-core CPU gets through it quickly.
conftest gives every test its own MLFLOW_TRACKING_URI and a session-wide FOODLAB_CACHE;
subprocesses inherit both.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from foodlab import tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.train import TrainingDiverged, train
from foodlab.train.checkpoint import StopOnSignal, load_checkpoint, save_checkpoint
from foodlab.train.ddp import Dist, ResumableSampler

TINY = ["--synthetic-n", "12", "--image-size", "32", "--batch-size", "2", "--device", "cpu",
        "--num-workers", "0", "--no-progress", "--val-fraction", "0.25"]


def run_cli(args: list[str], cwd: Path, timeout: float = 240, module: str = "foodlab") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


# ------------------------------------------------------------------ CLI end to end + MLflow contents

@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One `python -m foodlab.train` run of 2 epochs, inspected by several tests."""
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5",
               "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}  # so a short run still logs some
        proc = subprocess.run([sys.executable, "-m", "foodlab.train", *TINY, "--epochs", "2", "--out-dir", "runs",
                               "--experiment", "e2e", "--run-name", "r1", "--cache"],
                              cwd=tmp, capture_output=True, text=True, timeout=240, env=env)
    finally:
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
    return tmp, uri, proc


@pytest.mark.slow
def test_cli_trains_checkpoints_and_logs(e2e):
    tmp, _, proc = e2e
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Using device: CPU" in out
    assert "epoch 2/2:" in out and "val mIoU" in out
    for name in ("last.pt", "best.pt", "model.pt"):
        assert (tmp / "runs" / "r1" / name).is_file(), name
    log_text = (tmp / "logs" / "training.log").read_text()
    assert "Using device:" in log_text and "epoch 1/2:" in log_text
    ckpt = load_checkpoint(tmp / "runs" / "r1" / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (2, 0)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "run_id"} <= set(ckpt)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_training_checkpoints_are_what_predict_accepts(e2e):
    """`foodlab predict --weights` takes best.pt/last.pt as printed by train, not only model.pt."""
    from foodlab.models import FoodDetector

    tmp, _, proc = e2e
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = tmp / "runs" / "r1" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # shareable: no code in the pickle
    det = FoodDetector.load_head(best, device="cpu")
    assert det.head_trained and det.head_name == ckpt["configs"]["model"]["head"]
    for name, value in det.head.state_dict().items():
        assert torch.equal(value, ckpt["model"][f"head.{name}"]), name
    final = FoodDetector.load_head(tmp / "runs" / "r1" / "model.pt", device="cpu")
    last = FoodDetector.load_head(tmp / "runs" / "r1" / "last.pt", device="cpu")
    for name, value in final.head.state_dict().items():
        assert torch.equal(value, last.head.state_dict()[name]), name
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        FoodDetector.load_head(junk, device="cpu")


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_tags_and_artifacts(e2e, monkeypatch):
    tmp, uri, proc = e2e
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure()
    runs = tracking.search_runs(["e2e"])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["params.train.epochs"] == "2" and row["params.data.image_size"] == "32"
    assert row["params.model.head"] == "fast" and row["params.train.batch_size"] == "2"
    for metric in ("train_loss", "images_per_s", "val_miou", "val_dice", "data_wait_fraction"):
        assert f"metrics.{metric}" in runs.columns and row[f"metrics.{metric}"] == row[f"metrics.{metric}"], metric
    for tag in ("device", "torch_version", "foodlab_commit", "dataset_fingerprint"):
        assert row[f"tags.{tag}"], tag
    assert row["tags.torch_version"] == torch.__version__
    run = tracking.get_run(row["run_id"])
    assert run.info.status == "FINISHED"
    # train loss and images/s per step, val metrics per epoch (8 train images / batch 2 = 4 steps per epoch)
    db = sqlite3.connect(tmp / "mlflow.db")
    steps = {k: n for k, n in db.execute("select key, count(*) from metrics group by key")}
    assert steps["train_loss"] == 8 and steps["images_per_s"] == 8 and steps["val_miou"] == 2
    assert any(k.startswith("system/") for k in steps), "system metrics are logged"
    art = Path(run.info.artifact_uri.replace("file://", ""))
    if not art.is_absolute():
        art = tmp / art
    files = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()}
    assert {"bad_samples.json", "model/model.pt", "logs/training.log",
            "overlays/epoch_001.png", "overlays/epoch_002.png"} <= files, files


def test_unreachable_tracking_server_fails_before_any_work(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FOODLAB_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    proc = run_cli(["train", *TINY, "--epochs", "1", "--out-dir", "runs"], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "cannot reach the MLflow tracking server" in proc.stderr
    assert not (tmp_path / "cache").exists(), "no data work before the tracking check"
    assert not (tmp_path / "runs").exists()
    assert time.perf_counter() - t0 < 60


# ------------------------------------------------------------------ resume after a real kill

SLOW_CLI = """
import sys, time
from foodlab.data import FoodSegDataset
get = FoodSegDataset.__getitem__
FoodSegDataset.__getitem__ = lambda self, i: (time.sleep(0.15), get(self, i))[1]
from foodlab.cli import main
raise SystemExit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights_and_mlflow_run(tmp_path):
    args = [*TINY, "--epochs", "2", "--out-dir", "runs", "--experiment", "resume", "--seed", "3"]
    straight = run_cli(["train", *args, "--run-name", "straight"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    last = tmp_path / "runs" / "killed" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--run-name", "killed"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "epoch 1 checkpoint never appeared"
    time.sleep(0.6)  # into epoch 2 (each batch takes >= 0.3 s here)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "continue with --resume" in out
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch"] < 4, (ckpt["epoch"], ckpt["batch"])  # mid-epoch 2
    run_id = ckpt["run_id"]

    resumed = run_cli(["train", *args, "--run-name", "killed", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    a = load_checkpoint(tmp_path / "runs" / "straight" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s_a["exp_avg"], s_b["exp_avg"])
    assert b["run_id"] == run_id
    tracking.configure()
    runs = tracking.search_runs(["resume"])
    killed = runs[runs["tags.mlflow.runName"] == "killed"]
    assert len(killed) == 1 and killed.iloc[0]["run_id"] == run_id  # the same MLflow run continued
    assert killed.iloc[0]["tags.resumed_from_step"] == str(ckpt["step"])


# ------------------------------------------------------------------ in-process: NaN, stand-ins, units

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
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")  # written after epoch 1, untouched since
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


def test_resumable_sampler_skips_exactly_what_was_consumed():
    ds = list(range(10))
    s = ResumableSampler(ds, Dist(), seed=5)
    s.set_epoch(1)
    order = list(s)
    assert sorted(order) == ds and order != list(range(10))
    s.set_epoch(1, skip=4)
    assert list(s) == order[4:] and len(s) == 6
    s.set_epoch(2)
    assert list(s) != order  # a new order per epoch (seed + epoch)
    halves = [list(ResumableSampler(ds, Dist(rank=r, world_size=2), seed=5)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == ds


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_stop_on_signal_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_flags_map_to_configs():
    from foodlab.cli import build_parser
    from foodlab.train.commands import configs_from_args

    args = build_parser().parse_args(["train", "--no-amp", "--head", "baseline", "--no-lightweight-head",
                                      "--image-size", "64", "--accum-steps", "3", "--channels-last", "--compile",
                                      "--epochs", "4", "--freeze-image-encoder", "--num-classes", "5"])
    data, model, cfg = configs_from_args(args)
    assert cfg.amp is False and cfg.accum_steps == 3 and cfg.channels_last and cfg.compile and cfg.epochs == 4
    assert model.head == "baseline" and not model.use_lightweight_head and model.freeze_image_encoder
    assert data.image_size == 64 == data.synth_size and data.num_classes == model.num_classes == 5
    data, model, cfg = configs_from_args(build_parser().parse_args(["train"]))
    assert cfg == TrainConfig() and model == ModelConfig() and data.cache is None


def test_distill_cli_needs_a_teacher_and_parses_its_options():
    from foodlab.cli import build_parser

    args = build_parser().parse_args(["distill", "--teacher", "random", "--targets", "hard", "--alpha", "0.3",
                                      "--epochs", "1"])
    assert (args.teacher, args.teacher_checkpoint, args.targets, args.alpha, args.epochs) == \
        ("random", None, "hard", 0.3, 1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill"])


def test_overlay_figure_puts_one_column_per_prediction_mode():
    from foodlab.train.metrics import overlay_figure

    images = torch.rand(3, 3, 16, 16)
    target = torch.randint(0, 2, (3, 16, 16))
    single = overlay_figure(images, target, target)
    assert [ax.get_title() for ax in single.axes[:3]] == ["image", "ground truth", "prediction"]
    modes = overlay_figure(images, target, {"lightweight head": target, "SAM2-refined": 1 - target}, max_images=2)
    assert len(modes.axes) == 2 * 4
    assert [ax.get_title() for ax in modes.axes[:4]] == ["image", "ground truth", "lightweight head", "SAM2-refined"]


def test_holdout_is_drawn_over_candidates_so_a_bad_file_moves_nothing(tmp_path):
    from foodlab.data import FoodSegDataset, generate_synthetic
    from foodlab.train.setup import dataset_holdout

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
