"""SAM2 for foodlab: build, checkpoint, batched encode/prompt/decode.

The only module that imports ``sam2``. It never touches ``sam2.sam2_image_predictor``
(that one imports torchvision, which cannot load next to the CPU torch wheel):
preprocessing and the batched prompt -> decoder calls are done here, following
the predictor's own steps (``forward_image`` -> ``_prepare_backbone_features`` ->
``no_mem_embed`` -> prompt encoder -> mask decoder with high-res features).

Prompts come from masks (ground truth in training, the lightweight head's mask at
inference): see ``prompts.py``. Each prompt yields one low-res mask logit; they
are merged into (B, C, H, W) logits by ``assemble_logits``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from foodlab.devices import resolve_device
from foodlab.models.lightweight import IMAGENET_MEAN, IMAGENET_STD, interpolate
from foodlab.models.prompts import PAD_LABEL, assemble_logits, prompts_for_batch

log = logging.getLogger(__name__)

MODEL_CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
_warned_random = False

def build_sam2_model(model_type: str = "tiny", checkpoint: str | Path | None = None, device="cpu",
                     image_size: int | None = None) -> nn.Module:
    """SAM2.1 from the config shipped in the ``sam2`` package, in eval mode, on ``device``.

    ``image_size`` overrides the config's 1024 (smaller is only for smoke tests and
    benchmarks at tiny scale; real checkpoints expect 1024). Without a checkpoint
    the weights are random, which is said once per process.
    """
    global _warned_random
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown SAM2 model type {model_type!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM2 checkpoint not found: {checkpoint} (expected a local SAM2.1 {model_type} .pt)")
    from sam2.build_sam import build_sam2

    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    model = build_sam2(MODEL_CONFIGS[model_type], ckpt_path=None, device="cpu", mode="eval",
                       hydra_overrides_extra=overrides)
    if checkpoint is not None:
        load_sam2_checkpoint(model, checkpoint, model_type)
    elif not _warned_random:
        _warned_random = True
        log.warning("SAM2 %s has random weights (no --sam2-checkpoint): fine for speed/memory, "
                    "meaningless for quality", model_type)
    return model.to(resolve_device(device)).eval()


def set_trainable(sam: nn.Module, *, image_encoder: bool, cached_features: bool = False) -> list[nn.Parameter]:
    """The one rule for which SAM2 parts train; returns the parameters that now require grad.

    Always: the prompt encoder and the mask decoder. On fresh features (``cached_features`` False)
    also ``no_mem_embed`` and, when ``image_encoder``, the Hiera image encoder. On cached features
    (``foodlab embed``) ``conv_s0``/``conv_s1`` and ``no_mem_embed`` were applied before caching,
    so they stay frozen with the encoder. Video-only parts (memory attention/encoder) never train.
    """
    if cached_features and image_encoder:
        raise ValueError("the image encoder cannot train on cached features")
    sam.requires_grad_(False)
    sam.sam_prompt_encoder.requires_grad_(True)
    for name, p in sam.sam_mask_decoder.named_parameters():
        p.requires_grad_(not (cached_features and name.startswith(("conv_s0", "conv_s1"))))
    if not cached_features:
        sam.no_mem_embed.requires_grad_(True)
        if image_encoder:
            sam.image_encoder.requires_grad_(True)
    return [p for p in sam.parameters() if p.requires_grad]


def load_sam2_checkpoint(model: nn.Module, path: str | Path, model_type: str = "?") -> None:
    """Load ``{"model": state_dict}`` or a raw state dict; a mismatch names the expected model type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a SAM2 checkpoint (no state dict inside)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"{path} does not fit SAM2.1 model type {model_type!r}: {str(e)[:500]}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not fit SAM2.1 model type {model_type!r}: {len(missing)} missing keys "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    log.info("loaded SAM2 %s weights from %s", model_type, path)


