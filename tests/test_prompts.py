"""Prompts scaled from the head's mask to the photo's frame, padding only ever trailing, seeding per image."""
from __future__ import annotations

import numpy as np
import torch

from foodlab.labels import IGNORE_INDEX
from foodlab.models.prompts import PAD_LABEL, prompts_for_batch


def _masks():
    m = torch.zeros(2, 32, 32, dtype=torch.long)
    m[0, 4:12, 6:20] = 1
    m[0, 20:30, 22:30] = 1
    m[0, 0, 31] = IGNORE_INDEX  # ignored pixels never prompt
    m[1, 10:11, 10:12] = 1  # two pixels: too few for all points -> padding
    return m


def test_frames_of_the_masks_own_size_change_nothing():
    a = prompts_for_batch(_masks(), 1, image_size=128, rng=np.random.default_rng(0))
    b = prompts_for_batch(_masks(), 1, image_size=128, rng=np.random.default_rng(0), frames=[(32, 32)] * 2)
    torch.testing.assert_close(a["coords"], b["coords"])


def test_prompts_are_scaled_to_the_photos_frame_then_to_sam2s_input():
    """A 32x32 head mask of a 64x128 (h, w) photo: boxes cover whole head pixels, points sit at their centres,
    and SAM2's input coordinates are photo coordinates / photo size * input size (SAM2's transform_coords)."""
    masks = torch.zeros(1, 32, 32, dtype=torch.long)  # empty: a whole-image box
    p = prompts_for_batch(masks, 1, image_size=256, frames=[(64, 128)])
    box = p["coords"][0, :2].numpy()
    np.testing.assert_allclose(box / 256 * np.array([128, 64]), [[0, 0], [127, 63]], atol=1e-4)
    masks[0, 10, 20] = 1  # one pixel: its point maps to the centre of the photo pixels it covers
    p = prompts_for_batch(masks, 1, image_size=256, frames=[(64, 128)], num_pos=1, num_neg=0, min_area=1)
    point = p["coords"][0, 2].numpy() / 256 * np.array([128, 64])
    np.testing.assert_allclose(point, [(20 + 0.5) * 4 - 0.5, (10 + 0.5) * 2 - 0.5], atol=1e-4)


def test_padding_is_trailing_and_box_only_prompts_carry_no_real_points():
    p = prompts_for_batch(torch.cat([_masks(), torch.zeros(1, 32, 32, dtype=torch.long)]), 1, image_size=64)
    labels = p["labels"].numpy()
    assert (labels[:, :2] == [2, 3]).all()  # box corners first, as SAM2's predictor orders them
    for row in labels:
        real = row != PAD_LABEL
        assert real[: real.sum()].all() and not real[real.sum():].any()  # all padding after the real points
    assert (labels[1] != PAD_LABEL).sum() < labels.shape[1]  # the two-pixel blob is padded
    assert (labels[2] != PAD_LABEL).sum() == 2  # the empty mask: the box alone


def test_one_generator_per_image_makes_an_images_prompts_independent_of_its_batch():
    masks = _masks()
    alone = prompts_for_batch(masks[1:], 1, image_size=64, rng=[np.random.default_rng(0)])
    batch = prompts_for_batch(masks, 1, image_size=64, rng=[np.random.default_rng(0), np.random.default_rng(0)])
    torch.testing.assert_close(alone["coords"][0], batch["coords"][1])
