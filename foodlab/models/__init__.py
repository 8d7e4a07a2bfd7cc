"""Models: the lightweight heads, SAM2 (imported only by ``sam2_backend``), and the two-mode FoodDetector.

Exports resolve lazily: importing this package imports neither torch nor ``sam2``, so the CLI
starts fast; SAM2 is loaded when it is first used.
"""
from __future__ import annotations

from foodlab._lazy import lazy_exports

_EXPORTS = {"FoodDetector": "foodlab.models.detector", "build_head": "foodlab.models.lightweight"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
