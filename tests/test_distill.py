"""Distillation plumbing: a random SAM2 teacher, cached once, teaches the head; losses behave."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.train.distill import distill, distill_loss, distill_step


def test_soft_targets_prefer_agreeing_with_the_teacher():
    teacher = torch.full((2, 1, 8, 8), 6.0)
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    agree, disagree = torch.full_like(teacher, 6.0), torch.full_like(teacher, -6.0)
    assert distill_loss(agree, teacher, gt) < distill_loss(disagree, teacher, gt)
    assert distill_loss(agree, teacher, gt, targets="hard") < distill_loss(disagree, teacher, gt, targets="hard")
    # alpha mixes in the ground truth (all background here), which disagrees with the teacher
    assert distill_loss(agree, teacher, gt, alpha=1.0) > distill_loss(agree, teacher, gt, alpha=0.0)


def test_multiclass_soft_targets_and_bad_mode():
    teacher = torch.randn(2, 4, 8, 8)
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    assert distill_loss(teacher.clone(), teacher, gt) < distill_loss(-teacher, teacher, gt)
    with pytest.raises(ValueError, match="targets"):
        distill_step("medium")


@pytest.mark.slow
def test_random_teacher_distills_and_reuses_its_cache(tmp_path, monkeypatch, caplog):
    data = DataConfig(synth_n=6, synth_size=32, image_size=32)
    cfg = TrainConfig(epochs=1, batch_size=2, device="cpu", num_workers=0, out_dir=str(tmp_path / "runs"),
                      val_fraction=0.34, experiment="distill")
    kw = dict(teacher="random", teacher_cache=tmp_path / "tcache", teacher_image_size=128, progress=False)
    r = distill(data, ModelConfig(), cfg, targets="soft", alpha=0.5, **kw)
    assert r.steps == 2 and r.last_checkpoint.is_file() and "val_miou" in r.metrics
    caches = list((tmp_path / "tcache").glob("teacher_*"))
    assert len(caches) == 1
    logits = __import__("numpy").load(caches[0] / "logits.npy", mmap_mode="r")
    assert logits.shape == (6, 1, 32, 32) and logits.dtype == "float16"
    assert json.loads((caches[0] / "meta.json").read_text())["complete"]

    import foodlab.models.detector

    real = foodlab.models.detector.FoodDetector

    def student_only(*a, **k):
        assert k.get("use_lightweight_head", True), "the teacher ran again instead of reusing its cache"
        return real(*a, **k)

    monkeypatch.setattr(foodlab.models.detector, "FoodDetector", student_only)
    with caplog.at_level(logging.INFO, logger="foodlab.models.sam2_cache"):
        r2 = distill(data, ModelConfig(), cfg, targets="hard", track=False, max_steps=1, **kw)
    assert r2.steps == 1
    assert "reusing cached teacher logits" in caplog.text
    assert len(list((tmp_path / "tcache").glob("teacher_*"))) == 1


def test_distill_refuses_bad_settings_before_the_teacher_runs(tmp_path):
    from foodlab.errors import UsageError

    cfg = TrainConfig(epochs=0, out_dir=str(tmp_path / "runs"))
    with pytest.raises(UsageError, match="--epochs"):
        distill(DataConfig(), ModelConfig(), cfg, teacher="random", teacher_cache=tmp_path / "tcache")
    assert not (tmp_path / "tcache").exists()
