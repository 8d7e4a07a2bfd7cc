"""DDP: the resumable sampler, and on CPU torchrun with 2 gloo processes trains, only rank 0 logs to MLflow and
writes checkpoints."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from foodlab import tracking
from foodlab.train.checkpoint import load_checkpoint
from foodlab.train.ddp import Dist, ResumableSampler


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    args = ["--synthetic-n", "12", "--image-size", "32", "--batch-size", "2", "--device", "cpu", "--num-workers", "0",
            "--no-progress", "--epochs", "1", "--accum-steps", "2", "--val-fraction", "0.25", "--out-dir", "runs",
            "--experiment", "ddp", "--run-name", "two"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "foodlab.train", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "backend gloo" in proc.stderr
    tracking.configure()
    runs = tracking.search_runs(["ddp"])
    assert len(runs) == 1  # rank 1 never logged
    assert runs.iloc[0]["tags.world_size"] == "2"
    (folder,) = (tmp_path / "runs" / "ddp").glob("two-*")
    assert folder.name == f"two-{runs.iloc[0]['run_id'][:8]}"
    ckpt = load_checkpoint(folder / "last.pt")
    # 9 train images over 2 ranks -> 5 each (padded), batch 2 -> 2 full batches per rank = 1 step of 2 micro-batches
    assert ckpt["step"] == 1 and ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not list((tmp_path / "runs").glob("**/*.tmp"))

    # every rank continues from the folder rank 0 found and locked, in the same MLflow run
    args[args.index("--epochs") + 1] = "2"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "foodlab.train", *args, "--resume"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["step"] == 2 and ckpt["epoch"] == 2 and len(tracking.search_runs(["ddp"])) == 1


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
