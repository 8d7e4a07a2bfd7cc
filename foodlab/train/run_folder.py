"""One folder per training run, locked while the run writes it.

``<out_dir>/<experiment>/<run name or UTC start time>-<MLflow run id[:8]>/`` (no id part
without tracking) holds the run's checkpoints and its own log:

- ``last.pt``: where training stands (every epoch and on a stop signal), for ``--resume``;
- ``previous.pt``: the ``last.pt`` before it, so a damaged ``last.pt`` still leaves a good one;
- ``best.pt``: the epoch with the best validation mIoU *of this run*;
- ``model.pt``: the final model; ``training.log``: this run's log lines only.

A second process cannot write a folder in use: ``RunFolder`` holds an exclusive lock
(``filelock``, released by the OS if the process dies) and names the holder's pid when
it is taken. ``find_run`` turns what ``--resume`` was given (nothing, a folder, an MLflow
run id) into the folder to continue.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from foodlab.errors import FoodlabError, UsageError
from foodlab.train.checkpoint import CheckpointDamaged, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LATEST = "latest"


class RunFolderInUse(FoodlabError):
    """Another process holds the run folder's lock."""


class RunFolder:
    """A run's folder, locked for as long as this object is open (``close()`` or ``with``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.path / ".lock", timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunFolderInUse(f"run folder {self.path} is in use by {_holder(self.path)}; wait for that run to "
                                 "end (or stop it), or start a new run without --resume") from None
        (self.path / ".lock.owner").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    @classmethod
    def create(cls, out_dir: str | Path, experiment: str, run_name: str | None, run_id: str | None) -> RunFolder:
        """A new folder named for people: run name (or the UTC start time) and the MLflow run id's first 8 chars."""
        stem = run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = f"{stem}-{run_id[:8]}" if run_id else stem
        base = Path(out_dir) / experiment
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):  # same run name without tracking, or two starts in one second
            path = base / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()  # atomic: of two processes starting at once, one gets each name
            except FileExistsError:
                continue
            return cls(path)
        raise FoodlabError(f"{base} already holds 9,999 runs named {name}*; pick another --run-name")

    last = property(lambda self: self.path / "last.pt")
    previous = property(lambda self: self.path / "previous.pt")
    best = property(lambda self: self.path / "best.pt")
    model = property(lambda self: self.path / "model.pt")
    log_file = property(lambda self: self.path / "training.log")

    def save_last(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.last, previous=self.previous)

    def save_best(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.best)

    def load_last(self) -> dict[str, Any]:
        """The newest good checkpoint: ``last.pt``, or ``previous.pt`` with a warning when ``last.pt`` is damaged.

        A damaged ``last.pt`` is renamed ``last.pt.damaged`` (kept for a look, never rotated over the good one).
        """
        damaged: CheckpointDamaged | None = None
        pending = self.last.with_name("last.pt.new")   # complete on disk: save_checkpoint stopped between renames
        if pending.exists() and not self.last.exists():
            os.replace(pending, self.last)
            log.warning("finished moving the newest checkpoint into place: %s", self.last)
        if self.last.exists():
            try:
                return load_checkpoint(self.last)
            except CheckpointDamaged as exc:
                damaged = exc
        if not self.previous.exists():
            if damaged is not None:
                raise CheckpointDamaged(f"{damaged}; there is no previous checkpoint in {self.path} to continue "
                                        "from: start a new run") from None
            raise UsageError(f"--resume: {self.path} holds no checkpoint (last.pt) to continue from")
        ckpt = load_checkpoint(self.previous)
        if damaged is not None:
            os.replace(self.last, self.last.with_name("last.pt.damaged"))
            log.warning("%s; continuing from the previous good checkpoint %s (step %d); the damaged file is kept as "
                        "last.pt.damaged", damaged, self.previous, ckpt.get("step", 0))
        else:
            log.warning("no last.pt in %s; continuing from the previous checkpoint %s (step %d)", self.path,
                        self.previous, ckpt.get("step", 0))
        return ckpt

    def close(self) -> None:
        if self._lock.is_locked:
            (self.path / ".lock.owner").unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _holder(path: Path) -> str:
    try:
        owner = json.loads((path / ".lock.owner").read_text())
        return f"process {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def _has_checkpoint(folder: Path) -> bool:
    return (folder / "last.pt").exists() or (folder / "previous.pt").exists()


def find_run(out_dir: str | Path, experiment: str, resume: str | bool) -> Path:
    """The run folder ``--resume`` means: ``latest`` (or True: the experiment's newest run), a folder, or an
    MLflow run id."""
    out_dir = Path(out_dir)
    if resume is True or resume == LATEST:
        runs = [p for p in (out_dir / experiment).glob("*") if p.is_dir() and _has_checkpoint(p)]
        if not runs:
            raise UsageError(f"--resume: no run of experiment {experiment!r} under {out_dir / experiment} to "
                             "continue; start one without --resume, or pass a run folder or MLflow run id")
        return max(runs, key=lambda p: max(f.stat().st_mtime for f in p.glob("*.pt")))
    given = Path(resume)
    if given.is_dir():
        if not _has_checkpoint(given):
            raise UsageError(f"--resume {resume}: that folder holds no last.pt; pass a run folder under {out_dir}")
        return given
    matches = [p for p in out_dir.glob(f"*/*-{resume[:8]}*") if p.is_dir() and _has_checkpoint(p)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"--resume {resume}: several run folders match ({', '.join(map(str, matches))}); "
                         "pass the folder")
    raise UsageError(f"--resume {resume}: no run folder or MLflow run with that id under {out_dir}; "
                     f"pass a folder such as {out_dir}/<experiment>/<run>")
