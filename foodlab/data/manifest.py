"""The ``manifest`` index strategy: a dataset's index written once, so that later opens take milliseconds.

``build_manifest`` lists the folders (``candidates.list_candidates``) or loads the manifest, folds in
the files learned bad since, optionally checks every file (``verify``), and writes the result.

On disk: a magic line, an 8-byte header length, a JSON header (meta + each array's dtype, shape
and offset), then the raw arrays. Not pickle (a manifest inside a downloaded dataset must not run
code) and not .npz (its zip parsing costs milliseconds): loading is one read plus ``np.frombuffer``.

It lives next to the data, or under ``$FOODLAB_CACHE/manifests`` when the data folder is read-only.
A manifest is current while the scanned folders' (mtime, inode, device) are unchanged: adding,
removing or renaming a file changes its folder's mtime.

Learned bad files: a file found bad while loading (in any process, DataLoader workers included)
is appended as one JSON line to ``<manifest>.bad``. The next open folds those lines into the
manifest, so from then on the file is skipped at index time. One short line appended with
``O_APPEND`` lands whole; a line appended while another open is folding the log can be lost, and
then the file is simply found bad again at its next load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from foodlab.atomic import atomic_write
from foodlab.data.candidates import Index, Names, list_candidates, make_index, sample_list
from foodlab.data.layouts import Layout, default_cache_root
from foodlab.data.validity import check_file

log = logging.getLogger(__name__)

VERSION = 2
MAGIC = b"FOODLAB-MANIFEST\n"


def manifest_paths(layout: Layout) -> tuple[Path, Path]:
    """(next to the data, in the cache dir): the two places a manifest may live."""
    rel = "|".join(f"{fp.image_dir.relative_to(layout.root)}:{fp.mask_dir.relative_to(layout.root)}"
                   for fp in layout.folders)
    key = hashlib.sha1(f"{layout.name}|{rel}".encode()).hexdigest()[:10]
    root_key = hashlib.sha1(str(layout.root.resolve()).encode()).hexdigest()[:16]
    return (layout.root / f".foodlab_manifest_{key}.bin",
            default_cache_root() / "manifests" / f"{root_key}_{key}.bin")


def dir_state(layout: Layout) -> np.ndarray:
    """(mtime_ns, inode, device) of every scanned folder: what says a manifest is still current."""
    rows = []
    for fp in layout.folders:
        for d in (fp.image_dir, fp.mask_dir):
            st = os.stat(d)
            rows.append((st.st_mtime_ns, st.st_ino, st.st_dev))
    return np.array(rows, np.int64)


def write(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write one manifest file atomically: a reader never sees half of it."""
    specs, offset = {}, 0
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        specs[name] = [a.dtype.str, list(a.shape), offset]
        offset += a.nbytes
    header = json.dumps({"meta": meta, "arrays": specs}).encode()
    with atomic_write(path) as f:
        f.write(MAGIC + len(header).to_bytes(8, "little") + header)
        for a in arrays.values():
            f.write(a.data)


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError("not a foodlab manifest")
    start = len(MAGIC) + 8
    hlen = int.from_bytes(data[len(MAGIC):start], "little")
    header = json.loads(data[start:start + hlen])
    base = start + hlen
    arrays = {}
    for name, (dtype, shape, offset) in header["arrays"].items():
        dt = np.dtype(dtype)
        arrays[name] = np.frombuffer(data, dt, int(np.prod(shape)), base + offset).reshape(shape)
    return header["meta"], arrays


def save(layout: Layout, meta: dict, arrays: dict[str, np.ndarray]) -> Path | None:
    """Write to the first writable place (see ``manifest_paths``); None when nowhere is writable."""
    for path in manifest_paths(layout):
        try:
            write(path, {"version": VERSION, **meta}, arrays)
            return path
        except OSError as e:      # read-only data folder: fall back to the cache dir
            log.debug("cannot write manifest %s: %s", path, e)
    log.warning("could not write a manifest for %s anywhere; every open will re-scan", layout.root)
    return None


