"""Which way a metric foodlab logs improves, read from its name: throughput and quality up; times,
memory and losses down. One rule for the registry's "best version" (``tracking.promote``) and the
benchmark reports (``bench.compare``)."""
from __future__ import annotations

HIGHER_IS_BETTER = ("_per_s", "largest_batch")  # name endings
QUALITY_WORDS = ("miou", "dice", "pixel_acc", "accuracy", "speedup")  # anywhere in the name


def higher_is_better(metric: str) -> bool:
    return metric.endswith(HIGHER_IS_BETTER) or any(w in metric for w in QUALITY_WORDS)
