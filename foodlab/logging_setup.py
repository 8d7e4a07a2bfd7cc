"""Configure logging once, in entry points (CLI, notebooks call it too)."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO, log_file: str | Path | None = None) -> None:
    """Console handler always; a file handler when ``log_file`` is given (its folder is created)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_foodlab", False) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        console._foodlab = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if log_file is not None:
        path = Path(log_file).resolve()
        if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(handler)
    for noisy in ("matplotlib", "PIL", "urllib3", "alembic", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def log_to_file(path: str | Path, level: int = logging.INFO) -> Iterator[Path]:
    """Send log records to ``path`` for the duration of the block (one training run's own log), then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
