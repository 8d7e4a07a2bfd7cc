"""SAM2 backend and the SAM2 paths of FoodDetector (tiny model, small inputs, random weights)."""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import textwrap
import types

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foodlab.models import sam2_backend
from foodlab.models.detector import FoodDetector
from foodlab.models.prompts import prompts_for_batch
from foodlab.models.sam2_cache import EmbeddingDataset
from foodlab.train.losses import segmentation_loss

SAM_SIZE = 128  # SAM2 input size override: same architecture, ~60x less compute than 1024


@pytest.fixture(scope="module")
def tiny_sam():
    return sam2_backend.build_sam2_model("tiny", device="cpu", image_size=SAM_SIZE)


def _gt(b=2, size=64, num_classes=1):
    masks = torch.zeros(b, size, size, dtype=torch.long)
    masks[0, 8:30, 10:40] = 1
    masks[0, 40:60, 40:60] = 2 if num_classes > 2 else 1
    if b > 1:
        masks[1, 20:50, 20:50] = 1
    return masks


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown SAM2 model type"):
        sam2_backend.build_sam2_model("giant")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SAM2 checkpoint not found"):
        sam2_backend.build_sam2_model("tiny", checkpoint=tmp_path / "nope.pt", image_size=SAM_SIZE)


def test_wrong_checkpoint_names_the_model_type(tmp_path, tiny_sam):
    path = tmp_path / "wrong_keys.pt"
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match="'small'"):
        sam2_backend.load_sam2_checkpoint(tiny_sam, path, "small")
    sd = {k: v.clone() for k, v in tiny_sam.state_dict().items()}
    sd["no_mem_embed"] = torch.zeros(1, 1, 7)  # right keys, wrong shape
    torch.save(sd, tmp_path / "wrong_shape.pt")
    with pytest.raises(ValueError, match="'tiny'"):
        sam2_backend.load_sam2_checkpoint(tiny_sam, tmp_path / "wrong_shape.pt", "tiny")


@pytest.mark.slow
def test_checkpoint_loads_wrapped_and_raw(tmp_path, tiny_sam):
    sd = {k: v.clone() + 1 if v.is_floating_point() else v.clone() for k, v in tiny_sam.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "wrapped.pt")
    model = sam2_backend.build_sam2_model("tiny", checkpoint=tmp_path / "wrapped.pt", image_size=SAM_SIZE)
    torch.testing.assert_close(model.no_mem_embed, sd["no_mem_embed"])
    torch.save(sd, tmp_path / "raw.pt")
    sam2_backend.load_sam2_checkpoint(model, tmp_path / "raw.pt", "tiny")


def test_random_weights_warning_once(monkeypatch, caplog):
    monkeypatch.setattr(sam2_backend, "_warned_random", False)
    with caplog.at_level(logging.WARNING, logger="foodlab.models.sam2_backend"):
        sam2_backend.build_sam2_model("tiny", image_size=SAM_SIZE)
        sam2_backend.build_sam2_model("tiny", image_size=SAM_SIZE)
    warnings = [r for r in caplog.records if "random weights" in r.getMessage()]
    assert len(warnings) == 1 and "meaningless for quality" in warnings[0].getMessage()


