"""Listing a dataset's image/mask pairs: three init strategies the benchmarks compare.

- ``decode``: the historic "before" — decode every image and mask with cv2 to validate it.
- ``stat``: the original pipeline's "after" — ``Path.exists()`` and ``st_size > 0`` per file.
- ``manifest`` (default): one ``os.scandir`` pass per folder, pairing by stem, and a cheap
  integrity check per file (size > 0 and the format's end marker: a JPEG ends with FF D9, a PNG
  with its IEND chunk; a JPEG cut in half still decodes with cv2, so decoding proves nothing).
  The result is written atomically to a compact binary file next to the data (or under
  ``$FOODLAB_CACHE/manifests`` when the data folder is read-only). Later opens stat the scanned
  folders only and load the manifest when their (mtime, inode) are unchanged: adding, removing or
  renaming a file changes its folder's mtime. A file rewritten in place does not, so the manifest
  keeps each file's size and mtime and the dataset re-checks a file whose stat differs at load time.
  Caveat: on filesystems with coarse (1-2 s) directory timestamps, a file added in the same tick
  as the previous change can go unnoticed; ``rescan=True`` forces a fresh scan.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from foodlab.data.layouts import IMAGE_EXTS, MASK_EXTS, Layout, default_cache_root

log = logging.getLogger(__name__)

STRATEGIES = ("decode", "stat", "manifest")
MANIFEST_VERSION = 1
BAD_FRACTION_LIMIT = 0.5          # more bad than this (of the images found) fails loudly
_JPEG_EXTS = (".jpg", ".jpeg")
_PNG_END = b"IEND\xaeB`\x82"


class DatasetError(RuntimeError):
    """The dataset is unusable (nothing valid, or mostly bad files); the message summarises why."""


class SampleList(Sequence):
    """``(image_path, mask_path)`` pairs built on access from compact arrays (cheap to load and pickle)."""

    def __init__(self, image_dirs: Sequence[str], mask_dirs: Sequence[str], folder: np.ndarray,
                 image_names: np.ndarray, mask_names: np.ndarray):
        self.image_dirs, self.mask_dirs = list(image_dirs), list(mask_dirs)
        self.folder, self.image_names, self.mask_names = folder, image_names, mask_names

    def __len__(self) -> int:
        return len(self.image_names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        f = int(self.folder[i])
        return (os.path.join(self.image_dirs[f], str(self.image_names[i])),
                os.path.join(self.mask_dirs[f], str(self.mask_names[i])))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"SampleList({len(self)} pairs)"


@dataclass
class Index:
    samples: SampleList
    stats: np.ndarray                  # (n, 4) int64: image size, image mtime_ns, mask size, mask mtime_ns
    skipped: list[tuple[str, str]]     # (path, reason)
    fingerprint: str
    strategy: str
    source: str = "scan"               # scan | manifest
    manifest_path: Path | None = None
    n_found: int = 0                   # images found (valid + skipped), for the bad-fraction check
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- listing and checks

def _list(folder: str, exts: tuple[str, ...]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """stem -> file name for files with one of ``exts``; duplicates of a stem are reported.

    ``os.listdir`` (no per-entry objects) is the cheapest listing; a sub-folder that happens to
    have an image extension fails its integrity check later and is reported there.
    """
    wanted = {e[1:] for e in exts}
    found: dict[str, str] = {}
    dupes = []
    for name in os.listdir(folder):
        stem, _, ext = name.rpartition(".")
        if not stem or name[0] == "." or (ext not in wanted and ext.lower() not in wanted):
            continue
        if stem in found:
            dupes.append((os.path.join(folder, name), f"duplicate stem {stem!r} (kept {found[stem]})"))
        else:
            found[stem] = name
    return found, dupes


def check_file(path: str, dir_fd: int | None = None) -> tuple[int, int, str | None]:
    """(size, mtime_ns, reason or None): size > 0 and the JPEG/PNG end marker, reading only the last bytes.

    ``dir_fd`` opens ``path`` relative to an open folder, which skips the full path walk per file.
    """
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError as e:
        return 0, 0, f"unreadable: {e.strerror}"
    try:
        st = os.fstat(fd)
        size = st.st_size
        if size == 0:
            return 0, st.st_mtime_ns, "empty file (0 bytes)"
        ext = path[path.rfind("."):].lower()
        if ext in _JPEG_EXTS:
            if not jpeg_tail_ok(os.pread(fd, 32, max(0, size - 32))):
                return size, st.st_mtime_ns, "truncated or not a JPEG (no FF D9 end marker)"
        elif ext == ".png":
            if not png_tail_ok(os.pread(fd, 8, max(0, size - 8))):
                return size, st.st_mtime_ns, "truncated or not a PNG (no IEND chunk)"
        return size, st.st_mtime_ns, None
    except OSError as e:
        return 0, 0, f"unreadable: {e.strerror}"
    finally:
        os.close(fd)


def jpeg_tail_ok(tail: bytes) -> bool:
    return tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9")   # some writers pad after the marker


def png_tail_ok(tail: bytes) -> bool:
    return tail.endswith(_PNG_END)


def _check_chunk(items: list[tuple[int, str, int, str]]) -> list[tuple]:
    return [check_file(i, ifd) + check_file(m, mfd) for ifd, i, mfd, m in items]


def _parallel_map(fn, items: list, workers: int) -> list:
    """Run ``fn`` over chunks of ``items`` in threads (the syscalls release the GIL); keeps order."""
    if workers <= 1 or len(items) < 2000:
        return fn(items)
    size = -(-len(items) // (workers * 4))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(workers) as pool:
        return [r for part in pool.map(fn, chunks) for r in part]


# ---------------------------------------------------------------- the three strategies

def _scan_pairs(layout: Layout):
    """One scandir per folder: (folder idx, image name, mask name) triples + skipped (missing/duplicate)."""
    triples, skipped, n_found = [], [], 0
    for f, fp in enumerate(layout.folders):
        images, dupes = _list(str(fp.image_dir), IMAGE_EXTS)
        masks, _ = _list(str(fp.mask_dir), MASK_EXTS)
        skipped += dupes
        n_found += len(images) + len(dupes)
        for stem in sorted(images):
            m = masks.get(stem)
            if m is None:
                skipped.append((os.path.join(fp.image_dir, images[stem]), "missing mask"))
            else:
                triples.append((f, images[stem], m))
    return triples, skipped, n_found


def _folders(layout: Layout, relative: bool = False) -> tuple[list[str], list[str]]:
    """The layout's image and mask folders as the user opened them (or relative to the root: the
    fingerprint, so moving or renaming a dataset keeps its identity and caches)."""
    def name(p: Path) -> str:
        return str(p.relative_to(layout.root)) if relative else str(p)
    return [name(fp.image_dir) for fp in layout.folders], [name(fp.mask_dir) for fp in layout.folders]


def _reusable(previous: Index | None, layout: Layout) -> dict:
    """(folder, image name, mask name) -> stats row of pairs a stale manifest already checked as valid."""
    s = previous.samples if previous is not None else None
    if s is None or s.image_dirs != _folders(layout)[0]:
        return {}
    return dict(zip(zip(s.folder.tolist(), s.image_names.tolist(), s.mask_names.tolist()), previous.stats.tolist()))


def _index_manifest_scan(layout: Layout, workers: int, previous: Index | None = None):
    """Scan + integrity check; with a stale manifest only new or renamed pairs are checked again
    (a reused pair rewritten in place is caught at load time by its size/mtime, as on re-open)."""
    triples, skipped, n_found = _scan_pairs(layout)
    known = _reusable(previous, layout)
    if known:
        reuse = {t: known[t] for t in triples if t in known}
        todo = [t for t in triples if t not in reuse]
    else:
        reuse, todo = {}, triples
    fds = [(os.open(fp.image_dir, os.O_RDONLY), os.open(fp.mask_dir, os.O_RDONLY)) for fp in layout.folders]
    try:
        checks = _parallel_map(_check_chunk, [(fds[f][0], i, fds[f][1], m) for f, i, m in todo], workers)
    finally:
        for pair in fds:
            for fd in pair:
                os.close(fd)
    results = dict(zip(todo, checks))
    keep, stats = [], []
    for t in triples:
        if t in reuse:
            keep.append(t)
            stats.append(tuple(reuse[t]))
            continue
        (f, i, m), (isz, imt, ir, msz, mmt, mr) = t, results[t]
        if ir is not None:
            skipped.append((os.path.join(layout.folders[f].image_dir, i), ir))
        elif mr is not None:
            skipped.append((os.path.join(layout.folders[f].mask_dir, m), f"mask {mr}"))
        else:
            keep.append((f, i, m))
            stats.append((isz, imt, msz, mmt))
    return keep, stats, skipped, n_found


def _index_stat(layout: Layout):
    """The original pipeline's check, kept faithful (Path objects, exists() then stat())."""
    keep, stats, skipped, n_found = [], [], [], 0
    for f, fp in enumerate(layout.folders):
        for name in sorted(os.listdir(fp.image_dir)):
            img = Path(fp.image_dir) / name
            if name.startswith(".") or img.suffix.lower() not in IMAGE_EXTS:
                continue
            n_found += 1
            msk = next((p for p in (Path(fp.mask_dir) / (img.stem + e) for e in MASK_EXTS) if p.exists()), None)
            if msk is None:
                skipped.append((str(img), "missing mask"))
                continue
            ist, mst = img.stat(), msk.stat()
            if ist.st_size == 0 or mst.st_size == 0:
                skipped.append((str(img if ist.st_size == 0 else msk), "empty file (0 bytes)"))
                continue
            keep.append((f, name, msk.name))
            stats.append((ist.st_size, ist.st_mtime_ns, mst.st_size, mst.st_mtime_ns))
    return keep, stats, skipped, n_found


