"""Segmentation losses shared by training, distillation and the throughput benchmark.

Logits are (B, C, H, W); targets are (B, H, W) integer class ids.
C == 1 is binary food/not-food (BCE + soft Dice on class > 0); C > 1 is
multi-class (cross-entropy + soft Dice over classes). IGNORE_INDEX pixels count nowhere, so a
sample whose mask is all IGNORE_INDEX contributes nothing (and a batch of only such samples gives 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from foodlab.labels import IGNORE_INDEX


def dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, averaged over classes; ``valid`` is (B, 1, H, W) in {0, 1}."""
    probs, onehot = probs * valid, onehot * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE/CE + ``dice_weight`` * Dice, computed in float32 whatever autocast chose for the logits."""
    logits = logits.float()
    target = target.long()
    valid = (target != IGNORE_INDEX).unsqueeze(1).float()
    if logits.shape[1] == 1:
        t = (target > 0).unsqueeze(1).float() * valid
        bce = F.binary_cross_entropy_with_logits(logits, t, weight=valid, reduction="sum") / valid.sum().clamp_min(1)
        return bce + dice_weight * dice_loss(torch.sigmoid(logits), t, valid)
    # summed, then divided by the valid pixel count: the mean over valid pixels, and 0 (not 0/0 = NaN)
    # for a batch whose masks are all IGNORE_INDEX; such samples add nothing to the loss or its gradient
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / valid.sum().clamp_min(1)
    safe = target.masked_fill(target == IGNORE_INDEX, 0)
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float()
    return ce + dice_weight * dice_loss(torch.softmax(logits, dim=1), onehot, valid)
