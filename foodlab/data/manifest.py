"""The manifest file: a dataset's index written once, so that later opens take milliseconds.

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
import tempfile
from pathlib import Path

import numpy as np

from foodlab.data.layouts import Layout, default_cache_root

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


def write_atomic(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
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
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            for a in arrays.values():
                f.write(a.data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            write_atomic(path, {"version": VERSION, **meta}, arrays)
            return path
        except OSError as e:      # read-only data folder: fall back to the cache dir
            log.debug("cannot write manifest %s: %s", path, e)
    log.warning("could not write a manifest for %s anywhere; every open will re-scan", layout.root)
    return None


def load(layout: Layout) -> tuple[dict, dict[str, np.ndarray], Path, bool] | None:
    """(meta, arrays, path, stale) of the first readable manifest of this version; None if there is none."""
    try:
        dirs = dir_state(layout)
    except OSError:
        return None
    for path in manifest_paths(layout):
        try:
            meta, arrays = read(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError) as e:
            log.debug("manifest %s unreadable: %s", path, e)
            continue
        if meta.get("version") == VERSION:
            return meta, arrays, path, not np.array_equal(arrays["dirs"], dirs)
    return None


# ---------------------------------------------------------------- files learned bad while loading

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
