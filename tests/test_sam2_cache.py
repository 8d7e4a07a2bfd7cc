"""The on-disk caches of SAM2 outputs: embeddings and teacher logits (tiny SAM2, random weights)."""
from __future__ import annotations

import json

import pytest
import torch

from foodlab.config import ModelConfig
from foodlab.models import sam2_backend
from foodlab.models.sam2_cache import (
    EmbeddingDataset,
    TeacherTargets,
    embed_dataset,
    teacher_logits,
)
from foodlab.train.losses import segmentation_loss

SAM_SIZE = 128


class Data(torch.utils.data.Dataset):
    """Three 64x64 images with one square of food each."""

    fingerprint = "abc"
    num_classes = 1

    def __len__(self):
        return 3

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        mask = torch.zeros(64, 64, dtype=torch.long)
        mask[10 + i:40, 12:44] = 1
        return torch.rand(3, 64, 64, generator=g), mask


def _leftover_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_embedding_cache_is_reused_and_feeds_the_decoder(tmp_path):
    out = embed_dataset(Data(), tmp_path / "emb", batch_size=2, device="cpu", image_size=SAM_SIZE)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["model_type"] == "tiny" and meta["fingerprint"] == "abc"
    assert not _leftover_temp_files(out)
    stamp = (out / "image_embed.npy").stat().st_mtime_ns
    assert embed_dataset(Data(), out, device="cpu", image_size=SAM_SIZE) == out
    assert (out / "image_embed.npy").stat().st_mtime_ns == stamp  # reused, not recomputed

    ds = EmbeddingDataset(out)
    assert len(ds) == 3
    feats, mask = ds[0]
    assert feats["image_embed"].dtype == torch.float16 and feats["image_embed"].shape == (256, 8, 8)
    assert mask.shape == (64, 64) and mask.dtype == torch.long and mask.max() == 1
    feats, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    sam = sam2_backend.build_sam2_model("tiny", device="cpu", image_size=SAM_SIZE)
    decoder = sam2_backend.set_trainable(sam, image_encoder=False, cached_features=True)
    sam.train()
    logits = sam2_backend.decoder_logits(sam, feats, masks, num_classes=1)
    assert logits.shape == (2, 1, 64, 64)
    segmentation_loss(logits, masks).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder)


def test_embeddings_missing_or_incomplete_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="foodlab embed"):
        EmbeddingDataset(tmp_path / "none")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text(json.dumps({"num_images": 3}))
    with pytest.raises(ValueError, match="incomplete"):
        EmbeddingDataset(tmp_path / "half")


@pytest.mark.slow
def test_teacher_logits_cached_once_with_complete_meta(tmp_path):
    cfg = ModelConfig()
    path = teacher_logits(Data(), "random", cfg, tmp_path, torch.device("cpu"), sam2_image_size=SAM_SIZE)
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["complete"] and meta["fingerprint"] == "abc" and meta["teacher"] == "random"
    assert not _leftover_temp_files(path.parent)
    stamp = path.stat().st_mtime_ns
    assert teacher_logits(Data(), "random", cfg, tmp_path, torch.device("cpu"), sam2_image_size=SAM_SIZE) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not recomputed

    targets = TeacherTargets(Data(), path)
    image, mask, logits = targets[1]
    assert len(targets) == 3 and image.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert logits.shape == (1, 64, 64) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        teacher_logits(Data(), str(tmp_path / "nope.pt"), ModelConfig(), tmp_path, torch.device("cpu"))
