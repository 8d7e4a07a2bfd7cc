"""FoodSegDataset: image/mask pairs -> (image float32 (3,S,S) RGB in [0,1], mask int64 (S,S)).

Opening is cheap (see ``index.py``); decoding happens lazily in ``__getitem__``. A bad
sample never crashes training by default: ``on_bad="resample"`` returns a deterministic
alternate valid sample and records the bad file; ``"dummy"`` returns a blank sample (all
background); ``"raise"`` fails naming the file and the reason.

Every load runs the content check the default index leaves for later (``validity.check_bytes``:
format from the magic bytes, JPEG/PNG structure, a complete decode) on the bytes it has just read,
so the check reads nothing extra. A file found bad is remembered in
the manifest (``manifest.remember_bad``) and skipped at index time by every later open. A dataset
where most loaded samples are bad raises ``DatasetError`` instead of training on the rest.

DataLoader workers each hold a copy of the dataset; what any of them finds (bad files, which
samples loaded) goes through a shared ``LoadState`` (``load_state.py``), so ``bad_report()`` and
``check_bad_fraction()`` in the main process see every worker's loads.
"""
from __future__ import annotations

import collections
import logging
import random
import threading
from pathlib import Path, PurePath

import cv2
import numpy as np
import torch

from foodlab.data.candidates import layout_folders
from foodlab.data.index import build_index
from foodlab.data.layouts import resolve_layout
from foodlab.data.load_state import BAD, LOADED, LoadState
from foodlab.data.manifest import remember_bad
from foodlab.data.validity import BAD_FRACTION_LIMIT, DatasetError, check_bytes, read_problem, summarize_reasons
from foodlab.errors import UsageError
from foodlab.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

ON_BAD = ("resample", "dummy", "raise")
MAX_RESAMPLE_TRIES = 20
MIN_LOADED_FOR_FRACTION = 200   # samples loaded before loading judges the bad fraction by itself (or all of them)


class BadSample(DatasetError):
    """One unusable file, with why. A DatasetError, so it reaches the command line as one line; one-argument
    construction is what torch uses to re-raise it from a DataLoader worker."""

    def __init__(self, path: str, reason: str | None = None):
        super().__init__(f"{path}: {reason}" if reason is not None else str(path))
        self.path, self.reason = (str(path), reason) if reason is not None else ("", str(path))


def _read_checked(path: str, flags: int, what: str) -> np.ndarray:
    """Read ``path`` and run the content check on its bytes, keeping the decode; raises BadSample."""
    prefix = "" if what == "image" else f"{what} "
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        problem = read_problem(path, e)
        raise BadSample(path, f"missing {what}" if problem == "missing file" else prefix + problem) from None
    checked = check_bytes(data, flags)
    if checked.problem is not None:
        raise BadSample(path, prefix + checked.problem)
    return checked.image


