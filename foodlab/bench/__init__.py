"""Before/after benchmarks: one module per benchmark (``run(scale, device, variants, **settings)``),
``runner`` for the declarative ``experiments/*.yaml``, ``report`` for the summary from MLflow."""