class StoredManifest(NamedTuple):
    meta: dict
    arrays: dict[str, np.ndarray]
    path: Path
    current: bool      # the folders are as the manifest saw them (no file added, removed or renamed)


def load(layout: Layout) -> StoredManifest | None:
    """The newest current manifest of this version from either place, else the newest stale one; None
    if there is none.

    A manifest that cannot be rewritten (a read-only dataset copied or mounted together with its
    manifest) must not win over the fresher one in the cache dir, or what was learned since (files
    found bad) would be forgotten at every other open.
    """
    try:
        dirs = dir_state(layout)
    except OSError:
        return None
    found = []
    for path in manifest_paths(layout):
        try:
            found.append((os.stat(path).st_mtime_ns, path))
        except OSError:
            continue
    stale = None
    for _, path in sorted(found, reverse=True):
        try:
            meta, arrays = read(path)
        except (OSError, ValueError, KeyError) as e:
            log.debug("manifest %s unreadable: %s", path, e)
            continue
        if meta.get("version") != VERSION:
            continue
        if np.array_equal(arrays["dirs"], dirs):
            return StoredManifest(meta, arrays, path, current=True)
        stale = stale or StoredManifest(meta, arrays, path, current=False)
    return stale


# ---------------------------------------------------------------- files learned bad while loading

def file_stamp(path: str) -> os.stat_result | None:
    """The stat of ``path``, or of the link itself when it is a broken symbolic link; None if it is gone.

    A broken link is remembered by its own stamp; once its target exists the stamp differs, so the
    file is checked again.
    """
    try:
        return os.stat(path)
    except OSError:
        try:
            return os.lstat(path)
        except OSError:
            return None


def bad_log_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name + ".bad")


