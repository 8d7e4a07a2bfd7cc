"""Run folders: one per run, locked while in use, found by --resume, and a damaged last.pt falls back to previous.pt."""
from __future__ import annotations

import logging
import os

import pytest

from foodlab.errors import FoodlabError, UsageError
from foodlab.train.checkpoint import CheckpointDamaged, load_checkpoint
from foodlab.train.run_folder import RunFolder, RunFolderInUse, find_run


def test_new_runs_never_share_a_folder(tmp_path):
    with RunFolder.create(tmp_path, "exp", "r", "0123456789abcdef") as a, RunFolder.create(tmp_path, "exp", "r", None) \
            as b, RunFolder.create(tmp_path, "exp", "r", None) as c:
        assert a.path == tmp_path / "exp" / "r-01234567"
        assert b.path == tmp_path / "exp" / "r" and c.path == tmp_path / "exp" / "r-2"
    with RunFolder.create(tmp_path, "exp", None, "fedcba9876543210") as d:
        assert d.path.parent == tmp_path / "exp" and d.path.name.endswith("-fedcba98")


def test_a_folder_in_use_cannot_be_opened_again_and_the_error_names_folder_and_holder(tmp_path):
    import os

    with RunFolder(tmp_path / "run"):
        with pytest.raises(RunFolderInUse) as err:
            RunFolder(tmp_path / "run")
        assert str(tmp_path / "run") in str(err.value) and f"process {os.getpid()}" in str(err.value)
        assert isinstance(err.value, FoodlabError)
    with RunFolder(tmp_path / "run"):  # released: usable again
        pass


def _run_with_checkpoints(root, experiment, name, steps=(1, 2)):
    with RunFolder.create(root, experiment, name, None) as folder:
        for step in steps:
            folder.save_last({"step": step, "run_id": f"{name}-id"})
    return folder.path


def test_find_run_resolves_latest_folder_and_run_id(tmp_path):
    old = _run_with_checkpoints(tmp_path, "exp", "old")
    new = _run_with_checkpoints(tmp_path, "exp", "new")
    assert find_run(tmp_path, "exp", "latest") == new
    assert find_run(tmp_path, "exp", str(old)) == old
    with RunFolder.create(tmp_path, "exp", "tracked", "abcdef0123456789") as f:
        f.save_last({"step": 1})
    assert find_run(tmp_path, "exp", "abcdef0123456789") == f.path
    with pytest.raises(UsageError, match="nope"):
        find_run(tmp_path, "exp", "nope")
    with pytest.raises(UsageError, match="other"):
        find_run(tmp_path, "other", "latest")


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_last_pt_falls_back_to_the_previous_good_checkpoint_with_a_warning(tmp_path, damage, caplog):
    path = _run_with_checkpoints(tmp_path, "exp", "r", steps=(1, 2, 3))
    data = (path / "last.pt").read_bytes()
    (path / "last.pt").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING), RunFolder(path) as folder:
        ckpt = folder.load_last()
        assert ckpt["step"] == 2
        assert any("last.pt" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
        assert (path / "last.pt.damaged").exists() and not folder.last.exists()
        folder.save_last({"step": 3})  # the damaged file is never rotated over the good one
        assert load_checkpoint(folder.previous)["step"] == 2


def test_a_damaged_last_pt_without_a_previous_one_is_an_error_naming_it(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "last.pt").write_bytes(b"")
    with RunFolder(path) as folder, pytest.raises(CheckpointDamaged, match="last.pt is damaged"):
        folder.load_last()


def test_a_checkpoint_stopped_between_its_two_renames_is_not_lost(tmp_path):
    """save_checkpoint renames last.pt -> previous.pt, then last.pt.new -> last.pt: a kill in between
    leaves the newest checkpoint as last.pt.new, which the resume must use."""
    path = _run_with_checkpoints(tmp_path, "exp", "r", steps=(1, 2, 3))
    os.replace(path / "last.pt", path / "last.pt.new")
    with RunFolder(path) as folder:
        assert folder.load_last()["step"] == 3
        assert folder.last.exists() and not (path / "last.pt.new").exists()
