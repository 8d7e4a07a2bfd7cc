"""Settings that cannot work are refused before any work, as one-line UsageErrors naming the flag."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.errors import UsageError
from foodlab.train.settings_check import check_settings, resume_conflicts

BAD = [
    ("train", {"epochs": 0}, "--epochs"),
    ("train", {"batch_size": 0}, "--batch-size"),
    ("train", {"accum_steps": 0}, "--accum-steps"),
    ("train", {"lr": float("nan")}, "--lr"),
    ("train", {"lr": 0.0}, "--lr"),
    ("train", {"lr": -1e-3}, "--lr"),
    ("train", {"num_workers": -1}, "--num-workers"),
    ("train", {"val_fraction": 0.0}, "--val-fraction"),
    ("data", {"image_size": 0}, "--image-size"),
    ("both", {"num_classes": 0}, "--num-classes"),
    ("data", {"root": "no/such/folder"}, "--data"),
]


@pytest.mark.parametrize("section, values, flag", BAD, ids=[f"{b[2]}={list(b[1].values())[0]}" for b in BAD])
def test_bad_settings_are_refused_naming_the_flag(tmp_path, section, values, flag):
    data, model, train = DataConfig(), ModelConfig(), TrainConfig(out_dir=str(tmp_path / "runs"))
    if section in ("data", "both"):
        data = dataclasses.replace(data, **values)
    if section == "both":
        model = dataclasses.replace(model, **values)
    if section == "train":
        train = dataclasses.replace(train, **values)
    with pytest.raises(UsageError, match=flag) as err:
        check_settings(data, model, train)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_out_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="--out-dir"):
        check_settings(DataConfig(), ModelConfig(), TrainConfig(out_dir=str(locked / "runs")))


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="--out-dir"):
        check_settings(DataConfig(), ModelConfig(), TrainConfig(out_dir=str(tmp_path / "file" / "runs")))


def test_train_refuses_before_any_work(tmp_path):
    from foodlab.train.loop import train

    with pytest.raises(UsageError, match="--epochs"):
        train(DataConfig(), ModelConfig(), TrainConfig(epochs=0, out_dir=str(tmp_path / "runs")), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_device_this_machine_lacks_is_a_usage_error(monkeypatch):
    from foodlab.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="--device cuda"):
        resolve_device("cuda")


def test_resume_conflicts_name_each_difference():
    from foodlab.config import as_dict

    def configs(data=None, model=None, train=None):
        return {"data": as_dict(DataConfig(**(data or {}))), "model": as_dict(ModelConfig(**(model or {}))),
                "train": as_dict(TrainConfig(**(train or {})))}

    saved = configs({"image_size": 32}, train={"batch_size": 2, "epochs": 4})
    current = configs({"image_size": 64}, train={"batch_size": 4, "epochs": 2, "num_workers": 3})
    text = " ".join(resume_conflicts(saved, current))
    assert "--image-size 64 (run: 32)" in text and "--batch-size 4 (run: 2)" in text and "--epochs 2" in text
    assert "--lr" not in text and "--head" not in text and "workers" not in text
    assert resume_conflicts(saved, configs({"image_size": 32}, train={"batch_size": 2, "epochs": 9})) == []


def test_resume_refuses_a_change_of_what_trains():
    from foodlab.config import as_dict

    saved = {"data": as_dict(DataConfig()), "model": as_dict(ModelConfig(use_lightweight_head=False)),
             "train": as_dict(TrainConfig())}
    current = {"data": as_dict(DataConfig()),
               "model": as_dict(ModelConfig(use_lightweight_head=False, freeze_image_encoder=True)),
               "train": as_dict(TrainConfig(sam2_cached_embeddings=True))}
    text = " ".join(resume_conflicts(saved, current))
    assert "--freeze-image-encoder" in text and "--sam2-cached-embeddings" in text
