"""Before/after benchmarks, declarative experiments and their MLflow reports.

Each benchmark module (``init_time``, ``throughput``, ``loader``, ``precision``, ``memory``,
``quality``) exposes ``run(scale, device, **overrides) -> list[record]`` and
``format_table(records)``; ``runner`` runs ``experiments/*.yaml`` against them and logs to
MLflow; ``report`` turns the logged runs into the before/after summary.
"""
