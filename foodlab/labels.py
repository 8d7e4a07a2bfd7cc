"""The label contract shared by data, models and training: what a mask pixel means.

Masks are integer class ids (H, W): 0 is background, 1..C-1 are food classes (C = 1 is
binary food / not food, where any id > 0 is food), and ``IGNORE_INDEX`` marks pixels
that count nowhere (no loss, no metric, no prompt).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = 255


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """Class ids (B, H, W) from logits (B, C, H, W): threshold 0 for C == 1, argmax otherwise."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)
