"""Decoded-and-resized sample cache: epochs after the first skip JPEG/PNG decoding entirely.

Raw memmaps per (dataset fingerprint, image size, num_classes), one row per candidate pair of
the index (so a file found bad later moves no other sample): uint8 images (N,S,S,3), uint8 labels
(N,S,S), int64 stamps (N,4) (size and mtime of the image and the mask when the row was filled)
and a filled-flags array (N,). Samples are written lazily the first time they are loaded; the
flag is set after the data, so a reader never sees a half-written sample, and a row whose files'
stamps differ now (rewritten in place) is a miss.
Each process (main or DataLoader worker) opens the files itself in ``r+`` mode on first use —
memmaps are never pickled — and MAP_SHARED makes every process's writes visible to the others.
The files are sparse until filled; a full cache takes N x (4 S^2 + 33) bytes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from foodlab.atomic import write_text_atomic
from foodlab.data.layouts import default_cache_root

log = logging.getLogger(__name__)


class DecodedCache:
    def __init__(self, folder: str | Path, n: int, image_size: int):
        self.folder, self.n, self.size = Path(folder), int(n), int(image_size)
        self._maps = None
        self._create()

    @classmethod
    def for_dataset(cls, ds, base: str | Path | None = None) -> DecodedCache:
        base = Path(base) if base is not None else default_cache_root() / "decoded"
        # the _v suffix names the label mapping: bumped when it changes, so labels stored under an
        # older mapping are never served
        folder = base / f"{ds.fingerprint}_s{ds.image_size}_c{ds.num_classes}_v3"
        return cls(folder, len(ds.samples.folder), ds.image_size)

    def _shapes(self) -> dict:
        s, u8 = self.size, np.uint8
        return {"images.u8": (u8, (self.n, s, s, 3)), "labels.u8": (u8, (self.n, s, s)),
                "stamps.i8": (np.int64, (self.n, 4)), "filled.u8": (u8, (self.n,))}

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"n": self.n, "size": self.size}
        meta_path = self.folder / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
            raise ValueError(f"cache {self.folder} was made for {meta_path.read_text()}, not {meta}")
        for name, (dtype, shape) in self._shapes().items():
            path = self.folder / name
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.exists() or path.stat().st_size != nbytes:
                with open(path, "wb") as f:   # sparse: no disk used until written
                    f.truncate(nbytes)
        if not meta_path.exists():            # atomic: a reader never sees half a meta.json
            write_text_atomic(meta_path, json.dumps(meta))

    def _open(self):
        if self._maps is None:
            self._maps = {name.split(".")[0]: np.memmap(self.folder / name, dtype, "r+", shape=shape)
                          for name, (dtype, shape) in self._shapes().items()}
        return self._maps

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = None
        return state

    @staticmethod
    def stamp(image_path: str, mask_path: str) -> np.ndarray | None:
        """(size, mtime_ns) of both files (two stats); None when one is missing (never cached)."""
        try:
            a, b = os.stat(image_path), os.stat(mask_path)
        except OSError:
            return None
        return np.array([a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns], np.int64)

    def get(self, row: int, stamp: np.ndarray | None):
        m = self._open()
        if stamp is None or not m["filled"][row] or not np.array_equal(m["stamps"][row], stamp):
            return None
        return np.array(m["images"][row]), np.array(m["labels"][row])

    def put(self, row: int, image: np.ndarray, labels: np.ndarray, stamp: np.ndarray | None) -> None:
        if stamp is None:
            return
        m = self._open()
        m["filled"][row] = 0           # a reader of the old row sees a miss while it is rewritten
        m["images"][row] = image
        m["labels"][row] = labels
        m["stamps"][row] = stamp
        m["filled"][row] = 1

    def filled(self) -> int:
        return int(np.count_nonzero(self._open()["filled"]))

    def flush(self) -> None:
        if self._maps is not None:
            for mm in self._maps.values():
                mm.flush()

    def __repr__(self) -> str:
        return f"DecodedCache({self.folder}, n={self.n}, size={self.size})"

