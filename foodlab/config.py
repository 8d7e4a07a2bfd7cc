"""Settings as dataclasses, loadable from YAML, so a training run can be a declarative file.

Each area owns its dataclass: DataConfig (dataset), ModelConfig (detector),
TrainConfig (training loop). ``load_yaml`` reads a mapping with optional
``data:``, ``model:``, ``train:`` sections (``foodlab train --config FILE``) and rejects
unknown keys and values of the wrong type by name, before any work.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from foodlab.errors import UsageError

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
    resume: str | None = None       # None: a new run; "latest", a run folder, or an MLflow run id
    register: str | None = None     # register the trained head as a new version of this MLflow model
    experiment: str = "foodlab-train"
    run_name: str | None = None
    log_every: int = 1
    sam2_cached_embeddings: bool = False  # head off: train the decoder on precomputed embeddings


def from_dict(cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and values of the wrong type are errors naming them."""
    values = dict(values or {})
    types = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise UsageError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(types))})")
    for key, value in values.items():
        if not _fits(value, types[key]):
            raise UsageError(f"{cls.__name__}.{key} must be {_type_name(types[key])}, got {value!r}")
    return cls(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (``int | None`` style; a bool is not a number here)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (str, bool) and isinstance(value, option):
            return True
    return False


def _type_name(hint: Any) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join("null" if o is type(None) else o.__name__ for o in options)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_yaml(path: str | Path) -> Config:
    """A ``Config`` from a YAML file; every problem is a one-line ``UsageError`` naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    extra = sorted(set(raw) - {"data", "model", "train"})
    if extra:
        raise UsageError(f"{path}: unknown sections {', '.join(extra)} (expected data, model, train)")
    sections = {}
    for name, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        if not isinstance(raw.get(name) or {}, dict):
            raise UsageError(f"{path}: section {name} must be a mapping of keys to values")
        try:
            sections[name] = from_dict(cls, raw.get(name))
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
    return Config(**sections)


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