def read_image(path) -> np.ndarray:
    """Decode to uint8 RGB (H,W,3), honouring EXIF orientation; grayscale, RGBA, CMYK and 16-bit handled.

    ``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR`` keeps 16-bit and grayscale data and, unlike
    ``IMREAD_UNCHANGED``, still applies the EXIF orientation tag.
    """
    img = _read_checked(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR, "image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255 / 65535) + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255 if img.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str, channel: str | None = None) -> np.ndarray:
    """Class ids (H,W): the red channel for UECFoodPix (cv2 gives BGR, so index 2), else the first."""
    mask = _read_checked(str(path), cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3:
        mask = mask[..., 2] if channel == "red" else mask[..., 0]
    return mask


class FoodSegDataset(torch.utils.data.Dataset):
    """Image/mask pairs under ``root`` (layouts: see ``layouts.py``; index strategies: see ``index.py``).

    ``num_classes`` counts the background: 1 gives a binary food mask (0 background, 1 food for any
    other id); C > 1 keeps ids 0..C-1 and maps larger ids to IGNORE_INDEX (255) — for synthetic data
    made with ``classes=8`` use ``num_classes=9``. Pixels that are IGNORE_INDEX in the mask file stay
    IGNORE_INDEX in either mode: they mark "unknown", which the loss and the metrics skip, not food.
    Images are squashed to ``image_size`` squared (area/bilinear), masks resized nearest-neighbour. ``cache``: a
    folder (or True for the default) for the decoded cache (``cache.py``). ``rescan=True`` ignores an existing
    manifest. ``verify=True`` runs the content check on every file now (an open and a read per file) instead of as
    each is loaded.
    """

    def __init__(self, root, split: str | None = None, layout: str = "auto", index: str = "manifest",
                 image_size: int = 512, num_classes: int = 1, on_bad: str = "resample", cache=None,
                 augment: bool = False, rescan: bool = False, verify: bool = False):
        if on_bad not in ON_BAD:
            raise UsageError(f"unknown on_bad {on_bad!r}; choose one of {', '.join(ON_BAD)}")
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        self.root, self.split = Path(root), split
        self.image_size, self.num_classes = int(image_size), int(num_classes)
        self.on_bad, self.augment = on_bad, augment
        self.layout = resolve_layout(self.root, layout, split)
        idx = build_index(self.layout, index, rescan=rescan, verify=verify)
        self.index_strategy, self.index_source = idx.strategy, idx.source
        self.samples, self.fingerprint, self.manifest_path = idx.samples, idx.fingerprint, idx.manifest_path
        self.skipped: list[tuple[str, str]] = list(idx.skipped)
        self._n_index_skipped = len(idx.skipped)
        self._n_index_bad = idx.n_found - len(idx.samples)    # images found but not kept at index time
        self._load = LoadState(len(self.samples))              # shared with DataLoader workers
        self._warned_class_ids = False
        self._lock = threading.Lock()
        self.cache = None
        if cache:
            from foodlab.data.cache import DecodedCache
            self.cache = DecodedCache.for_dataset(self, None if cache is True else cache)
        log.debug("%s: %d samples (%s, %s), %d skipped", self.root, len(self.samples), idx.strategy,
                  idx.source, len(self.skipped))

    def __len__(self) -> int:
        return len(self.samples)

    def relative_paths(self) -> list[str]:
        """Each sample's image path relative to the dataset root, with ``/`` separators: a name for the
        file that survives moving the dataset (``split.holdout`` hashes it)."""
        dirs = [PurePath(d).as_posix() for d in layout_folders(self.layout, relative=True)[0]]
        s = self.samples
        return [f"{dirs[int(s.folder[r])]}/{s.image_names[int(r)]}" for r in s.rows]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ loading

    def load_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` decoded and resized: (uint8 RGB (S,S,3), uint8 labels (S,S)); raises BadSample."""
        img_path, mask_path = self.samples[i]
        img = read_image(img_path)
        mask = read_mask(mask_path, self.layout.mask_channel)
        self._warn_unknown_ids(mask, mask_path)
        if mask.shape[:2] != img.shape[:2]:
            raise BadSample(mask_path, f"mask size {mask.shape[1]}x{mask.shape[0]} != "
                                       f"image size {img.shape[1]}x{img.shape[0]}")
        s = self.image_size
        if img.shape[:2] != (s, s):
            shrink = img.shape[0] > s and img.shape[1] > s
            img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_NEAREST)
        return img, self._labels(mask)

    def _warn_unknown_ids(self, mask: np.ndarray, mask_path: str) -> None:
        """Name the first mask with class ids >= num_classes (once across all processes): training ignores
        those pixels, and a 104-class mask read with ``num_classes=8`` is a mistake worth seeing."""
        if self.num_classes == 1 or self._warned_class_ids:
            return
        unknown = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if unknown.any():
            self._warned_class_ids = True
            if self._load.once("class-ids"):
                log.warning("mask %s has class ids %s (%d pixels) >= num_classes=%d; they are ignored in training "
                            "(does num_classes count every class of this dataset plus the background?); "
                            "warned once", mask_path, np.unique(mask[unknown]).tolist(), int(unknown.sum()),
                            self.num_classes)

    def _labels(self, mask: np.ndarray) -> np.ndarray:
        """Class ids as training sees them: ids the model has no class for become IGNORE_INDEX, and
        IGNORE_INDEX stays IGNORE_INDEX (binary too: an unlabelled pixel is not food)."""
        if self.num_classes == 1:
            return np.where(mask == IGNORE_INDEX, IGNORE_INDEX, mask > 0).astype(np.uint8)
        return np.where(mask >= self.num_classes, IGNORE_INDEX, mask).astype(np.uint8)

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        wanted = i
        for attempt in range(MAX_RESAMPLE_TRIES + 1):
            if attempt == 0 or not self._load.is_bad(i):     # a stand-in known bad is not read again
                try:
                    img, labels = self._get_arrays(i)
                    break
                except BadSample as e:
                    self._record_bad(i, e)
                    if self.on_bad == "raise":
                        raise BadSample(e.path, e.reason) from None
                    if self.on_bad == "dummy":
                        s = self.image_size
                        return torch.zeros(3, s, s), torch.zeros(s, s, dtype=torch.int64)
            i = self._alternate(wanted, attempt)
        else:
            raise DatasetError(f"{MAX_RESAMPLE_TRIES} consecutive bad samples while resampling; "
                               f"the dataset looks mostly broken: {summarize_reasons(self.bad_files())}")
        if self._load.mark(i, LOADED):
            self._judge_bad_fraction(final=False)
        if not (labels != IGNORE_INDEX).any() and self._load.once(f"no-labels.{i}"):
            log.warning("mask %s: every pixel is %d (ignore), so the sample adds nothing to the loss",
                        self.samples[i][1], IGNORE_INDEX)
        if self.augment and torch.rand(()) < 0.5:
            img, labels = img[:, ::-1], labels[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        return image, torch.from_numpy(np.ascontiguousarray(labels)).long()

    def _get_arrays(self, i: int):
        if self.cache is None:
            return self.load_arrays(i)
        row = int(self.samples.rows[i])
        stamp = self.cache.stamp(*self.samples[i])    # a file rewritten in place is never served stale
        hit = self.cache.get(row, stamp)
        if hit is not None:
            return hit
        img, labels = self.load_arrays(i)
        self.cache.put(row, img, labels, stamp)
        return img, labels

    def _alternate(self, i: int, attempt: int) -> int:
        """The stand-in for bad sample ``i`` at ``attempt``: a function of the two alone, so every process
        and every run resamples alike, whatever else it already knows to be bad."""
        return random.Random(i * 1_000_003 + attempt).randrange(len(self))

    # ------------------------------------------------------------ bad-file bookkeeping

    def _record_bad(self, i: int, e: BadSample) -> None:
        with self._lock:
            first = self._load.mark(i, BAD)
            if first:
                self.skipped.append((e.path, e.reason))
        if not first:
            return
        log.warning("bad sample %s: %s", e.path, e.reason)
        remember_bad(self.manifest_path, self.layout.root, e.path, e.reason)
        self._load.log_bad(e.path, e.reason)      # every process's finds, for the report and the judgement
        self._judge_bad_fraction(final=False)

    def check_bad_fraction(self) -> None:
        """Raise DatasetError (with the reasons) when more than half of the images seen so far are bad.

        Counts every load in every process (DataLoader workers included) plus the images skipped when
        the dataset was opened. Loading judges this by itself once enough samples were loaded; a
        training loop calls it at each epoch's end, so a mostly-bad dataset fails within its first
        epoch even when ``drop_last`` or a holdout leaves some samples unloaded.
        """
        self._judge_bad_fraction(final=True)

    def _judge_bad_fraction(self, final: bool) -> None:
        n_ok, n_load_bad = self._load.counts()
        n_bad, n = self._n_index_bad + n_load_bad, self._n_index_bad + n_ok + n_load_bad
        if not final and (self.on_bad == "raise" or n_ok + n_load_bad < min(MIN_LOADED_FOR_FRACTION, len(self))):
            return
        if n_bad > BAD_FRACTION_LIMIT * n:
            raise DatasetError(f"{self.root}: {n_bad} of the {n} images seen so far are bad (more than "
                               f"{BAD_FRACTION_LIMIT:.0%}); refusing to train on the rest. Reasons: "
                               f"{summarize_reasons(self.bad_files())}")

    def bad_files(self) -> list[tuple[str, str]]:
        """Every (path, reason) skipped: at index time, and at load time here and in DataLoader workers."""
        return list(dict.fromkeys(self.skipped + self._load.logged_bad()))

    def bad_report(self) -> dict:
        files = self.bad_files()
        return {
            "samples": len(self), "skipped_at_index": self._n_index_skipped,
            "bad_at_load": len(files) - self._n_index_skipped,
            "reasons": dict(collections.Counter(r for _, r in files)),
            "files": [{"path": p, "reason": r} for p, r in files],
        }
