"""What a training run is built from: datasets (own split or seeded holdout), the model,
and the SAM2 decoder-only setup on cached embeddings. ``loop.train`` calls these; other
uses (distillation, benchmarks) call them to hand ``train`` their own datasets/model/step.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.train.losses import segmentation_loss

log = logging.getLogger(__name__)


def _own_val_split(root, data_cfg: DataConfig) -> str | None:
    """'val'/'test' when the root has a train split and one of those (and no other split was asked for)."""
    from foodlab.data.layouts import LayoutError, resolve_layout

    if data_cfg.split not in (None, "train"):
        return None
    try:
        splits = {f.split for f in resolve_layout(root, data_cfg.layout, None).folders}
    except LayoutError:
        return None
    return next((s for s in ("val", "test") if s in splits), None) if "train" in splits else None


def build_datasets(data_cfg: DataConfig, val_fraction: float, seed: int):
    """(train, val, full) datasets: the root's own val/test split when it has one, else a seeded holdout."""
    from torch.utils.data import Subset

    from foodlab.data.dataset import FoodSegDataset
    from foodlab.data.split import holdout
    from foodlab.data.synth import ensure_synthetic

    root = data_cfg.root or ensure_synthetic(n=data_cfg.synth_n, size=data_cfg.synth_size, seed=data_cfg.seed,
                                             classes=data_cfg.synth_classes)
    kw = dict(layout=data_cfg.layout, index=data_cfg.index, image_size=data_cfg.image_size,
              num_classes=data_cfg.num_classes, on_bad=data_cfg.on_bad, cache=data_cfg.cache)
    own_val = _own_val_split(root, data_cfg)
    if own_val is not None:
        log.info("validation on the dataset's own %r split", own_val)
        train_ds = FoodSegDataset(root, split="train", augment=data_cfg.augment, **kw)
        return train_ds, FoodSegDataset(root, split=own_val, augment=False, **kw), train_ds
    full = FoodSegDataset(root, split=data_cfg.split, augment=data_cfg.augment, **kw)
    train_idx, val_idx = holdout(full, val_fraction, seed)
    plain = FoodSegDataset(root, split=data_cfg.split, augment=False, **kw) if data_cfg.augment else full
    log.info("seeded holdout: %d train / %d val images", len(train_idx), len(val_idx))
    return Subset(full, train_idx), Subset(plain, val_idx), full


def wrap_under_split(ds, fn: Callable[[Any], Any]):
    """``fn(dataset)`` for the dataset under a split, keeping a holdout's indices (``Subset``): how cached
    embeddings or teacher targets are put under the same train/val split."""
    from torch.utils.data import Subset

    return Subset(fn(ds.dataset), ds.indices) if isinstance(ds, Subset) else fn(ds)


class SAM2Decoder(nn.Module):
    """SAM2's prompt encoder + mask decoder on cached image features (the encoder ran once, offline);
    which parts train is ``sam2_backend.set_trainable``'s rule for cached features."""

    def __init__(self, sam: nn.Module, num_classes: int, seed: int = 0):
        from foodlab.models.sam2_backend import set_trainable

        super().__init__()
        self.sam, self.num_classes, self._rng = sam, num_classes, np.random.default_rng(seed)
        set_trainable(sam, image_encoder=False, cached_features=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, features: dict, masks: torch.Tensor) -> torch.Tensor:
        from foodlab.models.sam2_backend import decoder_logits

        rng = self._rng if self.training else np.random.default_rng(0)
        return decoder_logits(self.sam, features, masks, self.num_classes, rng=rng)


def sam2_decoder_setup(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
                       sam2_image_size: int | None = None) -> dict:
    """Datasets of cached SAM2 embeddings, the decoder-only model and its step: ``train(**setup)`` inputs."""
    from foodlab.models.sam2_backend import build_sam2_model
    from foodlab.models.sam2_cache import EmbeddingDataset, embed_dataset

    if data_cfg.augment:   # embeddings are computed once per image: a random flip would be baked into the cache
        log.warning("SAM2 decoder on cached embeddings: turning data augmentation off")
        data_cfg = dataclasses.replace(data_cfg, augment=False)
    train_ds, val_ds, full = build_datasets(data_cfg, train_cfg.val_fraction, train_cfg.seed)
    root = Path(train_cfg.out_dir) / "sam2_embeddings"

    def embedded(ds):
        key = (f"{getattr(ds, 'fingerprint', 'data')}_{getattr(ds, 'split', None)}_s{data_cfg.image_size}"
               f"_{model_cfg.sam2_model_type}")
        return EmbeddingDataset(embed_dataset(ds, root / key, model_cfg.sam2_model_type, model_cfg.sam2_checkpoint,
                                              device=device, image_size=sam2_image_size))

    sam = build_sam2_model(model_cfg.sam2_model_type, model_cfg.sam2_checkpoint, device, image_size=sam2_image_size)
    model = SAM2Decoder(sam, model_cfg.num_classes, seed=train_cfg.seed)

    def step(m: nn.Module, batch: Any):
        features, masks = batch
        logits = m(features, masks)
        return segmentation_loss(logits, masks), logits, masks
    datasets = (wrap_under_split(train_ds, embedded), wrap_under_split(val_ds, embedded), full)
    return {"datasets": datasets, "model": model, "step_fn": step}


def build_model(model_cfg: ModelConfig, device: torch.device) -> nn.Module:
    from foodlab.models.detector import FoodDetector

    return FoodDetector(
        use_lightweight_head=model_cfg.use_lightweight_head, head=model_cfg.head,
        sam2_model_type=model_cfg.sam2_model_type, sam2_checkpoint=model_cfg.sam2_checkpoint,
        num_classes=model_cfg.num_classes, device=device, freeze_image_encoder=model_cfg.freeze_image_encoder,
    )
