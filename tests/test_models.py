"""Lightweight heads, the head-on FoodDetector path (no SAM2), head checkpoints, and SAM2 prompt extraction."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from foodlab.models.detector import FoodDetector
from foodlab.models.lightweight import build_head
from foodlab.models.prompts import (
    NEG_LOGIT,
    assemble_logits,
    prompts_for_batch,
    prompts_from_mask,
)
from foodlab.train.losses import segmentation_loss

# ------------------------------------------------------------------ heads

@pytest.mark.parametrize("name", ["fast", "baseline"])
@pytest.mark.parametrize("num_classes", [1, 5])
@pytest.mark.parametrize("size", [(64, 64), (72, 96), (50, 70)])
def test_head_logits_at_input_resolution(name, num_classes, size):
    head = build_head(name, num_classes)
    out = head(torch.rand(2, 3, *size))
    assert out.shape == (2, num_classes, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["fast", "baseline"])
def test_head_runs_channels_last_under_bf16_autocast(name):
    head = build_head(name, 3).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.shape == (2, 3, 64, 64)
    loss = segmentation_loss(out, torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_baseline_head_is_the_original_architecture():
    head = build_head("baseline", 4)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in head.encoder if isinstance(m, nn.Conv2d)]
    assert convs == [(3, 64, (3, 3)), (64, 128, (3, 3)), (128, 256, (3, 3))]
    assert [type(m) for m in head.encoder][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    ups = [(m.in_channels, m.out_channels, m.stride) for m in head.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert ups == [(256, 128, (2, 2)), (128, 64, (2, 2)), (64, 32, (2, 2))]
    last = head.decoder[-1]
    assert isinstance(last, nn.Conv2d) and (last.in_channels, last.out_channels, last.kernel_size) == (32, 4, (1, 1))


def test_fast_head_is_much_smaller_than_baseline():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_head("fast", 1)) < count(build_head("baseline", 1)) / 2


def test_unknown_head_is_an_error():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("huge", 1)


@pytest.fixture
def one_thread():
    """Many tiny ops: one thread avoids OpenMP stalls when the CPU is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fast_head_learns(one_thread):
    torch.manual_seed(0)
    from foodlab.bench.timing import synthetic_batch

    images, masks = synthetic_batch(2, 64, num_classes=1, seed=1)
    head = build_head("fast", 1)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = segmentation_loss(head(images), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


# ------------------------------------------------------------------ detector, head on

def test_importing_models_does_not_import_sam2():
    code = "import sys, foodlab.models; assert 'sam2' not in sys.modules and 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_head_on_training_never_builds_sam2(num_classes):
    model = FoodDetector(num_classes=num_classes, device="cpu")
    model.train()
    assert model.device == torch.device("cpu")
    logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, num_classes, 64, 64)
    ids = torch.randint(0, num_classes + 1 if num_classes == 1 else num_classes, (2, 64, 64))
    segmentation_loss(logits, ids).backward()
    params = model.trainable_parameters()
    assert params and {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert all(p.grad is not None for p in params)
    assert not model.sam_built
    assert not model.head_trained  # a forward is not training: the trainer (or a loaded file) marks the head


@pytest.mark.parametrize("num_classes", [1, 4])
def test_predict_lightweight(num_classes):
    model = FoodDetector(num_classes=num_classes, head="baseline", device="cpu")
    out = model.predict(torch.rand(3, 3, 40, 48), mode="lightweight")
    assert out["masks"].shape == (3, 40, 48) and out["masks"].dtype == torch.long
    assert out["masks"].min() >= 0 and out["masks"].max() < max(num_classes, 2)
    assert out["scores"].shape == (3,) and out["scores"].dtype == torch.float32
    assert not model.sam_built
    with pytest.raises(ValueError, match="mode"):
        model.predict(torch.rand(1, 3, 32, 32), mode="magic")


def test_head_checkpoint_round_trip(tmp_path):
    model = FoodDetector(head="fast", num_classes=3, device="cpu")
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    path = model.save_head(tmp_path / "h" / "head.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["head"] == "fast" and ckpt["num_classes"] == 3

    loaded = FoodDetector.from_head_file(path, device="cpu")  # builds a matching detector
    loaded.eval()
    assert loaded.head_name == "fast" and loaded.num_classes == 3 and loaded.head_trained
    torch.testing.assert_close(loaded(x), model(x))

    other = FoodDetector(head="fast", num_classes=3, device="cpu")
    assert not other.head_trained
    other.load_head(path)  # loads in place
    other.eval()
    torch.testing.assert_close(other(x), model(x))

    with pytest.raises(ValueError, match="baseline"):
        FoodDetector(head="baseline", num_classes=3, device="cpu").load_head(path)
    with pytest.raises(FileNotFoundError):
        FoodDetector.from_head_file(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a foodlab head"):
        FoodDetector.from_head_file(tmp_path / "bad.pt")


# ------------------------------------------------------------------ prompts

def test_prompts_from_empty_mask_is_whole_image_box():
    p = prompts_from_mask(np.zeros((30, 40), bool))
    np.testing.assert_array_equal(p["boxes"], [[0, 0, 39, 29]])
    assert p["points"].shape == (1, 4, 2)
    assert (p["labels"] == -1).all()


def _blobs():
    m = np.zeros((100, 100), bool)
    m[10:40, 10:50] = True      # 1200 px
    m[60:80, 60:90] = True      # 600 px
    m[85:95, 5:15] = True       # 100 px
    m[2, 97] = True             # 1 px crumb
    return m


def test_prompts_one_per_component_largest_first():
    m = _blobs()
    p = prompts_from_mask(m, max_prompts=2, num_pos=2, num_neg=1, min_area=4, per_component=True)
    np.testing.assert_array_equal(p["boxes"], [[10, 10, 49, 39], [60, 60, 89, 79]])
    assert p["points"].shape == (2, 3, 2) and p["labels"].shape == (2, 3)
    for box, pts, labels in zip(p["boxes"], p["points"], p["labels"]):
        for (x, y), lab in zip(pts.astype(int), labels):
            if lab == 1:
                assert m[y, x] and box[0] <= x <= box[2] and box[1] <= y <= box[3]
            elif lab == 0:
                assert not m[y, x]
    # the first positive point is the most interior pixel of the component
    x, y = p["points"][0, 0]
    assert 20 <= x <= 40 and 20 <= y <= 30

    all_p = prompts_from_mask(m, max_prompts=10, min_area=4, per_component=True)
    assert len(all_p["boxes"]) == 3  # the 1-pixel crumb is dropped


def test_prompts_tiny_only_component_is_kept():
    m = np.zeros((100, 100), bool)
    m[50, 50] = True
    p = prompts_from_mask(m, num_pos=2, num_neg=1, per_component=True)
    np.testing.assert_array_equal(p["boxes"], [[50, 50, 50, 50]])
    np.testing.assert_array_equal(p["points"][0, 0], [50, 50])
    assert list(p["labels"][0]) == [1, -1, -1]  # one pixel: one positive, no room for more, no negatives in box


def test_prompts_single_box_over_all_components_by_default():
    m = _blobs()
    p = prompts_from_mask(m, min_area=4)
    np.testing.assert_array_equal(p["boxes"], [[5, 10, 89, 94]])  # the crumb at (97, 2) is left out
    assert list(p["labels"][0]) == [1, 1, 1, 0]
    # one positive point at the interior of each of the three items, largest first
    (x0, y0), (x1, y1), (x2, y2) = p["points"][0, :3].astype(int)
    assert 10 <= x0 < 50 and 10 <= y0 < 40 and 60 <= x1 < 90 and 60 <= y1 < 80 and 5 <= x2 < 15 and 85 <= y2 < 95
    x, y = p["points"][0, 3].astype(int)
    assert not m[y, x]


def test_prompts_are_seeded():
    a = prompts_from_mask(_blobs(), num_pos=4, rng=np.random.default_rng(3))
    b = prompts_from_mask(_blobs(), num_pos=4, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a["points"], b["points"])


def test_prompts_for_batch_binary_and_multiclass():
    masks = torch.zeros(3, 50, 100, dtype=torch.long)
    masks[0, 5:20, 10:30] = 1
    masks[0, 30:45, 60:90] = 2
    masks[1, 0:10, 0:10] = 255  # ignored only
    masks[2, 10:40, 10:40] = 7  # >= num_classes: not a class
    one = prompts_for_batch(masks, num_classes=1, image_size=200)  # default: one prompt per image
    assert one["image_index"].tolist() == [0, 1, 2] and one["class_index"].tolist() == [0, 0, 0]
    np.testing.assert_allclose(one["coords"][0, :2].numpy(), [[10 * 2, 5 * 4], [89 * 2, 44 * 4]])
    p = prompts_for_batch(masks, num_classes=1, image_size=200, per_component=True, num_pos=2)
    assert p["image_index"].tolist() == [0, 0, 1, 2] and p["class_index"].tolist() == [0, 0, 0, 0]
    assert p["coords"].shape == (4, 5, 2) and p["labels"][:, :2].tolist() == [[2, 3]] * 4
    # scaled to the 200 x 200 SAM2 input: x * 2, y * 4; image 1 is empty -> whole image
    np.testing.assert_allclose(p["coords"][2, :2].numpy(), [[0, 0], [99 * 2, 49 * 4]])
    # largest component first: the 15 x 30 item, then the 15 x 20 one
    np.testing.assert_allclose(p["coords"][0, :2].numpy(), [[60 * 2, 30 * 4], [89 * 2, 44 * 4]])
    np.testing.assert_allclose(p["coords"][1, :2].numpy(), [[10 * 2, 5 * 4], [29 * 2, 19 * 4]])

    q = prompts_for_batch(masks, num_classes=3, image_size=200)
    assert q["image_index"].tolist() == [0, 0, 1, 2]
    assert q["class_index"].tolist() == [1, 2, -1, -1]


def test_assemble_logits_binary_and_multiclass():
    low = torch.tensor([1.0, 3.0, -2.0, 5.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone().requires_grad_()
    prompts = {"image_index": torch.tensor([0, 0, 1, 2]), "class_index": torch.tensor([0, 0, 0, 0])}
    out = assemble_logits(low, prompts, 3, 1)
    assert out.shape == (3, 1, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [3.0, -2.0, 5.0]

    prompts = {"image_index": torch.tensor([0, 0, 1, 2]), "class_index": torch.tensor([1, 3, -1, 2])}
    out = assemble_logits(low, prompts, 3, 4)
    assert out.shape == (3, 4, 2, 2)
    assert out[0, :, 0, 0].tolist() == [-3.0, 1.0, NEG_LOGIT, 3.0]
    assert out[1, :, 0, 0].tolist() == [2.0, NEG_LOGIT, NEG_LOGIT, NEG_LOGIT]
    assert out[2, :, 0, 0].tolist() == [-5.0, NEG_LOGIT, 5.0, NEG_LOGIT]
    (out * torch.arange(1.0, out.numel() + 1).view_as(out)).sum().backward()
    assert (low.grad != 0).all()  # every prompt's logit reaches the output