def append_bad(manifest_path: Path, record: dict) -> None:
    """Remember one bad file for the next open; best effort (a read-only folder just forgets)."""
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(bad_log_path(manifest_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        log.debug("cannot remember bad file %s: %s", record.get("path"), e)


def take_bad(layout: Layout) -> list[dict]:
    """Read and remove the learned-bad logs of both manifest places (renamed first, so lines appended
    meanwhile start a new log instead of being deleted unread)."""
    records = []
    for path in manifest_paths(layout):
        src = bad_log_path(path)
        taken = src.with_name(f"{src.name}.{os.getpid()}.taking")
        try:
            os.replace(src, taken)
        except OSError:
            continue
        try:
            with open(taken, "rb") as f:
                for line in f:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        log.debug("skipping a damaged line in %s", src)
        except OSError as e:
            log.debug("cannot read %s: %s", taken, e)
        finally:
            taken.unlink(missing_ok=True)
    return records


def remove(layout: Layout) -> None:
    """Delete every manifest of ``layout`` and its learned-bad log (benchmarks time first opens)."""
    for path in manifest_paths(layout):
        path.unlink(missing_ok=True)
        bad_log_path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------- the manifest strategy (index.build_index)

def _relative(layout: Layout, path: str) -> str:
    return os.path.relpath(path, layout.root)


def _from_manifest(layout: Layout, stored: StoredManifest) -> Index:
    meta, a = stored.meta, stored.arrays
    samples = sample_list(layout, folder=a["folder"], image_names=Names(a["image_blob"].tobytes(), a["image_starts"]),
                          mask_names=Names(a["mask_blob"].tobytes(), a["mask_starts"]), rows=a["rows"])
    scan_skipped = [tuple(x) for x in meta["scan_skipped"]]
    return Index(samples=samples, skipped=_skipped(layout, scan_skipped, meta["bad"]),
                 fingerprint=meta["fingerprint"], strategy="manifest", source="manifest", manifest_path=stored.path,
                 n_found=meta["n_found"], checked=a["checked"].copy(), bad=list(meta["bad"]),
                 scan_skipped=scan_skipped)


def _skipped(layout: Layout, scan_skipped: list, bad: list[dict]) -> list[tuple[str, str]]:
    """(path as opened now, reason): what the listing skipped, then the files known bad."""
    return ([(os.path.join(layout.root, p), r) for p, r in scan_skipped]
            + [(os.path.join(layout.root, b["path"]), b["reason"]) for b in bad])


def _forget_bad(layout: Layout, index: Index) -> list[dict]:
    """Put the known-bad pairs back, unchecked, and return their records to be judged again."""
    records = index.bad
    excluded = np.ones(len(index.samples.folder), bool)
    excluded[index.samples.rows] = False
    index.checked[excluded] = 0
    index.samples.rows = np.arange(len(excluded))
    index.bad, index.skipped = [], _skipped(layout, index.scan_skipped, [])
    return records


def _save(layout: Layout, index: Index, dirs: np.ndarray) -> Path | None:
    if not np.array_equal(dirs, dir_state(layout)):
        log.info("folders changed during the scan; not writing a manifest")
        return None
    s = index.samples
    meta = {"fingerprint": index.fingerprint, "n_found": index.n_found, "scan_skipped": index.scan_skipped,
            "bad": index.bad}
    arrays = {"dirs": dirs, "folder": s.folder, "rows": s.rows, "checked": index.checked,
              "image_blob": np.frombuffer(s.image_names.blob, np.uint8), "image_starts": s.image_names.starts,
              "mask_blob": np.frombuffer(s.mask_names.blob, np.uint8), "mask_starts": s.mask_names.starts}
    return save(layout, meta, arrays)


def _drop_bad(layout: Layout, index: Index, records: list[dict]) -> bool:
    """Drop the pairs of files known bad whose (size, mtime) still match; True if anything changed.

    A record whose file changed since (fixed, or replaced) is forgotten: the file gets checked again.
    """
    s, known = index.samples, {b["path"] for b in index.bad}
    dirs = [(f, role, os.path.normpath(d)) for role, ds in (("image", s.image_dirs), ("mask", s.mask_dirs))
            for f, d in enumerate(ds)]
    kept = np.zeros(len(s.folder), bool)
    kept[s.rows] = True
    where, changed = None, False
    for rec in records:
        if rec.get("path") in known:
            continue
        full = os.path.normpath(os.path.join(layout.root, rec["path"]))
        st = file_stamp(full)
        if st is None:
            continue
        if (st.st_size, st.st_mtime_ns) != (rec.get("size"), rec.get("mtime_ns")):
            continue
        if where is None:   # (folder, role, name) -> candidate row, built only when needed
            folders = s.folder.tolist()
            where = {(f, "image", n): r for r, (f, n) in enumerate(zip(folders, s.image_names.tolist()))}
            where.update(((f, "mask", n), r) for r, (f, n) in enumerate(zip(folders, s.mask_names.tolist())))
        parent, name = os.path.split(full)
        for f, role, d in dirs:
            r = where.get((f, role, name)) if d == parent else None
            if r is not None and kept[r]:
                kept[r] = False
                index.bad.append({k: rec[k] for k in ("path", "reason", "size", "mtime_ns")})
                index.skipped.append((full, rec["reason"]))
                known.add(rec["path"])
                changed = True
    if changed:
        s.rows = np.flatnonzero(kept)
    return changed


def _check_pairs(items: list[tuple[int, str, int, str]]) -> list[tuple]:
    """``check_file`` of each (image folder fd, image name, mask folder fd, mask name), both results joined."""
    return [check_file(i, ifd) + check_file(m, mfd) for ifd, i, mfd, m in items]


def _parallel_map(fn, items: list, workers: int) -> list:
    """Run ``fn`` over chunks of ``items`` in threads (the reads release the GIL); keeps order."""
    if workers <= 1 or len(items) < 2000:
        return fn(items)
    size = -(-len(items) // (workers * 4))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(workers) as pool:
        return [r for part in pool.map(fn, chunks) for r in part]


def _verify(layout: Layout, index: Index, workers: int) -> bool:
    """The content check of every kept pair not checked yet; bad files become known bad, good pairs checked."""
    s = index.samples
    todo = s.rows[index.checked[s.rows] == 0].tolist()
    if not todo:
        return False
    folder, images, masks = s.folder.tolist(), s.image_names.tolist(), s.mask_names.tolist()
    fds = [(os.open(fp.image_dir, os.O_RDONLY), os.open(fp.mask_dir, os.O_RDONLY)) for fp in layout.folders]
    try:
        items = [(fds[folder[r]][0], images[r], fds[folder[r]][1], masks[r]) for r in todo]
        results = _parallel_map(_check_pairs, items, workers)
    finally:
        for pair in fds:
            for fd in pair:
                os.close(fd)
    records = []
    for r, (isz, imt, ir, msz, mmt, mr) in zip(todo, results):
        if ir is None and mr is None:
            index.checked[r] = 1
            continue
        image, mask = s.candidate(r)
        if ir is not None:
            records.append({"path": _relative(layout, image), "reason": ir, "size": isz, "mtime_ns": imt})
        else:
            records.append({"path": _relative(layout, mask), "reason": f"mask {mr}", "size": msz, "mtime_ns": mmt})
    _drop_bad(layout, index, records)
    return True


def _carry_checked(index: Index, old: Index) -> None:
    """After a re-listing, pairs the previous manifest had checked stay checked (new ones are not)."""
    if old.checked is None or not old.checked.any():
        return
    o = old.samples
    passed = np.zeros(len(o.folder), bool)
    passed[o.rows] = old.checked[o.rows] > 0      # known-bad rows are not carried: they may have been fixed
    done = {k for k, c in zip(zip(o.folder.tolist(), o.image_names.tolist(), o.mask_names.tolist()), passed) if c}
    s = index.samples
    keys = zip(s.folder.tolist(), s.image_names.tolist(), s.mask_names.tolist())
    index.checked[:] = [k in done for k in keys]


def build_manifest(layout: Layout, *, rescan: bool, verify: bool, workers: int) -> Index:
    """The ``manifest`` strategy: load the manifest (or list the folders), fold in files learned bad,
    optionally check every unchecked file (``verify``), and save the manifest when anything changed."""
    stored = None if rescan else load(layout)
    learned = take_bad(layout)
    if stored is not None and stored.current:
        index, dirs, changed = _from_manifest(layout, stored), stored.arrays["dirs"], False
        if verify and index.bad:   # a plain re-open trusts the manifest; verify re-checks known bad files too
            learned, changed = _forget_bad(layout, index) + learned, True   # those still bad are dropped again
    else:
        dirs = dir_state(layout)
        found = list_candidates(layout)
        index = make_index(layout, "manifest", found)
        index.checked = np.zeros(len(found.folder), np.uint8)
        index.scan_skipped = [(_relative(layout, p), r) for p, r in found.skipped]
        changed = True
        if stored is not None:    # the folders changed: keep what the old manifest knew of unchanged files
            old = _from_manifest(layout, stored)
            learned = old.bad + learned
            _carry_checked(index, old)
    if learned:
        changed |= _drop_bad(layout, index, learned)
    if verify:
        changed |= _verify(layout, index, workers)
    if changed:
        index.manifest_path = _save(layout, index, dirs)
    return index


def remember_bad(manifest_path: Path | None, root, path: str, reason: str) -> None:
    """Tell the manifest at ``manifest_path`` about a file found bad while loading, so later opens skip it."""
    if manifest_path is None:
        return
    st = file_stamp(path)
    if st is None:
        return     # a vanished file changes its folder, so the next open re-lists anyway
    append_bad(manifest_path, {"path": os.path.relpath(path, root), "reason": reason,
                                "size": st.st_size, "mtime_ns": st.st_mtime_ns})
