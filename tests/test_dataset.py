"""FoodSegDataset: outputs, image formats, bad samples and on_bad modes, cache, loader."""
from __future__ import annotations

import os
import pickle
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from foodlab.data.dataset import BadSample, FoodSegDataset
from foodlab.data.loader import default_num_workers, make_loader
from foodlab.data.synth import generate_synthetic
from foodlab.data.validity import DatasetError


@pytest.fixture
def pairs(tmp_path):
    return generate_synthetic(tmp_path / "pairs", 12, size=64, seed=0, classes=4, workers=1, progress=False)


def test_sample_contract(pairs):
    ds = FoodSegDataset(pairs, image_size=32)
    assert len(ds) == 12 and ds.num_classes == 1 and ds.image_size == 32 and ds.split is None
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1} and mask.sum() > 0
    images, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32)


def test_multiclass_ids_and_ignore_index(pairs):
    raw = cv2.imread(str(pairs / "masks" / "000000.png"), cv2.IMREAD_UNCHANGED)
    full = FoodSegDataset(pairs, image_size=64, num_classes=5)[0][1].numpy()
    assert np.array_equal(full, raw)                                  # same size: ids unchanged
    few = FoodSegDataset(pairs, image_size=64, num_classes=2)[0][1].numpy()
    assert np.array_equal(few, np.where(raw >= 2, 255, raw))


def test_binary_keeps_ignore_index(pairs, tmp_path):
    raw = np.zeros((64, 64), np.uint8)
    raw[:16], raw[16:32], raw[32:48] = 3, 255, 200     # food, ignore, food with a large id; rest background
    cv2.imwrite(str(pairs / "masks" / "000002.png"), raw)
    want = np.where(raw == 255, 255, (raw > 0).astype(np.uint8))
    assert np.array_equal(FoodSegDataset(pairs, image_size=64)[2][1].numpy(), want)
    small = FoodSegDataset(pairs, image_size=32)[2][1].numpy()          # nearest-neighbour resize
    assert set(np.unique(small).tolist()) == {0, 1, 255} and (small[8:16] == 255).all()
    cached = FoodSegDataset(pairs, image_size=64, cache=tmp_path / "cache")
    assert np.array_equal(cached[2][1].numpy(), want) and cached.cache.filled() == 1
    assert np.array_equal(cached[2][1].numpy(), want)                   # served from the cache


@pytest.mark.parametrize("num_classes", [1, 5])
def test_all_ignore_mask_is_named_once(pairs, caplog, num_classes):
    cv2.imwrite(str(pairs / "masks" / "000004.png"), np.full((64, 64), 255, np.uint8))
    ds = FoodSegDataset(pairs, image_size=32, num_classes=num_classes)
    with caplog.at_level("WARNING", logger="foodlab.data.dataset"):
        _, mask = ds[4]
        ds[4]
    assert (mask == 255).all()
    named = [r.getMessage() for r in caplog.records if "000004.png" in r.getMessage()]
    assert len(named) == 1 and "adds nothing to the loss" in named[0]


