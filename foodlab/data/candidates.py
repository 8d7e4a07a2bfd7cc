"""A dataset's candidate pairs and the index built from them: the types every index strategy shares.

A *candidate* is an image with a mask of the same stem in the matching mask folder. Every index
strategy lists the same candidates (``list_candidates`` or its own walk) and reports which it keeps
as ``SampleList.rows``. The fingerprint covers the candidates, not the verdicts, so a file found bad
later does not change a dataset's identity or invalidate its decoded cache.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from foodlab.data.layouts import IMAGE_EXTS, MASK_EXTS, Layout


class Names:
    """Many file names as one bytes blob plus offsets: quick to build, small to store and pickle."""

    def __init__(self, blob: bytes, starts: np.ndarray):
        self.blob, self.starts = blob, starts        # starts has len + 1 entries

    @classmethod
    def from_list(cls, names: list[str]) -> Names:
        blob = "\n".join(names).encode("utf-8", "surrogateescape") + b"\n"
        ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) if names else np.zeros(0, np.int64)
        return cls(blob, np.concatenate([[0], ends + 1]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.starts[i]:self.starts[i + 1] - 1].decode("utf-8", "surrogateescape")

    def tolist(self) -> list[str]:
        return self.blob[:-1].decode("utf-8", "surrogateescape").split("\n") if len(self) else []


class SampleList(Sequence):
    """``(image_path, mask_path)`` of the kept candidate pairs, built on access from compact arrays.

    ``folder[r]``, ``image_names[r]`` and ``mask_names[r]`` describe candidate ``r``; ``rows`` are the
    candidates kept, so sample ``i`` is candidate ``rows[i]``.
    """

    def __init__(self, *, image_dirs: Sequence[str], mask_dirs: Sequence[str], folder: np.ndarray,
                 image_names: Names, mask_names: Names, rows: np.ndarray):
        self.image_dirs, self.mask_dirs = list(image_dirs), list(mask_dirs)
        self.folder, self.image_names, self.mask_names, self.rows = folder, image_names, mask_names, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.candidate(int(self.rows[i]))

    def candidate(self, r: int) -> tuple[str, str]:
        f = int(self.folder[r])
        return (os.path.join(self.image_dirs[f], self.image_names[r]),
                os.path.join(self.mask_dirs[f], self.mask_names[r]))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"SampleList({len(self)} pairs)"


@dataclass
class Candidates:
    """What one walk over the folders found: parallel lists, one entry per candidate pair."""

    folder: list[int]                  # index into layout.folders
    images: list[str]                  # image file names
    masks: list[str]                   # mask file names
    skipped: list[tuple[str, str]]     # (path, reason): images without a usable mask, duplicate stems, ...
    n_found: int                       # images found (candidates + skipped images)
    ok: list[bool] | None = None       # per candidate: passed the strategy's check (None: not checked)


@dataclass
class Index:
    """The result of indexing a dataset: kept samples, what was skipped and why, and the dataset's identity."""

    samples: SampleList
    skipped: list[tuple[str, str]]     # (path, reason)
    fingerprint: str
    strategy: str
    source: str = "scan"               # scan | manifest
    manifest_path: Path | None = None
    n_found: int = 0                   # images found (kept + skipped), for the bad-fraction check
    checked: np.ndarray | None = None  # uint8 per candidate: content checked (and passed) at index time
    bad: list[dict] = field(default_factory=list)   # manifest: files known bad (root-relative path, reason, stat)
    scan_skipped: list[tuple[str, str]] = field(default_factory=list)   # manifest: (root-relative path, reason)


def _list(folder: str, exts: tuple[str, ...]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """stem -> file name for files with one of ``exts`` (any case); duplicate stems are reported.

    Names only (``os.listdir``): a sub-folder with an image extension fails when loaded.
    """
    quick = exts + tuple(e.upper() for e in exts)
    names = [n for n in os.listdir(folder)
             if (n.endswith(quick) or n.lower().endswith(exts)) and n[0] != "." and "\n" not in n]
    found = {n[:n.rfind(".")]: n for n in names}
    dupes = []
    if len(found) < len(names):      # keep the first name in sorted order, whatever the listing order
        found = {}
        for n in sorted(names):
            stem = n[:n.rfind(".")]
            if stem in found:
                dupes.append((os.path.join(folder, n), f"duplicate stem {stem!r} (kept {found[stem]})"))
            else:
                found[stem] = n
    return found, dupes


def list_candidates(layout: Layout) -> Candidates:
    """One directory listing per folder, names only: every image with a mask of the same stem."""
    found = Candidates(folder=[], images=[], masks=[], skipped=[], n_found=0)
    for f, fp in enumerate(layout.folders):
        imgs, dupes = _list(str(fp.image_dir), IMAGE_EXTS)
        msks, _ = _list(str(fp.mask_dir), MASK_EXTS)
        found.skipped += dupes
        found.n_found += len(imgs) + len(dupes)
        stems = sorted(imgs.keys() & msks.keys())
        found.skipped += [(os.path.join(fp.image_dir, imgs[s]), "missing mask")
                          for s in sorted(imgs.keys() - msks.keys())]
        found.folder += [f] * len(stems)
        found.images += [imgs[s] for s in stems]
        found.masks += [msks[s] for s in stems]
    return found


def layout_folders(layout: Layout, relative: bool = False) -> tuple[list[str], list[str]]:
    """The layout's image and mask folders as the user opened them (or relative to the root: the
    fingerprint, so moving or renaming a dataset keeps its identity and caches)."""
    def name(p: Path) -> str:
        return str(p.relative_to(layout.root)) if relative else str(p)
    return [name(fp.image_dir) for fp in layout.folders], [name(fp.mask_dir) for fp in layout.folders]


def fingerprint(layout: Layout, folder: np.ndarray, image_names: Names, mask_names: Names) -> str:
    h = hashlib.sha1()
    for part in layout_folders(layout, relative=True):
        h.update("\0".join(part).encode() + b"\1")
    for a in (np.ascontiguousarray(folder).tobytes(), image_names.blob, mask_names.blob):
        h.update(len(a).to_bytes(8, "little") + a)
    return h.hexdigest()[:16]


def sample_list(layout: Layout, *, folder: np.ndarray, image_names: Names, mask_names: Names,
                rows: np.ndarray) -> SampleList:
    """Samples whose paths start at the layout's folders as opened now (the data may have moved)."""
    image_dirs, mask_dirs = layout_folders(layout)
    return SampleList(image_dirs=image_dirs, mask_dirs=mask_dirs, folder=folder, image_names=image_names,
                      mask_names=mask_names, rows=rows)


def make_index(layout: Layout, strategy: str, found: Candidates) -> Index:
    """The index of ``found``: every candidate kept unless ``found.ok`` says it failed."""
    folder = np.array(found.folder, np.int16)
    image_names, mask_names = Names.from_list(found.images), Names.from_list(found.masks)
    rows = np.flatnonzero(found.ok) if found.ok is not None else np.arange(len(folder))
    return Index(samples=sample_list(layout, folder=folder, image_names=image_names, mask_names=mask_names,
                                     rows=rows),
                 skipped=found.skipped, fingerprint=fingerprint(layout, folder, image_names, mask_names),
                 strategy=strategy, n_found=found.n_found)
