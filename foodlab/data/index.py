"""Listing a dataset's image/mask pairs: three index strategies that the init benchmark compares.

- ``decode``: decode every image and mask with cv2 and keep what decodes (slow, and a truncated
  JPEG still decodes, so it also lets broken files through).
- ``stat``: ``Path.exists()`` for the mask and ``st_size > 0`` for both files, per pair.
- ``manifest`` (default): one directory listing per folder and pairing by stem, nothing per file,
  written to a manifest (``manifest.py``) that later opens load in one read. Each file's content
  check (``validity.py``) runs when the file is loaded, on bytes the load reads anyway. A file
  found bad there is remembered, and every later open skips it at index time. ``verify=True``
  checks every pair not checked yet now (one open and read per file), plus the files known to be
  bad, so a file fixed in place comes back; a plain re-open trusts the manifest.

Caveat: on filesystems with coarse (1-2 s) folder timestamps, a file added in the same tick as
the previous change can go unnoticed; ``rescan=True`` forces a fresh listing.
"""
from __future__ import annotations

import os
from pathlib import Path

from foodlab.data.candidates import Candidates, Index, list_candidates, make_index
from foodlab.data.layouts import IMAGE_EXTS, MASK_EXTS, Layout
from foodlab.data.manifest import build_manifest
from foodlab.data.validity import check_bad_fraction
from foodlab.errors import UsageError

STRATEGIES = ("decode", "stat", "manifest")


def _index_stat(layout: Layout) -> Candidates:
    """Per image: find its mask with ``Path.exists()``, then ``stat()`` both and keep non-empty pairs."""
    found = Candidates(folder=[], images=[], masks=[], skipped=[], n_found=0, ok=[])
    for f, fp in enumerate(layout.folders):
        for name in sorted(os.listdir(fp.image_dir)):
            img = Path(fp.image_dir) / name
            if name.startswith(".") or img.suffix.lower() not in IMAGE_EXTS:
                continue
            found.n_found += 1
            msk = next((p for p in (Path(fp.mask_dir) / (img.stem + e) for e in MASK_EXTS) if p.exists()), None)
            if msk is None:
                found.skipped.append((str(img), "missing mask"))
                continue
            ist, mst = img.stat(), msk.stat()
            found.folder.append(f), found.images.append(name), found.masks.append(msk.name)
            found.ok.append(ist.st_size > 0 and mst.st_size > 0)
            if not found.ok[-1]:
                found.skipped.append((str(img if ist.st_size == 0 else msk), "empty file (0 bytes)"))
    return found


def _index_decode(layout: Layout) -> Candidates:
    """Decode every candidate's image and mask; keep the pairs where both decode."""
    import cv2

    found = list_candidates(layout)
    found.ok = []
    for f, i, m in zip(found.folder, found.images, found.masks):
        img = os.path.join(layout.folders[f].image_dir, i)
        msk = os.path.join(layout.folders[f].mask_dir, m)
        bad = None
        if cv2.imread(img, cv2.IMREAD_COLOR) is None:
            bad = (img, "cannot decode image")
        elif cv2.imread(msk, cv2.IMREAD_UNCHANGED) is None:
            bad = (msk, "cannot decode mask")
        found.ok.append(bad is None)
        if bad is not None:
            found.skipped.append(bad)
    return found


def build_index(layout: Layout, strategy: str = "manifest", rescan: bool = False, workers: int | None = None,
                check_bad: bool = True, verify: bool = False) -> Index:
    """List ``layout``'s pairs with ``strategy``; raises DatasetError when most files are bad.

    ``verify`` (manifest only; decode and stat always check) runs the full content check now instead
    of as each file is loaded.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown index strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "manifest":
        index = build_manifest(layout, rescan=rescan, verify=verify,
                               workers=workers or min(4, 2 * (os.cpu_count() or 1)))
    else:
        index = make_index(layout, strategy, _index_stat(layout) if strategy == "stat" else _index_decode(layout))
    if check_bad:
        check_bad_fraction(index, layout.root)
    return index
