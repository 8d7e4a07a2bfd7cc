"""Where benchmark settings come from: the scale names, each module's scale table, overrides on top.

Every benchmark module defines its settings per scale once (``SCALES``) plus the settings that do
not depend on the scale (``DEFAULTS``); experiment files list only what differs. ``scale_config``
layers them and ``check_overrides`` refuses a key the benchmark does not know or a value of the
wrong type when the experiment file is loaded, so a typo fails before anything is measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from foodlab.errors import UsageError

SCALES = ("smoke", "default", "full")
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"

# notebook 04's short training run: images, image size, epochs, SAM2 input size (1024 is SAM2's own)
TRAIN_DEMO_SCALES = {
    "smoke": {"synth_n": 16, "image_size": 64, "epochs": 1, "sam2_image_size": 128},
    "default": {"synth_n": 256, "image_size": 256, "epochs": 5, "sam2_image_size": 512},
    "full": {"synth_n": 2048, "image_size": 512, "epochs": 20, "sam2_image_size": 1024},
}


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` can stand where the scale table has ``default`` (ints count as floats)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def known_settings(scales: Mapping[str, Mapping[str, Any]],
                   defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting the benchmark reads, with a representative value (for type checks)."""
    known: dict[str, Any] = dict(defaults or {})
    for table in scales.values():
        for key, value in table.items():
            known.setdefault(key, value)
    return known


def check_overrides(benchmark: str, scales: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any],
                    defaults: Mapping[str, Any] | None = None, where: str = "") -> None:
    """Refuse unknown keys and values of the wrong type; the message names ``where`` and the key."""
    known = known_settings(scales, defaults)
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UsageError(f"{prefix}{benchmark}: unknown overrides {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    for key, value in overrides.items():
        if not _type_ok(known[key], value):
            raise UsageError(f"{prefix}{benchmark}: override {key}={value!r} should be "
                             f"{type(known[key]).__name__} like {known[key]!r}")


def scale_config(benchmark: str, scales: Mapping[str, Mapping[str, Any]], scale: str,
                 overrides: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A benchmark's settings at ``scale`` with ``overrides`` on top; an unknown scale or override
    key is an error naming it (a typo in an experiment file must not silently measure the default)."""
    if scale not in scales:
        raise UsageError(f"{benchmark}: unknown scale {scale!r}; choose one of {', '.join(scales)}")
    check_overrides(benchmark, scales, overrides, defaults)
    return {**(defaults or {}), **scales[scale], **overrides}


def train_demo_settings(scale: str) -> dict[str, Any]:
    """Sizes for notebook 04's short training run at ``scale``."""
    return scale_config("train_and_infer", TRAIN_DEMO_SCALES, scale, {})
