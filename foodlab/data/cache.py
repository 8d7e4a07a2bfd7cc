"""Decoded-and-resized sample cache: epochs after the first skip JPEG/PNG decoding entirely.

Three raw memmaps per (dataset fingerprint, image size, num_classes): uint8 images (N,S,S,3),
uint8 labels (N,S,S) and a filled-flags array (N,). Samples are written lazily the first time
they are loaded; the flag is set after the data, so a reader never sees a half-written sample.
Each process (main or DataLoader worker) opens the files itself in ``r+`` mode on first use —
memmaps are never pickled — and MAP_SHARED makes every process's writes visible to the others.
The files are sparse until filled; a full 70,700 x 512 x 512 cache takes ~74 GB.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from foodlab.data.layouts import default_cache_root

log = logging.getLogger(__name__)


class DecodedCache:
    def __init__(self, folder: str | Path, n: int, image_size: int):
        self.folder, self.n, self.size = Path(folder), int(n), int(image_size)
        self._maps = None
        self._create()

    @classmethod
    def for_dataset(cls, ds, base: str | Path | None = None) -> "DecodedCache":
        base = Path(base) if base is not None else default_cache_root() / "decoded"
        folder = base / f"{ds.fingerprint}_s{ds.image_size}_c{ds.num_classes}"
        return cls(folder, len(ds), ds.image_size)

    def _shapes(self) -> dict:
        s = self.size
        return {"images.u8": (self.n, s, s, 3), "labels.u8": (self.n, s, s), "filled.u8": (self.n,)}

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"n": self.n, "size": self.size}
        meta_path = self.folder / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
            raise ValueError(f"cache {self.folder} was made for {meta_path.read_text()}, not {meta}")
        for name, shape in self._shapes().items():
            path = self.folder / name
            nbytes = int(np.prod(shape))
            if not path.exists() or path.stat().st_size != nbytes:
                with open(path, "wb") as f:   # sparse: no disk used until written
                    f.truncate(nbytes)
        meta_path.write_text(json.dumps(meta))

    def _open(self):
        if self._maps is None:
            self._maps = {name.split(".")[0]: np.memmap(self.folder / name, np.uint8, "r+", shape=shape)
                          for name, shape in self._shapes().items()}
        return self._maps

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = None
        return state

    def get(self, i: int):
        m = self._open()
        if not m["filled"][i]:
            return None
        return np.array(m["images"][i]), np.array(m["labels"][i])

    def put(self, i: int, image: np.ndarray, labels: np.ndarray) -> None:
        m = self._open()
        m["images"][i] = image
        m["labels"][i] = labels
        m["filled"][i] = 1

    def filled(self) -> int:
        return int(np.count_nonzero(self._open()["filled"]))

    def flush(self) -> None:
        if self._maps is not None:
            for mm in self._maps.values():
                mm.flush()

    def __repr__(self) -> str:
        return f"DecodedCache({self.folder}, n={self.n}, size={self.size})"


def cache_bytes(n: int, image_size: int) -> int:
    """Disk the cache needs once full."""
    return n * (image_size * image_size * 4 + 1)


def free_bytes(folder: str | Path) -> int:
    st = os.statvfs(Path(folder))
    return st.f_bavail * st.f_frsize
