"""Atomic file writes: a reader, or a process killed mid-write, never sees half a file.

Every file foodlab writes that something later trusts (manifests, cache metadata,
checkpoints, results) goes through ``atomic_write``: a temp file in the same folder,
flushed (and fsynced when asked), made readable by teammates (0644, where ``mkstemp``
gives 0600), then ``os.replace``d over the target. On any error the temp file is removed
and the previous file is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``; the file appears at ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
