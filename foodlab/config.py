"""Settings as dataclasses, loadable from YAML, so experiments are declarative files.

Each area owns its dataclass: DataConfig (dataset), ModelConfig (detector),
TrainConfig (training loop). ``load_yaml`` reads a mapping with optional
``data:``, ``model:``, ``train:`` sections and rejects unknown keys by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


@dataclass
class DataConfig:
    root: str | None = None          # None: the built-in synthetic dataset
    split: str | None = None
    layout: str = "auto"             # auto | pairs | foodseg103 | uecfoodpix
    index: str = "manifest"          # decode | stat | manifest
    image_size: int = 512
    num_classes: int = 1
    on_bad: str = "resample"         # resample | dummy | raise
    cache: str | None = None         # folder for the decoded-image cache, or None
    augment: bool = False
    synth_n: int = 512               # size of the synthetic dataset when root is None
    synth_size: int = 512
    synth_classes: int = 8
    seed: int = 0


@dataclass
class ModelConfig:
    use_lightweight_head: bool = True
    head: str = "fast"               # fast | baseline
    sam2_model_type: str = "tiny"    # tiny | small | base_plus | large
    sam2_checkpoint: str | None = None
    freeze_image_encoder: bool = False
    num_classes: int = 1


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "auto"
    num_workers: int | None = None   # None: per-device default
    amp: bool | None = None          # None: per-device default
    accum_steps: int = 1
    channels_last: bool = False
    compile: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    out_dir: str = "runs"
    resume: bool = False
    experiment: str = "foodlab-train"
    run_name: str | None = None
    log_every: int = 1
    sam2_cached_embeddings: bool = False  # head off: train the decoder on precomputed embeddings


def from_dict(cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming them."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cls(**values)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_yaml(path: str | Path) -> Config:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    extra = sorted(set(raw) - {"data", "model", "train"})
    if extra:
        raise ValueError(f"{path}: unknown sections {', '.join(extra)} (expected data, model, train)")
    return Config(
        data=from_dict(DataConfig, raw.get("data")),
        model=from_dict(ModelConfig, raw.get("model")),
        train=from_dict(TrainConfig, raw.get("train")),
    )


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
