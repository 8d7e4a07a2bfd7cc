"""SAM2 prompts from masks, and per-prompt mask logits back to (B, C, H, W) logits.

Pure numpy/cv2/torch, no ``sam2``: unit-testable and shared by training (prompts
from the ground truth) and inference (prompts from the lightweight head's mask).

Rules, chosen for food photos (several items per plate, crumbs) and a fixed cost:
- One prompt per image (binary) or per present foreground class (multi-class): the
  box around all its pixels + ``num_pos`` positive points (the most interior pixel of
  each of the largest components, by distance transform, then random interior
  pixels) + ``num_neg`` negative points (random pixels inside the box but outside the
  mask). Components smaller than ``min_area`` (crumbs, head noise) are left out of
  the box and points, except that the largest one is always kept. So the decoder
  runs on N = B (binary) prompts, whatever the number of items: training stays
  cheap and training and inference prompts look the same.
- ``per_component=True`` (binary, opt-in) gives one prompt per component instead,
  largest first, up to ``max_prompts``; the image's logit is the max over them.
- Multi-class logits: each class prompt's logit becomes its class channel; the
  background channel is -max(foreground logits) and absent classes get ``NEG_LOGIT``.
- Empty mask: a single whole-image box ("find the food in here"). For binary it
  feeds the food channel; for multi-class it has no class and only feeds background.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from foodlab.labels import IGNORE_INDEX

NEG_LOGIT = -100.0  # logit of classes without a prompt: sigmoid/softmax ~0, finite in fp16/bf16
BOX_LABELS = (2, 3)  # SAM's labels for the top-left / bottom-right box corners
PAD_LABEL = -1  # "not a point" for the prompt encoder


def _interior_point(component: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel farthest from the component's border (cropped to its box for speed)."""
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(component[y0:y1, x0:x1].astype(np.uint8), 1)
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x0 + x - 1), int(y0 + y - 1)


