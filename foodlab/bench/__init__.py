"""Before/after benchmarks, declarative experiments and their MLflow reports.

Each benchmark module (``init_time``, ``throughput``, ``loader``, ``precision``, ``memory``,
``quality``) exposes ``run(scale, device, **overrides) -> list[record]`` and
``format_table(records)``; ``runner`` runs ``experiments/*.yaml`` against them and logs to
MLflow; ``report`` turns the logged runs into the before/after summary.
"""
from __future__ import annotations

from typing import Any, Mapping


def scale_config(benchmark: str, scales: Mapping[str, Mapping[str, Any]], scale: str,
                 overrides: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A benchmark's settings at ``scale`` with ``overrides`` on top; an unknown scale or override
    key is an error naming it (a typo in an experiment file must not silently measure the default)."""
    if scale not in scales:
        raise ValueError(f"{benchmark}: unknown scale {scale!r}; choose one of {', '.join(scales)}")
    cfg = {**(defaults or {}), **scales[scale]}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"{benchmark}: unknown overrides {', '.join(unknown)}; known: {', '.join(sorted(cfg))}")
    return {**cfg, **overrides}
