"""Models: the lightweight heads, SAM2 (imported only by ``sam2_backend``), the two-mode FoodDetector,
and the MLflow Model flavor."""
