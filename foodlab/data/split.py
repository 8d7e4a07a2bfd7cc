"""A validation holdout that stays put when the data changes.

Each image's side of the split is a seeded hash of its root-relative path, compared with the
fraction asked for. So membership depends on that file alone: adding, removing or skipping
(found bad) other files moves no image across the split, and a run resumed after data was added
never trains on its own validation images. The validation share is close to ``val_fraction``
(each file lands there with that probability), not exact; with ``n > 1`` there is always at least
one validation and one training sample.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from foodlab.errors import UsageError

_SCALE = float(2**64)


def _draw(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from ``seed`` and ``key`` alone (the same on every machine and run)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / _SCALE


def holdout_keys(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices) into ``keys``: key ``k`` is held out when its seeded draw < ``val_fraction``."""
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    draws = [_draw(k, seed) for k in keys]
    val = [i for i, d in enumerate(draws) if d < val_fraction]
    if len(keys) > 1 and val_fraction > 0:
        if not val:                               # too few files for the fraction: the lowest draw
            val = [min(range(len(keys)), key=draws.__getitem__)]
        elif len(val) == len(keys):               # keep one for training: the highest draw
            val.remove(max(val, key=draws.__getitem__))
    held = set(val)
    return [i for i in range(len(keys)) if i not in held], val


def holdout(dataset, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices) into ``dataset`` (a ``FoodSegDataset``), by each image's root-relative path."""
    return holdout_keys(dataset.relative_paths(), val_fraction, seed)
