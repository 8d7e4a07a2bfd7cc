"""foodlab predict: masks at each photo's size, every input accounted for, outputs never lost or faked."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from foodlab.errors import FoodlabError, UsageError
from foodlab.models.commands import add_commands
from foodlab.models.detector import FoodDetector
from foodlab.models.predict import output_stems, predict_folder, segment

SAM_SIZE = 128


def _dish(h, w, seed=0):
    img = np.full((h, w, 3), 200, np.uint8)
    cv2.circle(img, (w // 2 + seed, h // 2), min(h, w) // 4, (30, 120, 200), -1)
    return img


def _photos(folder: Path, sizes=((60, 80), (70, 80))) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"dish{i}.jpg")
        cv2.imwrite(str(paths[-1]), _dish(h, w, i))
    return paths


def _run(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", *map(str, argv), "--image-size", "64", "--device", "cpu",
                              "--sam2-image-size", str(SAM_SIZE), "--num-workers", "0"])
    return args.func(args)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(0)
    return FoodDetector(device="cpu").save_head(tmp_path_factory.mktemp("head") / "head.pt")


def test_output_names_are_distinct_for_the_same_stem():
    paths = [Path("x/a.jpg"), Path("x/a.png"), Path("x/a_jpg.png"), Path("x/b.jpg"), Path("x/A.JPG")]
    names = output_stems(paths)
    assert names[Path("x/b.jpg")] == "b"  # a unique stem keeps its plain name
    assert len({n.lower() for n in names.values()}) == len(paths)


def test_corrupt_and_non_image_files_are_skipped_and_reported(tmp_path, head_file, capsys):
    src = tmp_path / "in"
    _photos(src)
    cv2.imwrite(str(src / "dish0.png"), _dish(50, 40))  # same stem as dish0.jpg
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    (src / "notes.txt").write_text("ignored: not an image suffix")
    assert _run(src, "--weights", head_file, "--out", tmp_path / "out", "--mode", "lightweight") == 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["dish0_jpg_mask.png", "dish0_png_mask.png",
                                                              "dish1_mask.png"]
    assert cv2.imread(str(out / "dish0_png_mask.png"), cv2.IMREAD_UNCHANGED).shape == (50, 40)
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 of 4 inputs" in err


def test_a_failed_write_is_an_error(tmp_path, head_file):
    src = tmp_path / "in"
    _photos(src)
    out = tmp_path / "out"
    (out / "dish1_mask.png").mkdir(parents=True)  # the mask cannot replace a folder
    with pytest.raises(FoodlabError, match="cannot write .*dish1_mask.png"):
        _run(src, "--weights", head_file, "--out", out, "--mode", "lightweight")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FoodlabError, match="output folder"):
        _run(src, "--weights", head_file, "--out", tmp_path / "file" / "sub", "--mode", "lightweight")


def test_missing_input_is_a_usage_error(tmp_path, head_file):
    with pytest.raises(UsageError, match="no such image"):
        _run(tmp_path / "nope.jpg", "--weights", head_file, "--out", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        _run(tmp_path / "empty", "--weights", head_file, "--out", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lightweight", "sam2"])
def test_predict_writes_masks_at_each_photos_size(tmp_path, head_file, mode, capsys):
    _photos(tmp_path / "in", sizes=((60, 80), (150, 110), (70, 80)))
    assert _run(tmp_path / "in", "--weights", head_file, "--out", tmp_path / "out", "--mode", mode,
                "--batch-size", "2") == 0
    for i, (h, w) in enumerate(((60, 80), (150, 110), (70, 80))):
        mask = cv2.imread(str(tmp_path / "out" / f"dish{i}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(tmp_path / "out" / f"dish{i}_overlay.jpg")).shape == (h, w, 3)
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_a_photos_sam2_mask_does_not_depend_on_its_batch(head_file):
    detector = FoodDetector.from_head_file(head_file, device="cpu", sam2_image_size=SAM_SIZE)
    photos = [_dish(90, 120, 0), _dish(64, 64, 3)]
    alone = segment(detector, photos[1:], mode="sam2", image_size=64)
    together = segment(detector, photos, mode="sam2", image_size=64)
    np.testing.assert_array_equal(alone[0][0], together[1][0])
    assert alone[0][1] == pytest.approx(together[1][1], abs=1e-5)
    assert together[0][0].shape == (90, 120)


def test_report_counts_images(tmp_path, head_file):
    _photos(tmp_path / "in")
    detector = FoodDetector.from_head_file(head_file, device="cpu")
    report = predict_folder(detector, tmp_path / "in", tmp_path / "out", mode="lightweight", image_size=64,
                            progress=False)
    assert len(report.written) == 2 and not report.failed and report.images_per_s > 0
