"""Overlay figures of predictions."""
from __future__ import annotations

import torch

from foodlab.train.metrics import overlay_figure


def test_overlay_figure_puts_one_column_per_prediction_mode():

    images = torch.rand(3, 3, 16, 16)
    target = torch.randint(0, 2, (3, 16, 16))
    single = overlay_figure(images, target, target)
    assert [ax.get_title() for ax in single.axes[:3]] == ["image", "ground truth", "prediction"]
    modes = overlay_figure(images, target, {"lightweight head": target, "SAM2-refined": 1 - target}, max_images=2)
    assert len(modes.axes) == 2 * 4
    assert [ax.get_title() for ax in modes.axes[:4]] == ["image", "ground truth", "lightweight head", "SAM2-refined"]