def _random_pixels(region: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    ys, xs = np.nonzero(region)
    if n <= 0 or len(xs) == 0:
        return []
    pick = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
    return [(int(xs[i]), int(ys[i])) for i in pick]


def _components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Connected components (8-connected), largest first, tiny ones dropped but never all."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    keep = [c for c in order if stats[c, cv2.CC_STAT_AREA] >= min_area] or [order[0]]
    return [labels == c for c in keep]


def prompts_from_mask(mask, max_prompts: int = 4, num_pos: int = 3, num_neg: int = 1, min_area: int | None = None,
                      per_component: bool = False, rng: np.random.Generator | None = None) -> dict:
    """Prompts for one binary mask (H, W), in the mask's pixel coordinates (x, y).

    Returns {"boxes": (N, 4) float32 xyxy, "points": (N, num_pos + num_neg, 2) float32,
    "labels": (N, num_pos + num_neg) int32} with labels 1 (food), 0 (not food) and -1
    (padding, when a component has too few pixels for all points). Default: one prompt
    whose box spans all (non-tiny) components; ``per_component=True``: one per component.
    """
    m = np.asarray(mask).astype(bool)
    h, w = m.shape
    rng = rng if rng is not None else np.random.default_rng(0)
    width = num_pos + num_neg
    if not m.any():
        return {"boxes": np.array([[0, 0, w - 1, h - 1]], np.float32),
                "points": np.zeros((1, width, 2), np.float32), "labels": np.full((1, width), PAD_LABEL, np.int32)}
    min_area = max(4, (h * w) // 10_000) if min_area is None else min_area
    comps = _components(m, min_area)
    groups = comps[:max_prompts] if per_component else [np.logical_or.reduce(comps)]
    boxes, points, labels = [], [], []
    for g in groups:
        ys, xs = np.nonzero(g)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        seeds = [_interior_point(g)] if per_component else [_interior_point(c) for c in comps[:num_pos]]
        rest = g.copy()
        for x, y in seeds:
            rest[y, x] = False
        pos = (seeds + _random_pixels(rest, num_pos - len(seeds), rng))[:num_pos]
        box_region = np.zeros_like(m)
        box_region[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        neg = _random_pixels(box_region & ~m, num_neg, rng)
        pts = pos + neg
        lab = [1] * len(pos) + [0] * len(neg)
        pad = width - len(pts)
        points.append(pts + [(0, 0)] * pad)
        labels.append(lab + [PAD_LABEL] * pad)
    return {"boxes": np.asarray(boxes, np.float32), "points": np.asarray(points, np.float32).reshape(-1, width, 2),
            "labels": np.asarray(labels, np.int32).reshape(-1, width)}


def prompts_for_batch(masks: torch.Tensor, num_classes: int, image_size: int,
                      rng: np.random.Generator | list[np.random.Generator] | None = None,
                      device=None, per_component: bool = False, frames: list[tuple[int, int]] | None = None,
                      **kwargs) -> dict:
    """Prompts for a batch of class-id masks (B, H, W), scaled to SAM2's square input of ``image_size``.

    ``rng``: one generator for the batch, or one per image (then an image's prompts do not depend on the other
    images in its batch). ``frames``: each image's (height, width) when SAM2 sees a photo of another size than the
    mask (inference: the head runs smaller). A mask pixel's centre is mapped to the photo's frame (a box covers its
    pixels' extent, a point sits at its pixel's centre), then to SAM2's input as SAM2's ``transform_coords`` does (x
    / W * image_size).
    Returns coords (N, 2 + P, 2) float32 (box corners first, as the predictor does), labels
    (N, 2 + P) int32 with any padding (-1) trailing, image_index (N,) and class_index (N,)
    long tensors (class -1: no class).
    """
    masks_np = masks.detach().cpu().numpy()
    _, h, w = masks_np.shape
    coords, labels, image_index, class_index = [], [], [], []
    rngs = rng if isinstance(rng, (list, tuple)) else [rng] * len(masks_np)
    for i, (m, rng) in enumerate(zip(masks_np, rngs)):
        fh, fw = frames[i] if frames is not None else (h, w)
        to_frame = np.array([fw / w, fh / h], np.float32)
        to_input = np.array([image_size / fw, image_size / fh], np.float32)
        valid = m != IGNORE_INDEX
        if num_classes == 1:
            sets = [(0, prompts_from_mask((m > 0) & valid, per_component=per_component, rng=rng, **kwargs))]
        else:
            present = [int(c) for c in np.unique(m[valid]) if 0 < c < num_classes]
            kwargs.pop("max_prompts", None)
            sets = [(c, prompts_from_mask(m == c, max_prompts=1, rng=rng, **kwargs))
                    for c in present] or [(-1, prompts_from_mask(np.zeros_like(m, bool), rng=rng, **kwargs))]
        for c, p in sets:
            n = len(p["boxes"])
            corners = p["boxes"].reshape(n, 2, 2)
            if frames is not None:  # each is the identity when the frame is the mask's size
                corners = np.stack([corners[:, 0] * to_frame, (corners[:, 1] + 1) * to_frame - 1], axis=1)
                p = {**p, "points": (p["points"] + 0.5) * to_frame - 0.5}
            coords.append(np.concatenate([corners, p["points"]], axis=1) * to_input)
            labels.append(np.concatenate([np.tile(np.array(BOX_LABELS, np.int32), (n, 1)), p["labels"]], axis=1))
            image_index += [i] * n
            class_index += [c] * n
    width = max(c.shape[1] for c in coords)  # pad point lists to one width (kwargs are shared, so rarely needed)
    coords = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0))) for c in coords]
    labels = [np.pad(lab, ((0, 0), (0, width - lab.shape[1])), constant_values=PAD_LABEL) for lab in labels]
    return {
        "coords": torch.from_numpy(np.concatenate(coords).astype(np.float32)).to(device),
        "labels": torch.from_numpy(np.concatenate(labels)).to(device),
        "image_index": torch.tensor(image_index, dtype=torch.long, device=device),
        "class_index": torch.tensor(class_index, dtype=torch.long, device=device),
    }


def assemble_logits(mask_logits: torch.Tensor, prompts: dict, batch_size: int, num_classes: int) -> torch.Tensor:
    """Per-prompt logits (N, 1, h, w) -> (B, C, h, w): max over a (image, class)'s prompts.

    C == 1: channel 0 is the max over the image's prompts. C > 1: class channels from
    their prompts, absent classes ``NEG_LOGIT``, background = -max(all the image's prompt
    logits). Differentiable (index_put of stacked maxima), no device-specific ops.
    """
    n, _, h, w = mask_logits.shape
    img = prompts["image_index"].tolist()
    cls = prompts["class_index"].tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for k in range(n):
        if cls[k] >= 0:
            groups.setdefault((img[k], cls[k]), []).append(k)
        if num_classes > 1:
            groups.setdefault((img[k], 0), []).append(k)  # background from every prompt of the image
    keys = sorted(groups)
    values = []
    for key in keys:
        v = mask_logits[groups[key], 0].amax(dim=0)
        values.append(-v if num_classes > 1 and key[1] == 0 else v)
    out = mask_logits.new_full((batch_size * num_classes, h, w), NEG_LOGIT)
    if keys:
        flat = torch.tensor([b * num_classes + c for b, c in keys], device=mask_logits.device)
        out = out.index_put((flat,), torch.stack(values))
    return out.view(batch_size, num_classes, h, w)