def _index_decode(layout: Layout):
    """The historic "before": decode every image and mask (slow; and a truncated JPEG still passes)."""
    import cv2

    triples, skipped, n_found = _scan_pairs(layout)
    keep, stats = [], []
    for f, i, m in triples:
        img = os.path.join(layout.folders[f].image_dir, i)
        msk = os.path.join(layout.folders[f].mask_dir, m)
        if cv2.imread(img, cv2.IMREAD_COLOR) is None:
            skipped.append((img, "cannot decode image"))
        elif cv2.imread(msk, cv2.IMREAD_UNCHANGED) is None:
            skipped.append((msk, "cannot decode mask"))
        else:
            ist, mst = os.stat(img), os.stat(msk)
            keep.append((f, i, m))
            stats.append((ist.st_size, ist.st_mtime_ns, mst.st_size, mst.st_mtime_ns))
    return keep, stats, skipped, n_found


# ---------------------------------------------------------------- manifest file

def _dir_state(layout: Layout) -> np.ndarray:
    rows = []
    for fp in layout.folders:
        for d in (fp.image_dir, fp.mask_dir):
            st = os.stat(d)
            rows.append((st.st_mtime_ns, st.st_ino, st.st_dev))
    return np.array(rows, np.int64)


def manifest_paths(layout: Layout) -> tuple[Path, Path]:
    """(next to the data, in the cache dir) — the two places a manifest may live."""
    rel = "|".join(f"{fp.image_dir.relative_to(layout.root)}:{fp.mask_dir.relative_to(layout.root)}"
                   for fp in layout.folders)
    key = hashlib.sha1(f"{layout.name}|{rel}".encode()).hexdigest()[:10]
    root_key = hashlib.sha1(str(layout.root.resolve()).encode()).hexdigest()[:16]
    return (layout.root / f".foodlab_manifest_{key}.bin",
            default_cache_root() / "manifests" / f"{root_key}_{key}.bin")