def test_class_ids_beyond_num_classes_warn_once(pairs, caplog):
    raw = [cv2.imread(str(pairs / "masks" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    ds = FoodSegDataset(pairs, image_size=64, num_classes=2)
    with caplog.at_level("WARNING", logger="foodlab.data.dataset"):
        for i in range(len(ds)):
            ds[i]
    warnings = [r.getMessage() for r in caplog.records if "num_classes=2" in r.getMessage()]
    assert len(warnings) == 1
    first = next(m for m in raw if (m >= 2).any())
    ids = sorted(set(first[first >= 2].tolist()))
    assert f"class ids {ids} ({int((first >= 2).sum())} pixels)" in warnings[0]
    with caplog.at_level("WARNING", logger="foodlab.data.dataset"):
        caplog.clear()
        FoodSegDataset(pairs, image_size=64, num_classes=5)[0]   # ids 0..4 all fit: nothing to say
    assert not [r for r in caplog.records if "num_classes" in r.getMessage()]


def test_foodseg103_layout(tmp_path):
    root = generate_synthetic(tmp_path / "fs", 10, size=32, layout="foodseg103", workers=1, progress=False)
    assert len(FoodSegDataset(root, image_size=32)) == 10
    assert len(FoodSegDataset(root, split="test", image_size=32)) == 2


def _write_image_cases(pairs):
    """Replace samples 0..3 with grayscale JPEG, RGBA PNG, 16-bit PNG and an EXIF-rotated JPEG."""
    gray = np.full((64, 64), 128, np.uint8)
    cv2.imwrite(str(pairs / "images" / "000000.jpg"), gray)
    (pairs / "images" / "000001.jpg").unlink()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 30                      # BGRA: red, mostly transparent
    cv2.imwrite(str(pairs / "images" / "000001.png"), rgba)
    (pairs / "images" / "000002.jpg").unlink()
    cv2.imwrite(str(pairs / "images" / "000002.png"), np.full((64, 64, 3), 65535, np.uint16))
    # stored 64 wide x 32 tall, left red / right blue; orientation 6 = rotate 90 deg clockwise to display
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32], stored[:, 32:] = (255, 0, 0), (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(pairs / "images" / "000003.jpg", exif=exif.tobytes(), quality=95)
    cv2.imwrite(str(pairs / "masks" / "000003.png"), np.ones((64, 32), np.uint8))   # matches the displayed size


def test_image_formats_and_exif(pairs):
    _write_image_cases(pairs)
    ds = FoodSegDataset(pairs, image_size=64, on_bad="raise")
    gray, rgba, deep, rotated = (ds[i][0] for i in range(4))
    assert torch.allclose(gray[0], gray[1]) and abs(gray.mean().item() - 128 / 255) < 0.02
    assert rgba[0].mean() > 0.7 and rgba[1:].mean() < 0.05
    assert deep.shape == (3, 64, 64) and deep.min() > 0.99
    # after EXIF rotation the red (left) half is on top
    assert rotated[0, :28].mean() > 0.9 and rotated[2, :28].mean() < 0.1
    assert rotated[2, 36:].mean() > 0.9 and rotated[0, 36:].mean() < 0.1
    assert ds.bad_report()["bad_at_load"] == 0


def _make_load_time_bad(pairs):
    """Files the stat index lets through that only fail when loaded."""
    (pairs / "images" / "000002.jpg").write_text("this is text, not a JPEG")        # not an image
    cv2.imwrite(str(pairs / "masks" / "000005.png"), np.zeros((40, 50), np.uint8))  # wrong size
    (pairs / "masks" / "000007.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")      # corrupt mask


def test_on_bad_resample_records_and_is_deterministic(pairs):
    _make_load_time_bad(pairs)
    ds = FoodSegDataset(pairs, index="stat", image_size=32)
    image, mask = ds[2]
    again = FoodSegDataset(pairs, index="stat", image_size=32)[2]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1])
    assert image.std() > 0                                          # a real sample, not a blank one
    ds[5], ds[7]
    reasons = dict(ds.skipped)
    assert "not an image" in reasons[str(pairs / "images" / "000002.jpg")]
    assert reasons[str(pairs / "masks" / "000005.png")] == "mask size 50x40 != image size 64x64"
    assert "IEND" in reasons[str(pairs / "masks" / "000007.png")]
    report = ds.bad_report()
    assert report["bad_at_load"] == 3 and report["samples"] == 12 and len(report["files"]) == 3


def test_on_bad_dummy_and_raise(pairs):
    _make_load_time_bad(pairs)
    image, mask = FoodSegDataset(pairs, index="stat", image_size=32, on_bad="dummy")[2]
    assert image.shape == (3, 32, 32) and image.abs().sum() == 0 and mask.sum() == 0
    ds = FoodSegDataset(pairs, index="stat", image_size=32, on_bad="raise")
    with pytest.raises(BadSample, match="000002.jpg.*not an image"):
        ds[2]
    with pytest.raises(BadSample, match="000005.png: mask size 50x40 != image size 64x64"):
        ds[5]
    with pytest.raises(ValueError, match="on_bad"):
        FoodSegDataset(pairs, on_bad="ignore")


def _make_cheap_check_bad(pairs):
    jpg = (pairs / "images" / "000001.jpg").read_bytes()
    (pairs / "images" / "000001.jpg").write_bytes(jpg[: len(jpg) // 2])   # truncated (cv2 still decodes it)
    (pairs / "images" / "000004.jpg").write_bytes(b"")                    # zero bytes
    png = (pairs / "masks" / "000008.png").read_bytes()
    (pairs / "masks" / "000008.png").write_bytes(png[:-12])               # IEND chunk cut off
    (pairs / "masks" / "000006.png").unlink()                              # missing mask


def test_bad_files_found_when_loaded_are_skipped_at_index_time_afterwards(pairs):
    _make_cheap_check_bad(pairs)
    ds = FoodSegDataset(pairs, image_size=32)          # first open lists names only: just the missing mask
    assert len(ds) == 11 and [os.path.basename(p) for p, _ in ds.skipped] == ["000006.jpg"]
    for i in range(len(ds)):
        image, _ = ds[i]
        assert image.std() > 0                         # resampled, never a truncated or blank sample
    reasons = {os.path.basename(p): r for p, r in ds.skipped}
    assert "FF D9" in reasons["000001.jpg"] and "empty" in reasons["000004.jpg"]
    assert reasons["000008.png"] == "mask truncated PNG (no IEND chunk)"
    assert ds.bad_report()["bad_at_load"] == 3
    again = FoodSegDataset(pairs, image_size=32, on_bad="raise")   # remembered: skipped before any load
    assert again.index_source == "manifest" and len(again) == 8
    assert {os.path.basename(p) for p, _ in again.skipped} == {"000001.jpg", "000004.jpg", "000006.jpg", "000008.png"}
    assert again.bad_report()["skipped_at_index"] == 4 and again.bad_report()["bad_at_load"] == 0
    assert all(again[i][0].std() > 0 for i in range(len(again)))
    assert again.fingerprint == ds.fingerprint         # same files: same identity and decoded cache


def test_verify_skips_bad_files_at_first_open(pairs):
    _make_cheap_check_bad(pairs)
    ds = FoodSegDataset(pairs, image_size=32, verify=True)
    assert len(ds) == 8 and ds.bad_report()["skipped_at_index"] == 4


def test_file_changed_after_indexing_is_caught_at_load(pairs):
    ds = FoodSegDataset(pairs, image_size=32)
    path = pairs / "images" / "000003.jpg"
    path.write_bytes(path.read_bytes()[:200])          # truncated in place: folder mtime unchanged
    reopened = FoodSegDataset(pairs, image_size=32, on_bad="raise")
    assert reopened.index_source == "manifest"
    with pytest.raises(BadSample, match="000003.jpg"):
        reopened[3]
    ds[3]   # resample mode: recorded, not raised
    assert any("000003.jpg" in p for p, _ in ds.skipped)


def test_all_bad_at_load_fails_loudly(pairs):
    for i in range(12):
        (pairs / "images" / f"{i:06d}.jpg").write_text("not an image")
    for index in ("stat", "manifest"):                 # neither checks at open
        ds = FoodSegDataset(pairs, index=index, image_size=32)
        with pytest.raises(DatasetError, match="bad"):
            ds[0]
    with pytest.raises(DatasetError, match=r"(?s)no valid image/mask pairs.*12 x not an image"):
        FoodSegDataset(pairs, verify=True)
    with pytest.raises(DatasetError, match="no valid image/mask pairs"):
        FoodSegDataset(pairs)                          # what loading found is remembered


def test_mostly_bad_at_load_fails_loudly(pairs):
    for i in range(7):
        (pairs / "images" / f"{i:06d}.jpg").write_bytes(b"")
    ds = FoodSegDataset(pairs, image_size=32)
    with pytest.raises(DatasetError, match=r"(?s)7 of the 12 images seen so far are bad.*empty file"):
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(DatasetError, match="7 of 12 images are bad"):
        FoodSegDataset(pairs, image_size=32, rescan=True)   # remembered: the next open fails at once
    for i in range(1, 7):                                   # fixed: 1 bad of 12 no longer trips anything
        (pairs / "images" / f"{i:06d}.jpg").write_bytes((pairs / "images" / "000007.jpg").read_bytes())
    fixed = FoodSegDataset(pairs, image_size=32, on_bad="dummy", verify=True)
    assert len(fixed) == 11 and all(fixed[i][0].std() > 0 for i in range(len(fixed)))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_mostly_bad_fails_by_the_end_of_the_first_epoch(tmp_path, workers):
    """15 of 24 images truncated, a holdout and drop_last leave samples unloaded, workers load the rest:
    the epoch-end check still sees every worker's loads and fails with the reasons."""
    root = generate_synthetic(tmp_path / "d", 24, size=32, seed=0, classes=3, workers=1, progress=False)
    for i in range(15):
        path = root / "images" / f"{i:06d}.jpg"
        path.write_bytes(path.read_bytes()[:200])
    ds = FoodSegDataset(root, image_size=32, on_bad="dummy")
    loader = make_loader(torch.utils.data.Subset(ds, list(range(2, 22))), batch_size=6, device="cpu",
                         num_workers=workers, drop_last=True, seed=0)
    assert sum(len(images) for images, _ in loader) == 18      # too few loads for loading to judge by itself
    with pytest.raises(DatasetError, match=r"of the 18 images seen so far are bad .*Reasons: 1\d x truncated JPEG"):
        ds.check_bad_fraction()


@pytest.mark.parametrize("strategy", ["decode", "stat", "manifest"])
def test_each_strategy_gives_same_samples(pairs, strategy):
    ds = FoodSegDataset(pairs, index=strategy, image_size=32)
    ref = FoodSegDataset(pairs, index="stat", image_size=32)
    assert list(ds.samples) == list(ref.samples) and ds.fingerprint == ref.fingerprint
    assert torch.equal(ds[5][0], ref[5][0])


def test_augment_flips_image_and_mask_together(pairs):
    plain = FoodSegDataset(pairs, image_size=32)
    aug = FoodSegDataset(pairs, image_size=32, augment=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(10):
        image, mask = aug[1]
        if not torch.equal(image, plain[1][0]):
            assert torch.equal(image, plain[1][0].flip(-1)) and torch.equal(mask, plain[1][1].flip(-1))
            flips += 1
    assert 0 < flips < 10


def test_cache_equivalence(pairs, tmp_path, monkeypatch):
    import foodlab.data.dataset as dataset_mod

    plain = FoodSegDataset(pairs, image_size=32, num_classes=5)
    cached = FoodSegDataset(pairs, image_size=32, num_classes=5, cache=tmp_path / "cache")
    assert cached.cache.filled() == 0
    first = [cached[i] for i in range(len(cached))]
    assert cached.cache.filled() == 12
    with monkeypatch.context() as m:   # cache hits never decode a file
        m.setattr(dataset_mod, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
        for i in range(len(plain)):
            hit = cached[i]
            assert torch.equal(first[i][0], hit[0]) and torch.equal(first[i][1], hit[1])
    for i in range(len(plain)):
        ref = plain[i]
        assert torch.equal(first[i][0], ref[0]) and torch.equal(first[i][1], ref[1])
    # a file rewritten in place (same name, new pixels) is served fresh, not from the stale cache
    img = cv2.imread(str(pairs / "images" / "000000.jpg"))
    time.sleep(0.01)
    cv2.imwrite(str(pairs / "images" / "000000.jpg"), 255 - img)
    fresh = FoodSegDataset(pairs, image_size=32, num_classes=5)[0]
    assert not torch.equal(fresh[0], first[0][0])
    assert torch.equal(cached[0][0], fresh[0])
    (pairs / "images" / "000001.jpg").write_bytes(b"")  # gone bad after it was cached: resampled, not served
    assert not torch.equal(cached[1][0], first[1][0]) and any("000001" in p for p, _ in cached.skipped)
    again = FoodSegDataset(pairs, image_size=32, num_classes=5, cache=tmp_path / "cache", index="stat")
    assert len(again) == 11 and again.fingerprint == cached.fingerprint   # same files: the same cache rows
    assert again.cache.folder == cached.cache.folder and torch.equal(again[2][0], first[3][0])   # index 2 = row 3


def test_dataset_pickles_for_spawn(pairs, tmp_path):
    ds = FoodSegDataset(pairs, image_size=32, cache=tmp_path / "cache")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0][0], ds[0][0]) and clone.cache.filled() == 1


def test_make_loader_defaults(pairs):
    ds = FoodSegDataset(pairs, image_size=32)
    loader = make_loader(ds, batch_size=4, device="cpu", num_workers=0)
    assert loader.pin_memory is False and loader.persistent_workers is False
    loader = make_loader(ds, batch_size=4, device="cpu", num_workers=2)
    assert loader.pin_memory is False and loader.persistent_workers is True and loader.worker_init_fn is not None
    pickle.dumps(loader.worker_init_fn)
    assert 0 <= default_num_workers("cpu") <= max(0, (os.cpu_count() or 1) - 1)


@pytest.mark.slow
def test_loader_with_workers_reports_bad_files_from_workers(pairs, tmp_path):
    _make_load_time_bad(pairs)
    ds = FoodSegDataset(pairs, image_size=32, cache=tmp_path / "cache")
    loader = make_loader(ds, batch_size=4, device="cpu", num_workers=2, shuffle=True, seed=1)
    batches = [b for b in loader]
    assert len(batches) == 3 and batches[0][0].shape == (4, 3, 32, 32)
    order_a = torch.cat([m.flatten(1).sum(1) for _, m in batches])
    order_b = torch.cat([m.flatten(1).sum(1) for _, m in make_loader(ds, 4, "cpu", num_workers=0, seed=1)])
    assert torch.equal(order_a, order_b)                # same seed, same order with or without workers
    report = ds.bad_report()
    assert report["bad_at_load"] == 3, report           # found inside workers, visible here
    assert ds.cache.filled() == 9                       # workers filled the shared cache
    assert len(FoodSegDataset(pairs, image_size=32)) == 9   # and remembered: skipped at the next open

