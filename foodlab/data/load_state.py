"""What loading a dataset has found so far, shared by the main process and its DataLoader workers.

Every DataLoader worker holds its own copy of the dataset, so what one process learns while
loading (a file is bad, a warning was given) is invisible to the others unless it goes through
something they share. ``LoadState`` keeps it in a scratch folder that the owning dataset object
removes when it is collected:

- ``states.u8``: one byte per sample (0 not loaded yet, 1 loaded fine, 2 bad), a ``MAP_SHARED``
  memmap that each process opens on first use, so the bad-fraction judgement sees every load;
- ``bad.log``: one ``path<TAB>reason`` line per bad file found in any process (appended with
  ``O_APPEND``, so lines land whole), so the report and the error summary are complete;
- ``once.<key>``: a warning given once across all processes (the first to create the file warns).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np

NOT_LOADED, LOADED, BAD = 0, 1, 2


class LoadState:
    def __init__(self, n: int):
        self.folder, self.n = tempfile.mkdtemp(prefix="foodlab_load_"), int(n)
        with open(os.path.join(self.folder, "states.u8"), "wb") as f:
            f.truncate(max(1, self.n))
        self._states = None
        # removed when this object is collected or the interpreter exits; copies in forked workers
        # (another pid) and unpickled copies (no finalizer) leave it alone
        weakref.finalize(self, _remove_own, self.folder, os.getpid())

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_states"] = None                    # memmaps are reopened, never pickled
        return state

    def states(self) -> np.ndarray:
        if self._states is None:
            self._states = np.memmap(os.path.join(self.folder, "states.u8"), np.uint8, "r+", shape=(max(1, self.n),))
        return self._states

    def mark(self, i: int, state: int) -> bool:
        """Set sample ``i``'s state; True the first time it reaches ``state`` (bad wins over loaded)."""
        states = self.states()
        if states[i] >= state:
            return False
        states[i] = state
        return True

    def is_bad(self, i: int) -> bool:
        return self.states()[i] == BAD

    def counts(self) -> tuple[int, int]:
        """(samples loaded fine, samples found bad) by every process so far."""
        counts = np.bincount(self.states()[:self.n], minlength=3)
        return int(counts[LOADED]), int(counts[BAD])

    def log_bad(self, path: str, reason: str) -> None:
        fd = os.open(os.path.join(self.folder, "bad.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{path}\t{reason}\n".encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)

    def logged_bad(self) -> list[tuple[str, str]]:
        try:
            with open(os.path.join(self.folder, "bad.log"), encoding="utf-8", errors="surrogateescape") as f:
                return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line]
        except OSError:
            return []

    def once(self, key: str) -> bool:
        """True for the first caller with ``key`` in any process, False for every later one."""
        try:
            os.close(os.open(os.path.join(self.folder, f"once.{key}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False
        except OSError:
            return True                            # scratch folder gone: rather warn twice than never


def _remove_own(folder: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)