def test_encode_shapes(tiny_sam):
    with torch.no_grad():
        feats = sam2_backend.encode(tiny_sam, torch.rand(2, 3, 64, 64))
    assert feats["image_embed"].shape == (2, 256, SAM_SIZE // 16, SAM_SIZE // 16)
    assert [tuple(f.shape) for f in feats["high_res_feats"]] == [(2, 32, SAM_SIZE // 4, SAM_SIZE // 4),
                                                                 (2, 64, SAM_SIZE // 8, SAM_SIZE // 8)]


@pytest.mark.slow
@pytest.mark.parametrize("num_classes, freeze", [(1, True), (3, False)])
def test_sam2_training_path(num_classes, freeze):
    model = FoodDetector(use_lightweight_head=False, num_classes=num_classes, device="cpu",
                         freeze_image_encoder=freeze, sam2_image_size=SAM_SIZE)
    model.train()
    images, masks = torch.rand(2, 3, 64, 64), _gt(num_classes=num_classes)
    logits = model(images, masks=masks)
    assert logits.shape == (2, num_classes, 64, 64) and logits.dtype == torch.float32
    segmentation_loss(logits, masks).backward()
    sam = model.sam
    encoder_grads = [p.grad is not None for p in sam.image_encoder.parameters()]
    assert any(encoder_grads) != freeze
    assert all(p.grad is None for p in sam.image_encoder.parameters()) == freeze
    assert any(p.grad is not None for p in sam.sam_mask_decoder.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in sam.sam_mask_decoder.parameters()} <= trainable
    assert not trainable & {id(p) for p in model.head.parameters()}
    assert not trainable & {id(p) for p in sam.memory_attention.parameters()}
    assert bool(trainable & {id(p) for p in sam.image_encoder.parameters()}) != freeze
    with pytest.raises(ValueError, match="masks"):
        model(images)


@pytest.mark.slow
@pytest.mark.parametrize("num_classes, head_trained", [(1, False), (3, True)])
def test_sam2_inference_returns_masks_of_input_size(num_classes, head_trained):
    model = FoodDetector(num_classes=num_classes, device="cpu", sam2_image_size=SAM_SIZE)
    model.head_trained = head_trained
    out = model.predict(torch.rand(2, 3, 48, 80), mode="sam2")
    assert out["masks"].shape == (2, 48, 80) and out["masks"].dtype == torch.long
    assert out["masks"].min() >= 0 and out["masks"].max() < max(num_classes, 2)
    assert out["scores"].shape == (2,) and torch.isfinite(out["scores"]).all()
    assert model.sam_built and not any(p.requires_grad for p in model.sam.parameters())
    assert not model.sam.training


@pytest.mark.slow
def test_full_sam2_paths_never_import_torchvision():
    code = textwrap.dedent("""
        import sys, torch
        from foodlab.models.detector import FoodDetector
        images = torch.rand(1, 3, 64, 64)
        masks = torch.zeros(1, 64, 64, dtype=torch.long); masks[0, 10:40, 10:40] = 1
        train = FoodDetector(use_lightweight_head=False, device="cpu", sam2_image_size=128)
        train.train()
        train(images, masks=masks).mean().backward()
        infer = FoodDetector(device="cpu", sam2_image_size=128)
        infer.head_trained = True
        assert infer.predict(images, mode="sam2")["masks"].shape == (1, 64, 64)
        assert "sam2" in sys.modules
        assert "torchvision" not in sys.modules, "torchvision was imported"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_embed_command(tmp_path):
    from foodlab.data.synth import generate_synthetic
    from foodlab.models.commands import add_commands

    data = generate_synthetic(tmp_path / "data", n=2, size=64, workers=1)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed", "--data", str(data), "--out", str(tmp_path / "emb"), "--image-size", "64",
                              "--device", "cpu", "--sam2-image-size", "128"])
    assert args.func(args) == 0
    ds = EmbeddingDataset(tmp_path / "emb")
    feats, mask = ds[1]
    assert len(ds) == 2 and feats["high_res_feats"][0].shape == (32, 32, 32) and mask.shape == (64, 64)
    assert set(mask.unique().tolist()) <= {0, 1}


# ---------------------------------------------------------------- against SAM2's own predictor
# SAM2ImagePredictor imports torchvision only for three transforms, and torchvision cannot load next to the
# CPU torch wheel. These stand-ins do what torchvision does on a float tensor (ToTensor: HWC uint8 -> CHW
# /255; Resize((s, s)): bilinear, align_corners=False, antialias=True; Normalize); everything else is
# SAM2's own code. Module level: torch.jit.script needs their source.


class _ToTensor:
    def __call__(self, img):
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255)


class _Resize(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                             antialias=True).squeeze(0)


class _Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@pytest.fixture
def sam2_predictor(monkeypatch, tiny_sam):
    """SAM2's real ``SAM2ImagePredictor`` on ``tiny_sam``, with torchvision's transforms stood in."""
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Resize, transforms.Normalize = _ToTensor, _Resize, _Normalize
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(tiny_sam)
    predictor._bb_feat_sizes = [(SAM_SIZE // 4,) * 2, (SAM_SIZE // 8,) * 2, (SAM_SIZE // 16,) * 2]  # it assumes 1024
    yield predictor
    for name in set(sys.modules) - before:  # the stand-ins must not leak into other tests
        if name.startswith(("sam2.sam2_image_predictor", "sam2.utils.transforms")):
            del sys.modules[name]


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img + rng.integers(0, 40, img.shape, dtype=np.uint8))  # fine detail: aliasing shows


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SAM2Transforms calls torch.jit.script
def test_photo_logits_match_sam2_predictor(tiny_sam, sam2_predictor):
    """Full-resolution photos (one shrunk, one enlarged to SAM2's input), head masks at another size, a
    box + points prompt and a box-only one in the same batch: foodlab's batched path gives SAM2's logits."""
    photos = [_photo(150, 200, 0), _photo(90, 110, 1)]
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, 8:30, 10:40] = 1
    masks[0, 40:60, 44:60] = 1
    masks[0, 50, 2] = 1  # a crumb: left out of the prompt
    # image 1: empty head mask -> a box-only prompt
    frames = [p.shape[:2] for p in photos]
    tensors = [torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in photos]
    with torch.no_grad():
        logits, scores = sam2_backend.photo_logits(tiny_sam, tensors, masks, rng=np.random.default_rng(0))
    prompts = prompts_for_batch(masks, 1, image_size=SAM_SIZE, rng=np.random.default_rng(0), frames=frames)
    assert prompts["image_index"].tolist() == [0, 1]
    for i, (photo, (h, w)) in enumerate(zip(photos, frames)):
        coords = prompts["coords"][i].numpy() / SAM_SIZE * np.array([w, h])  # back to the photo's frame
        labels = prompts["labels"][i].numpy()
        real = labels[2:] != -1
        sam2_predictor.set_image(photo)
        ref, ref_iou, _ = sam2_predictor.predict(
            point_coords=coords[2:][real] if real.any() else None,
            point_labels=labels[2:][real] if real.any() else None,
            box=coords[:2].reshape(4), multimask_output=False, return_logits=True)
        assert logits[i].shape == (1, h, w)
        np.testing.assert_allclose(logits[i][0].numpy(), ref[0], atol=1e-3, rtol=1e-3)
        assert float(scores[i]) == pytest.approx(float(ref_iou[0]), abs=1e-4)
    assert real.sum() == 0  # the second prompt was box-only


def test_decode_of_a_prompt_does_not_depend_on_the_point_counts_of_its_batch(tiny_sam):
    """Prompts with 2 (box only), 4 and 5 points decoded together give what each gives alone: no padding
    point from a longer prompt reaches a shorter one."""
    masks = torch.zeros(3, 64, 64, dtype=torch.long)
    masks[1, 10:12, 10:11] = 1  # two pixels: a box and two points, padded to the batch's width
    masks[2, 8:40, 10:50] = 1
    with torch.no_grad():
        feats = sam2_backend.encode(tiny_sam, torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        prompts = prompts_for_batch(masks, 1, image_size=SAM_SIZE, rng=np.random.default_rng(0))
        assert sorted((prompts["labels"] != -1).sum(1).tolist()) == [2, 4, 5]  # a full box: no negative point
        together, iou = sam2_backend.decode(tiny_sam, feats, prompts)
        for i in range(3):
            one = {k: v[i:i + 1] for k, v in prompts.items()}
            one["coords"], one["labels"] = one["coords"][:, :int((one["labels"] != -1).sum())], \
                one["labels"][:, :int((one["labels"] != -1).sum())]
            alone, alone_iou = sam2_backend.decode(tiny_sam, feats, one)
            torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[i:i + 1], alone_iou, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_photo_masks_are_the_thresholded_photo_logits(tiny_sam, num_classes):
    from foodlab.labels import class_ids

    photos = [torch.rand(3, 90, 70, generator=torch.Generator().manual_seed(1)), torch.rand(3, 40, 50)]
    masks = _gt(2, size=32, num_classes=3)
    masks[1, 2:8, 2:8] = 3
    with torch.no_grad():
        logits, scores = sam2_backend.photo_logits(tiny_sam, photos, masks, num_classes)
        ids, scores_again = sam2_backend.photo_masks(tiny_sam, photos, masks, num_classes)
    torch.testing.assert_close(scores, scores_again)
    for lg, m, p in zip(logits, ids, photos):
        assert lg.shape == (num_classes, *p.shape[-2:]) and m.shape == p.shape[-2:] and m.dtype == torch.long
        torch.testing.assert_close(m, class_ids(lg[None])[0], atol=0, rtol=0)
