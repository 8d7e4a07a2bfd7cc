"""Checkpoints that lose nothing: atomic writes, RNG states, and stop-on-signal.

A checkpoint is one ``torch.save``d dict (model, optimizer, scaler, scheduler,
position, RNG states, MLflow run id). It is written to a temp file in the same
folder and ``os.replace``d, so a kill during the write leaves the previous file
intact. ``StopOnSignal`` turns SIGINT/SIGTERM into a flag that the loop polls at
the next optimizer-step boundary, where the state is consistent and can be saved.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared with teammates
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; ``weights_only`` because checkpoints hold only
    tensors and plain Python values (see ``rng_state``), so a shared checkpoint cannot run code."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop or a dataset may draw from: python, numpy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]  # plain values: weights_only-safe
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM set ``.signum`` instead of killing the process.

    The old handlers come back on exit. A second SIGINT while a stop is pending raises
    KeyboardInterrupt, so a stuck process can still be stopped by hand. Outside the
    main thread (where handlers cannot be installed) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the next step boundary, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def training_state(session: Any, epoch: int, batch: int, rng: dict[str, Any], extra: dict[str, Any]) -> dict:
    """Everything a resume needs; (epoch, batch) is the next batch to train (batch counts from 0)."""
    return {
        "model": session.raw_model.state_dict(), "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(), "scaler": session.scaler.state_dict(),
        "epoch": epoch, "batch": batch, "step": session.step, "rng": rng, **extra,
    }


def restore_training_state(path: str | Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Load ``path`` into the given objects and the global RNGs; returns the checkpoint for the rest."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt
