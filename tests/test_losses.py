"""Segmentation losses (train/losses.py): ignore pixels count nowhere, all-ignore masks give no NaN."""
from __future__ import annotations

import pytest
import torch

from foodlab.labels import IGNORE_INDEX
from foodlab.train.losses import segmentation_loss


@pytest.mark.parametrize("classes", [1, 5])
def test_all_ignore_masks_add_nothing_and_never_nan(classes):
    torch.manual_seed(0)
    logits = torch.randn(2, classes, 8, 8, requires_grad=True)
    target = torch.randint(0, max(2, classes), (2, 8, 8))
    target[1] = IGNORE_INDEX                                   # sample 1: no labelled pixel at all
    loss = segmentation_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() == 0                     # the all-ignore sample adds no gradient
    alone = segmentation_loss(logits[:1].detach(), target[:1])
    assert torch.allclose(loss.detach(), alone)                # ... and nothing to the loss

    only_ignore = segmentation_loss(logits, torch.full((2, 8, 8), IGNORE_INDEX))
    assert torch.isfinite(only_ignore) and only_ignore.item() == 0


def test_ignore_pixels_do_not_change_the_loss():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 6, 6)
    target = torch.randint(0, 4, (1, 6, 6))
    partly = target.clone()
    partly[0, :3] = IGNORE_INDEX
    changed = logits.clone()
    changed[0, :, :3] = 100.0                                   # wild logits where the mask says ignore
    assert torch.allclose(segmentation_loss(logits, partly), segmentation_loss(changed, partly))