_MAGIC = b"FOODLAB-MANIFEST\n"


def _write_atomic(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Manifest file: magic, JSON header (meta + array dtype/shape/offset), then the raw arrays.

    Not pickle (a manifest inside a downloaded dataset must not run code) and not .npz (its zip
    member parsing costs milliseconds); loading is one read plus ``np.frombuffer`` views.
    """
    specs, offset = {}, 0
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        specs[name] = [a.dtype.str, list(a.shape), offset]
        offset += a.nbytes
    header = json.dumps({"meta": meta, "arrays": specs}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + len(header).to_bytes(8, "little") + header)
            for a in arrays.values():
                f.write(a.data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError("not a foodlab manifest")
    start = len(_MAGIC) + 8
    hlen = int.from_bytes(data[len(_MAGIC):start], "little")
    header = json.loads(data[start:start + hlen])
    base = start + hlen
    arrays = {}
    for name, (dtype, shape, offset) in header["arrays"].items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(data, dt, count, base + offset).reshape(shape)
    return header["meta"], arrays


def _save_manifest(layout: Layout, index: Index, dirs_before: np.ndarray) -> Path | None:
    if not np.array_equal(dirs_before, _dir_state(layout)):
        log.info("folders changed during the scan; not writing a manifest")
        return None
    s = index.samples
    meta = {"version": MANIFEST_VERSION, "image_dirs": s.image_dirs, "mask_dirs": s.mask_dirs,
            "skipped": index.skipped, "fingerprint": index.fingerprint, "n_found": index.n_found}
    arrays = {"dirs": dirs_before, "folder": s.folder, "image_names": s.image_names,
              "mask_names": s.mask_names, "stats": index.stats}
    for path in manifest_paths(layout):
        try:
            _write_atomic(path, meta, arrays)
            return path
        except OSError as e:      # read-only data folder: fall back to the cache dir
            log.debug("cannot write manifest %s: %s", path, e)
    log.warning("could not write a manifest for %s anywhere; every open will re-scan", layout.root)
    return None


def _load_manifest(layout: Layout, allow_stale: bool = False) -> Index | None:
    """The stored index when the scanned folders are unchanged; a stale one (``extra["stale"]``)
    only with ``allow_stale``, to reuse its per-file checks in an incremental re-scan."""
    try:
        dirs = _dir_state(layout)
    except OSError:
        return None
    for path in manifest_paths(layout):
        try:
            meta, a = _read(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError) as e:
            log.debug("manifest %s unreadable: %s", path, e)
            continue
        if meta.get("version") != MANIFEST_VERSION:
            continue
        stale = not np.array_equal(a["dirs"], dirs)
        if stale and not allow_stale:
            log.debug("manifest %s is stale", path)
            continue
        # paths from the layout as opened now: the dataset may have moved, or be opened from another cwd
        samples = SampleList(*_folders(layout), a["folder"], a["image_names"], a["mask_names"])
        skipped = [tuple(x) for x in meta["skipped"]]
        return Index(samples, a["stats"], skipped, meta["fingerprint"], "manifest", "manifest", path,
                     meta["n_found"], {"stale": stale})
    return None


# ---------------------------------------------------------------- entry point

def fingerprint(image_dirs, mask_dirs, folder, image_names, mask_names, stats) -> str:
    h = hashlib.sha1()
    for part in ("\0".join(image_dirs), "\0".join(mask_dirs)):
        h.update(part.encode())
    for a in (folder, image_names, mask_names, stats):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def build_index(layout: Layout, strategy: str = "manifest", rescan: bool = False, workers: int | None = None,
                check_bad: bool = True) -> Index:
    """List ``layout``'s valid pairs with ``strategy``; raises DatasetError when most files are bad."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown index strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    index = previous = None
    if strategy == "manifest" and not rescan:
        index = _load_manifest(layout, allow_stale=True)
        if index is not None and index.extra["stale"]:
            index, previous = None, index
    if index is None:
        dirs_before = _dir_state(layout)
        if strategy == "manifest":
            keep, stats, skipped, n_found = _index_manifest_scan(
                layout, workers or min(4, 2 * (os.cpu_count() or 1)), previous)
        elif strategy == "stat":
            keep, stats, skipped, n_found = _index_stat(layout)
        else:
            keep, stats, skipped, n_found = _index_decode(layout)
        image_dirs, mask_dirs = _folders(layout)
        folder = np.array([t[0] for t in keep], np.int16)
        image_names = np.array([t[1] for t in keep], dtype=str)
        mask_names = np.array([t[2] for t in keep], dtype=str)
        stats = np.array(stats, np.int64).reshape(-1, 4)
        index = Index(SampleList(image_dirs, mask_dirs, folder, image_names, mask_names), stats, skipped,
                      fingerprint(*_folders(layout, relative=True), folder, image_names, mask_names, stats), strategy,
                      n_found=n_found)
        if strategy == "manifest":
            index.manifest_path = _save_manifest(layout, index, dirs_before)
    if check_bad:
        check_bad_fraction(index, layout.root)
    return index


def summarize_reasons(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    counts = collections.Counter(r for _, r in skipped)
    lines = []
    for reason, n in counts.most_common():
        files = [os.path.basename(p) for p, r in skipped if r == reason][:examples]
        lines.append(f"  {n} x {reason} (e.g. {', '.join(files)})")
    return "\n".join(lines)


def check_bad_fraction(index: Index, root) -> None:
    n_bad = index.n_found - len(index.samples)
    if len(index.samples) == 0:
        raise DatasetError(f"{root}: no valid image/mask pairs ({index.n_found} images found)"
                           + (f"; skipped:\n{summarize_reasons(index.skipped)}" if index.skipped else ""))
    if n_bad > BAD_FRACTION_LIMIT * index.n_found:
        raise DatasetError(f"{root}: {n_bad} of {index.n_found} images are bad (more than "
                           f"{BAD_FRACTION_LIMIT:.0%}); refusing to train on the rest. Reasons:\n"
                           f"{summarize_reasons(index.skipped)}")
