"""Checkpoints: atomic writes, a kept previous checkpoint, a full disk, damaged files, stop-on-signal."""
from __future__ import annotations

import errno
import os
import signal
import time

import pytest
import torch

from foodlab.errors import FoodlabError
from foodlab.train.checkpoint import CheckpointDamaged, StopOnSignal, load_checkpoint, save_checkpoint


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(FoodlabError, match="last.pt"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_full_disk_is_one_line_naming_the_file_and_the_previous_checkpoint_is_intact(tmp_path, monkeypatch):
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint({"step": 1}, last, previous=previous)
    save_checkpoint({"step": 2}, last, previous=previous)

    def full_disk(obj, f, *a, **k):
        f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(FoodlabError) as err:
        save_checkpoint({"step": 3}, last, previous=previous)
    monkeypatch.undo()
    assert str(err.value) == f"no space left on device while writing {last}; the previous checkpoint is intact"
    assert load_checkpoint(last) == {"step": 2} and load_checkpoint(previous) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_saving_keeps_the_previous_checkpoint(tmp_path):
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    for step in (1, 2, 3):
        save_checkpoint({"step": step}, last, previous=previous)
    assert load_checkpoint(last) == {"step": 3} and load_checkpoint(previous) == {"step": 2}


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_names_the_file_and_says_it_is_damaged(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}, "step": 1}, path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(CheckpointDamaged, match="damaged") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, FoodlabError)


def test_stop_on_signal_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