def preprocess(sam: nn.Module, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Images in [0, 1] -> SAM2's square input, ImageNet-normalized, as SAM2's own transforms do.

    ``images`` is a (B, 3, H, W) batch or a list of (3, H, W) photos of any sizes (each is
    resized on its own, then stacked). Bilinear with antialias, as torchvision's ``Resize``
    in ``SAM2Transforms``: without it a large photo shrunk to 1024 aliases (it only matters
    when downscaling).
    """
    size = sam.image_size
    batch = [images] if torch.is_tensor(images) else [p[None] for p in images]
    x = torch.cat([_resize_antialiased(b, size) for b in batch])
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _resize_antialiased(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    dtype = x.dtype
    x = x.float() if x.device.type == "mps" else x  # MPS: antialiased kernels in float32 only
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).to(dtype)


def encode(sam: nn.Module, images: torch.Tensor) -> dict:
    """One batched image-encoder call -> {"image_embed": (B,256,s/16,s/16), "high_res_feats": [s/4, s/8]}.

    Same steps as ``SAM2Base.forward_image`` + the predictor's ``set_image_batch``, but the
    trunk runs without autograd when all its parameters are frozen (saves its activations).
    """
    x = preprocess(sam, images)
    trunk_grad = torch.is_grad_enabled() and any(p.requires_grad for p in sam.image_encoder.parameters())
    with torch.set_grad_enabled(trunk_grad):
        backbone_out = sam.image_encoder(x)
    if sam.use_high_res_features_in_sam:
        fpn = backbone_out["backbone_fpn"]
        fpn[0] = sam.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = sam.sam_mask_decoder.conv_s1(fpn[1])
    _, vision_feats, _, feat_sizes = sam._prepare_backbone_features(backbone_out)
    if sam.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + sam.no_mem_embed
    b = x.shape[0]
    feats = [f.permute(1, 2, 0).reshape(b, -1, *size) for f, size in zip(vision_feats, feat_sizes)]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


def decode(sam: nn.Module, features: dict, prompts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched prompt encoder + mask decoder: one low-res mask logit (N, 1, s/4, s/4) and score (N,) per prompt.

    ``prompts`` (from ``prompts_for_batch``) holds coords (N, P, 2) in model-input pixels,
    labels (N, P) (2/3 = box corners, 1/0 = positive/negative points, -1 = padding, always
    trailing) and image_index (N,). Padding points are not free: the prompt encoder turns
    each into a token the decoder attends to. So prompts are grouped by their number of real
    points and each group runs without padding, which is what SAM2's predictor feeds the
    encoder for one prompt (it then adds its own single pad point, as here). Each prompt's
    image features are gathered so the decoder runs with ``repeat_image=False``.
    """
    embed = features["image_embed"]
    device_type = embed.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
        else next(sam.sam_mask_decoder.parameters()).dtype  # cached fp16 -> the dtype the decoder computes in
    coords, labels, idx = prompts["coords"], prompts["labels"], prompts["image_index"]
    counts = (labels != PAD_LABEL).sum(dim=1)
    low_res, iou, order = [], [], []
    for n in sorted(set(counts.tolist())):
        sel = torch.nonzero(counts == n)[:, 0]
        if bool((labels[sel, n:] != PAD_LABEL).any()):
            raise ValueError("prompt padding must come after the real points (as prompts_for_batch builds it)")
        rows = idx[sel]
        same = len(rows) == len(embed) and bool((rows == torch.arange(len(rows), device=rows.device)).all())
        gather = (lambda t: t.to(dtype)) if same else (lambda t, rows=rows: t[rows].to(dtype))  # no copy if 1:1
        sparse, dense = sam.sam_prompt_encoder(points=(coords[sel, :n], labels[sel, :n]), boxes=None, masks=None)
        masks, scores, _, _ = sam.sam_mask_decoder(
            image_embeddings=gather(embed),
            image_pe=sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[gather(f) for f in features["high_res_feats"]],
        )
        low_res.append(masks)
        iou.append(scores[:, 0])
        order.append(sel)
    if len(order) == 1:
        return low_res[0], iou[0]
    back = torch.argsort(torch.cat(order))  # groups -> the prompts' own order
    return torch.cat(low_res)[back], torch.cat(iou)[back]


def decoder_logits(sam: nn.Module, features: dict, masks: torch.Tensor, num_classes: int = 1,
                   rng: np.random.Generator | None = None, return_scores: bool = False, **prompt_kwargs):
    """Decoder-only forward from (cached or fresh) features, prompted from ``masks`` (B, H, W).

    Returns logits (B, num_classes, H, W) at the masks' resolution (and per-image scores).
    """
    b = masks.shape[0]
    prompts = prompts_for_batch(masks, num_classes, image_size=sam.image_size, rng=rng,
                                device=features["image_embed"].device, **prompt_kwargs)
    low_res, iou = decode(sam, features, prompts)
    logits = assemble_logits(low_res, prompts, b, num_classes)
    logits = interpolate(logits, tuple(masks.shape[-2:]))
    return (logits, _image_scores(iou, prompts, b)) if return_scores else logits


def _image_scores(iou: torch.Tensor, prompts: dict, batch_size: int) -> torch.Tensor:
    """Per-image score: the mean of its prompts' predicted IoU."""
    idx = prompts["image_index"]
    scores = torch.zeros(batch_size, device=iou.device, dtype=torch.float32).index_add_(0, idx, iou.float())
    return scores / torch.bincount(idx, minlength=batch_size).clamp_min(1)


def sam2_logits(sam: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int = 1,
                rng: np.random.Generator | None = None, return_scores: bool = False, **prompt_kwargs):
    """Full SAM2 (encoder + prompt encoder + decoder), batched, prompted from ``masks`` (B, H, W)."""
    masks = masks if tuple(masks.shape[-2:]) == tuple(images.shape[-2:]) else \
        interpolate(masks[:, None].float(), tuple(images.shape[-2:]), mode="nearest")[:, 0].long()
    return decoder_logits(sam, encode(sam, images), masks, num_classes, rng=rng,
                          return_scores=return_scores, **prompt_kwargs)


def photo_logits(sam: nn.Module, photos: list[torch.Tensor], masks: torch.Tensor, num_classes: int = 1,
                 rng: np.random.Generator | list[np.random.Generator] | None = None, **prompt_kwargs) -> tuple[list[torch.Tensor], torch.Tensor]:
    """SAM2 inference as SAM2's predictor does it: photos at their own resolution, prompted from ``masks``.

    ``photos``: (3, H_i, W_i) tensors in [0, 1], any sizes; SAM2 resizes each to its square
    input itself (antialiased). ``masks`` (B, h, w): class ids at another resolution (the
    head's training size); their prompts are scaled to each photo's frame, then to SAM2's
    input. SAM2's low-res logits are upsampled bilinearly to each photo's size, so a caller
    thresholds at full resolution. Returns ([(C, H_i, W_i) logits], scores (B,)).
    """
    frames = [tuple(int(d) for d in p.shape[-2:]) for p in photos]
    if rng is None:  # each photo's prompts seeded alone: a photo's mask does not depend on its batch
        rng = [np.random.default_rng(0) for _ in photos]
    features = encode(sam, photos)
    prompts = prompts_for_batch(masks, num_classes, image_size=sam.image_size, rng=rng, frames=frames,
                                device=features["image_embed"].device, **prompt_kwargs)
    low_res, iou = decode(sam, features, prompts)
    low = assemble_logits(low_res, prompts, len(photos), num_classes).float()
    logits = [F.interpolate(low[i:i + 1], size=frame, mode="bilinear", align_corners=False)[0]
              for i, frame in enumerate(frames)]
    return logits, _image_scores(iou, prompts, len(photos))
