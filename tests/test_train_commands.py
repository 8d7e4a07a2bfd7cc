"""`foodlab train` / `foodlab distill` from the command line: end to end with its MLflow run, resume after a
real kill, a dead tracking server, and how flags map to configs.

Everything runs on the synthetic dataset at 32 px so a 2-core CPU gets through it quickly.
conftest gives every test its own MLFLOW_TRACKING_URI and a session-wide FOODLAB_CACHE;
subprocesses inherit both.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from loopback import free_port

from foodlab import tracking
from foodlab.config import ModelConfig, TrainConfig
from foodlab.train.checkpoint import load_checkpoint

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


def run_folder(root: Path, experiment: str, run_name: str) -> Path:
    (folder,) = (root / "runs" / experiment).glob(f"{run_name}-*")
    return folder


@pytest.mark.slow
def test_cli_trains_checkpoints_and_logs(e2e):
    tmp, _, proc = e2e
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Using device: CPU" in out
    assert "epoch 2/2:" in out and "val mIoU" in out
    folder = run_folder(tmp, "e2e", "r1")
    for name in ("last.pt", "previous.pt", "best.pt", "model.pt", "training.log"):
        assert (folder / name).is_file(), name
    log_text = (folder / "training.log").read_text()
    assert "Using device:" in log_text and "epoch 1/2:" in log_text
    assert not (tmp / "logs").exists()  # no shared log growing across runs
    ckpt = load_checkpoint(folder / "last.pt")
    assert folder.name == f"r1-{ckpt['run_id'][:8]}"
    assert load_checkpoint(folder / "previous.pt")["epoch"] == 1
    assert (ckpt["epoch"], ckpt["batch"]) == (2, 0)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "run_id"} <= set(ckpt)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_training_checkpoints_are_what_predict_accepts(e2e):
    """`foodlab predict --weights` takes best.pt/last.pt as printed by train, not only model.pt."""
    from foodlab.models.detector import FoodDetector

    tmp, _, proc = e2e
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_folder(tmp, "e2e", "r1")
    best = folder / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # shareable: no code in the pickle
    det = FoodDetector.from_head_file(best, device="cpu")
    assert det.head_trained and det.head_name == ckpt["configs"]["model"]["head"]
    for name, value in det.head.state_dict().items():
        assert torch.equal(value, ckpt["model"][f"head.{name}"]), name
    final = FoodDetector.from_head_file(folder / "model.pt", device="cpu")
    last = FoodDetector.from_head_file(folder / "last.pt", device="cpu")
    for name, value in final.head.state_dict().items():
        assert torch.equal(value, last.head.state_dict()[name]), name
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        FoodDetector.from_head_file(junk, device="cpu")


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
    # train loss and images/s per step, val metrics per epoch (train images // batch 2 steps per epoch:
    # the holdout hashes file paths, so the train count is close to, not exactly, 90% of the images)
    per_epoch = int(row["params.run.train_images"]) // 2
    db = sqlite3.connect(tmp / "mlflow.db")
    steps = {k: n for k, n in db.execute("select key, count(*) from metrics group by key")}
    assert steps["train_loss"] == 2 * per_epoch and steps["images_per_s"] == 2 * per_epoch and steps["val_miou"] == 2
    assert any(k.startswith("system/") for k in steps), "system metrics are logged"
    art = Path(run.info.artifact_uri.replace("file://", ""))
    if not art.is_absolute():
        art = tmp / art
    files = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()}
    assert {"bad_samples.json", "weights/model.pt", "checkpoints/best.pt", "logs/training.log",
            "overlays/epoch_001.png", "overlays/epoch_002.png"} <= files, files
    assert "epoch 2/2:" in (art / "logs" / "training.log").read_text()


def test_unreachable_tracking_server_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")   # nobody listens there
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
from foodlab.data.dataset import FoodSegDataset
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

    from foodlab.train.run_folder import RunFolder, RunFolderInUse, find_run

    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--run-name", "killed"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not list((tmp_path / "runs" / "resume").glob("killed-*/last.pt")) and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    (last,) = (tmp_path / "runs" / "resume").glob("killed-*/last.pt")
    t0 = time.monotonic()
    with pytest.raises(RunFolderInUse, match=f"in use by process {proc.pid}"):  # a running run is refused
        RunFolder(find_run(tmp_path / "runs", "resume", "latest"))
    time.sleep(max(0.0, 0.6 - (time.monotonic() - t0)))  # into epoch 2 (each batch takes >= 0.3 s here)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert f"--resume {last.parent.relative_to(tmp_path)}" in out
    ckpt = load_checkpoint(last)
    per_epoch = ckpt["history"][0]["step"]                               # optimizer steps in epoch 1
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch"] < per_epoch, (ckpt["epoch"], ckpt["batch"])  # mid-epoch 2
    run_id = ckpt["run_id"]
    tracking.configure()
    assert tracking.get_run(run_id).info.status == "KILLED"

    resumed = run_cli(["train", *args, "--resume"], tmp_path)  # the experiment's latest run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at" in resumed.stderr

    a = load_checkpoint(next((tmp_path / "runs" / "resume").glob("straight-*/last.pt")))
    b = load_checkpoint(last)
    assert a["step"] == b["step"] == 2 * per_epoch
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s_a["exp_avg"], s_b["exp_avg"])
    assert b["run_id"] == run_id
    runs = tracking.search_runs(["resume"])
    killed = runs[runs["tags.mlflow.runName"] == "killed"]
    assert len(killed) == 1 and killed.iloc[0]["run_id"] == run_id  # the same MLflow run continued
    assert killed.iloc[0]["tags.resumed_from_step"] == str(ckpt["step"])
    assert tracking.get_run(run_id).info.status == "FINISHED"


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


def test_config_file_gives_defaults_and_flags_override(tmp_path):
    from foodlab.cli import build_parser
    from foodlab.train.commands import configs_from_args

    path = tmp_path / "run.yaml"
    path.write_text("data:\n  image_size: 64\nmodel:\n  head: baseline\ntrain:\n  epochs: 7\n  lr: 0.01\n")
    data, model, cfg = configs_from_args(build_parser().parse_args(["train", "--config", str(path), "--epochs", "2"]))
    assert cfg.epochs == 2 and cfg.lr == 0.01 and model.head == "baseline" and data.image_size == 64
    assert cfg.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("text, named", [("train:\n  epocs: 3\n", "epocs"), ("train:\n  epochs: three\n", "epochs"),
                                         ("trian:\n  epochs: 3\n", "trian")])
def test_config_file_with_an_unknown_key_or_a_wrong_type_is_a_usage_error_naming_file_and_key(tmp_path, text, named):
    from foodlab.cli import build_parser
    from foodlab.errors import UsageError
    from foodlab.train.commands import configs_from_args

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        configs_from_args(build_parser().parse_args(["train", "--config", str(path)]))
    assert "bad.yaml" in str(err.value) and named in str(err.value) and "\n" not in str(err.value)


def test_train_help_documents_config_and_resume():
    proc = subprocess.run([sys.executable, "-m", "foodlab", "train", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert "--config FILE" in proc.stdout and "--resume [RUN]" in proc.stdout


@pytest.mark.slow
def test_train_register_promote_and_predict_by_alias(tmp_path):
    """The chain a user runs after comparing runs: train --register, models promote, predict --model."""
    import cv2
    import numpy as np

    trained = run_cli(["train", *TINY, "--epochs", "1", "--experiment", "reg", "--register", "food"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    tracking.configure()
    (version,) = tracking.model_versions("food")
    (run_row,) = tracking.search_runs(["reg"]).to_dict("records")
    assert version["run_id"] == run_row["run_id"]

    promoted = run_cli(["models", "promote", "food"], tmp_path)
    assert promoted.returncode == 0 and "champion" in promoted.stdout, promoted.stderr[-3000:]
    cv2.imwrite(str(tmp_path / "dish.jpg"), np.full((40, 60, 3), 150, np.uint8))
    predicted = run_cli(["predict", "dish.jpg", "--model", "models:/food@champion", "--mode", "lightweight",
                         "--out", "out", "--num-workers", "0"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mask = cv2.imread(str(tmp_path / "out" / "dish_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (40, 60)
