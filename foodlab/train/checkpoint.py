"""Checkpoints that lose nothing: atomic writes, a kept previous checkpoint, RNG states, stop-on-signal.

A checkpoint is one ``torch.save``d dict (model, optimizer, scaler, scheduler,
position, RNG states, MLflow run id). It is written with ``atomic_write`` (temp file in
the same folder, fsynced, ``os.replace``d), so a kill or a full disk during the write
leaves the previous file intact; with ``previous=`` the file it replaces is kept there,
so a checkpoint damaged later (a copy cut short) still has a good one beside it.
``StopOnSignal`` turns SIGINT/SIGTERM into a flag that the loop polls at the next
optimizer-step boundary, where the state is consistent and can be saved.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foodlab.atomic import atomic_write
from foodlab.errors import FoodlabError

log = logging.getLogger(__name__)


class CheckpointDamaged(FoodlabError):
    """A checkpoint file cannot be read back (empty, cut short, not a checkpoint)."""


class CheckpointWriteFailed(FoodlabError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is left as it was."""


def save_checkpoint(state: dict[str, Any], path: str | Path, previous: str | Path | None = None) -> Path:
    """Write ``state`` to ``path`` atomically; with ``previous``, the file it replaces moves there.

    The new file is complete on disk before anything is renamed, so at every moment a
    good checkpoint exists under ``path`` or ``previous``.
    """
    path = Path(path)
    target = path.with_name(f"{path.name}.new") if previous is not None else path
    try:
        with atomic_write(target, "wb", fsync=True) as f:
            torch.save(state, f)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CheckpointWriteFailed(
                f"no space left on device while writing {path}; the previous checkpoint is intact") from exc
        raise CheckpointWriteFailed(f"could not write {path} ({exc.strerror or exc}); "
                                    "the previous checkpoint is intact") from exc
    except RuntimeError as exc:  # torch reports a failed write of its zip container as a RuntimeError
        raise CheckpointWriteFailed(f"could not write {path} ({str(exc).splitlines()[0]}); is the disk full? "
                                    "the previous checkpoint is intact") from exc
    if previous is not None:
        if path.exists():
            os.replace(path, previous)
        os.replace(target, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; ``weights_only`` because checkpoints hold only
    tensors and plain Python values (see ``rng_state``), so a shared checkpoint cannot run code.

    A file that cannot be read back raises ``CheckpointDamaged`` naming it.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointDamaged(f"checkpoint {path} is damaged: the file is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointDamaged(f"checkpoint {path} is damaged (truncated or not a checkpoint: {reason})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointDamaged(f"checkpoint {path} is damaged: it holds a {type(ckpt).__name__}, not a dict")
    return ckpt


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

    def __enter__(self) -> StopOnSignal:
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


def restore_training_state(ckpt: dict[str, Any], model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Load checkpoint ``ckpt`` into the given objects and the global RNGs; returns it for the rest."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return ckpt
