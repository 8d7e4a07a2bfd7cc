"""IoU and Dice accumulated over a validation pass (confusion-matrix based, exact), and a prediction grid."""
from __future__ import annotations

import numpy as np
import torch

from foodlab.labels import IGNORE_INDEX


class SegMetrics:
    """Accumulates a confusion matrix; ``compute()`` gives mIoU, Dice and per-class values.

    For binary models (num_classes == 1) the matrix is 2x2 (background, food) and the
    reported mIoU/Dice are those of the food class, the number users care about.
    """

    def __init__(self, num_classes: int):
        self.binary = num_classes == 1
        self.n = 2 if self.binary else num_classes
        self.confusion = torch.zeros(self.n, self.n, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.detach().cpu().long(), target.detach().cpu().long()
        valid = target != IGNORE_INDEX
        if self.binary:
            target = (target > 0).long()
        t, p = target[valid], pred[valid].clamp(0, self.n - 1)
        t = t.clamp(0, self.n - 1)
        self.confusion += torch.bincount(t * self.n + p, minlength=self.n * self.n).view(self.n, self.n)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        tp = cm.diag()
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        iou = tp / (tp + fp + fn).clamp_min(1)
        dice = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        present = (tp + fn) > 0
        out: dict[str, float] = {}
        if self.binary:
            out["miou"], out["dice"] = float(iou[1]), float(dice[1])
        else:
            out["miou"] = float(iou[present].mean()) if present.any() else 0.0
            out["dice"] = float(dice[present].mean()) if present.any() else 0.0
            for c in range(self.n):
                out[f"iou_class_{c}"] = float(iou[c])
                out[f"dice_class_{c}"] = float(dice[c])
        out["pixel_acc"] = float(tp.sum() / cm.sum().clamp_min(1))
        return out


def overlay_figure(images: torch.Tensor, target: torch.Tensor, pred: torch.Tensor | dict[str, torch.Tensor],
                   max_images: int = 4):
    """A grid: image | ground truth | one column per prediction, masks tinted over the image.

    ``pred`` is one (B, H, W) prediction or ``{title: predictions}`` to compare modes side by side
    (e.g. lightweight head vs SAM2-refined). Built without pyplot, so it never switches a backend.
    """
    from matplotlib.figure import Figure

    preds = pred if isinstance(pred, dict) else {"prediction": pred}
    titles = ["image", "ground truth", *preds]
    n = min(max_images, len(images))
    fig = Figure(figsize=(2.5 * len(titles), 2.5 * n))
    axes = fig.subplots(n, len(titles), squeeze=False)
    labels = np.concatenate([target[target != IGNORE_INDEX].cpu().numpy().ravel(),
                             *[p.cpu().numpy().ravel() for p in preds.values()], [0]])
    vmax = max(2, int(labels.max()) + 1)
    for i in range(n):
        img = images[i].float().permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        for ax, mask, title in zip(axes[i], (None, target[i], *[p[i] for p in preds.values()]), titles):
            ax.imshow(img)
            if mask is not None:
                m = mask.cpu().numpy()
                shown = np.ma.masked_where((m == 0) | (m == IGNORE_INDEX), m)
                ax.imshow(shown, cmap="tab20", alpha=0.55, vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
