"""Models: the lightweight heads, SAM2 (imported only by ``sam2_backend``), and the two-mode FoodDetector.

Importing this package does not import ``sam2``: it is loaded when SAM2 is first used.
"""
from foodlab.models.detector import FoodDetector
from foodlab.models.lightweight import build_head

__all__ = ["FoodDetector", "build_head"]
