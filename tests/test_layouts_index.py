"""Folder layouts, the three index strategies, integrity checks, manifest invalidation and learned bad files."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from foodlab.data.dataset import FoodSegDataset
from foodlab.data.index import build_index
from foodlab.data.layouts import LayoutError, detect_layout, resolve_layout
from foodlab.data.manifest import manifest_paths
from foodlab.data.synth import generate_synthetic
from foodlab.data.validity import DatasetError


@pytest.fixture
def pairs(tmp_path):
    return generate_synthetic(tmp_path / "pairs", 12, size=48, seed=0, classes=4, workers=1, progress=False)


def make_uec(root, n=4, size=32):
    """UECFoodPixComplete: {train,test}/img/*.jpg + {train,test}/mask/*.png, class id in the RED channel."""
    for split in ("train", "test"):
        (root / split / "img").mkdir(parents=True)
        (root / split / "mask").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / split / "img" / f"{i}.jpg"), np.full((size, size, 3), 100, np.uint8))
            bgr = np.zeros((size, size, 3), np.uint8)
            bgr[..., 0], bgr[..., 1] = 77, 99           # blue / green hold other data, not the class
            bgr[: size // 2, :, 2] = i + 1              # red: class id in the top half
            cv2.imwrite(str(root / split / "mask" / f"{i}.png"), bgr)
    return root


def test_detect_each_layout(tmp_path, pairs):
    assert detect_layout(pairs) == "pairs"
    fs = generate_synthetic(tmp_path / "fs", 5, size=32, layout="foodseg103", workers=1, progress=False)
    assert detect_layout(fs) == "foodseg103"
    uec = make_uec(tmp_path / "uec")
    assert detect_layout(uec) == "uecfoodpix"
    lay = resolve_layout(uec, "auto", "test")
    assert lay.mask_channel == "red" and [f.split for f in lay.folders] == ["test"]
    assert len(resolve_layout(fs).folders) == 2                      # split=None: every split
    assert [f.split for f in resolve_layout(fs, split="train").folders] == ["train"]


def test_layout_errors(tmp_path, pairs):
    with pytest.raises(LayoutError, match="unknown layout"):
        resolve_layout(pairs, "coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="cannot detect"):
        resolve_layout(tmp_path / "empty")
    with pytest.raises(LayoutError, match="needs folder"):
        resolve_layout(tmp_path / "empty", "pairs")
    with pytest.raises(LayoutError, match="no split folders"):
        resolve_layout(tmp_path / "empty", "foodseg103")
    with pytest.raises(LayoutError, match="split 'val'"):
        resolve_layout(make_uec(tmp_path / "uec"), "uecfoodpix", "val")
    with pytest.raises(LayoutError, match="not a folder"):
        resolve_layout(tmp_path / "nope")


@pytest.mark.parametrize("strategy", ["decode", "stat", "manifest"])
def test_strategies_agree_on_valid_data(pairs, strategy):
    idx = build_index(resolve_layout(pairs), strategy)
    assert len(idx.samples) == 12 and idx.skipped == []
    img, msk = idx.samples[0]
    assert img.endswith("images/000000.jpg") and msk.endswith("masks/000000.png")
    ref = build_index(resolve_layout(pairs), "stat")
    assert idx.fingerprint == ref.fingerprint and list(idx.samples) == list(ref.samples)


def _make_index_time_bad(pairs):
    jpg = (pairs / "images" / "000001.jpg").read_bytes()
    (pairs / "images" / "000001.jpg").write_bytes(jpg[: len(jpg) // 2])
    (pairs / "images" / "000002.jpg").write_bytes(b"")
    (pairs / "images" / "000003.jpg").write_text("not an image")
    (pairs / "masks" / "000004.png").unlink()
    (pairs / "masks" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def test_verify_skips_bad_files_with_reasons_and_remembers_them(pairs):
    _make_index_time_bad(pairs)
    lay = resolve_layout(pairs)
    listed = build_index(lay, "manifest")           # first open: names only, the checks wait for loading
    assert len(listed.samples) == 11 and listed.skipped == [(str(pairs / "images" / "000004.jpg"), "missing mask")]
    assert not listed.checked.any()
    idx = build_index(lay, "manifest", verify=True)
    reasons = {os.path.basename(p): r for p, r in idx.skipped}
    assert len(idx.samples) == 7 and idx.checked[idx.samples.rows].all()
    assert "FF D9" in reasons["000001.jpg"] and "empty" in reasons["000002.jpg"]
    assert "not an image" in reasons["000003.jpg"] and reasons["000004.jpg"] == "missing mask"
    assert "IEND" in reasons["000005.png"]
    again = build_index(lay, "manifest")            # later opens skip them without checking anything
    assert again.source == "manifest" and list(again.samples) == list(idx.samples)
    assert sorted(again.skipped) == sorted(idx.skipped) and again.fingerprint == listed.fingerprint
    # stat (the original "after") only sees the empty file and the missing mask
    stat = build_index(lay, "stat")
    assert len(stat.samples) == 10
    # decode catches the text file but not the truncated JPEG
    dec = {os.path.basename(p) for p, _ in build_index(lay, "decode").skipped}
    assert "000003.jpg" in dec and "000001.jpg" not in dec


def test_known_bad_file_fixed_in_place_comes_back(pairs):
    lay = resolve_layout(pairs)
    path = pairs / "images" / "000006.jpg"
    good = path.read_bytes()
    path.write_bytes(good[:100])
    assert len(build_index(lay, "manifest", verify=True).samples) == 11
    path.write_bytes(good)                          # same name, so the folder's mtime does not move
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    idx = build_index(lay, "manifest", verify=True)
    assert len(idx.samples) == 12 and idx.skipped == []


def test_mostly_bad_fails_loudly(pairs):
    for i in range(7):
        (pairs / "images" / f"{i:06d}.jpg").write_bytes(b"")
    lay = resolve_layout(pairs)
    assert len(build_index(lay, "manifest").samples) == 12     # not checked yet: loading finds them
    with pytest.raises(DatasetError, match=r"(?s)7 of 12 images are bad.*empty file"):
        build_index(lay, "manifest", verify=True)
    with pytest.raises(DatasetError, match="7 of 12 images are bad"):
        build_index(lay, "manifest")                            # remembered
    build_index(lay, "manifest", check_bad=False)               # info can still list them


def _tick():
    """Let directory mtimes move past the previous change (coarse filesystem clocks)."""
    time.sleep(0.02)


def test_manifest_reopen_and_invalidation(pairs):
    lay = resolve_layout(pairs)
    first = build_index(lay, "manifest")
    assert first.source == "scan" and first.manifest_path == manifest_paths(lay)[0]
    assert first.manifest_path.exists() and first.manifest_path.parent == pairs
    again = build_index(lay, "manifest")
    assert again.source == "manifest" and again.fingerprint == first.fingerprint
    assert list(again.samples) == list(first.samples)

    _tick()   # add a pair
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        (pairs / sub / f"extra.{ext}").write_bytes((pairs / sub / f"000000.{ext}").read_bytes())
    added = build_index(lay, "manifest")
    assert added.source == "scan" and len(added.samples) == 13 and added.fingerprint != first.fingerprint
    assert build_index(lay, "manifest").source == "manifest"

    _tick()   # remove one
    (pairs / "images" / "000003.jpg").unlink()
    removed = build_index(lay, "manifest")
    assert removed.source == "scan" and len(removed.samples) == 12
    assert all("000003" not in p for p, _ in removed.samples)

    _tick()   # change a file in place: the folder mtime stays, so the manifest stays (loading checks the file)
    path = pairs / "images" / "000004.jpg"
    path.write_bytes(path.read_bytes()[:100])
    kept = build_index(lay, "manifest")
    assert kept.source == "manifest" and len(kept.samples) == 12
    assert build_index(lay, "manifest", rescan=True).source == "scan"


def test_corrupt_manifest_is_rebuilt(pairs):
    lay = resolve_layout(pairs)
    path = build_index(lay, "manifest").manifest_path
    path.write_bytes(b"garbage")
    idx = build_index(lay, "manifest")
    assert idx.source == "scan" and len(idx.samples) == 12


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes ``folder`` refuse new files: chmod, or (as root, whom chmod does not
    stop) an ``os.replace`` that fails there the way it does on a read-only mount."""
    modes = []

    def make(folder):
        if os.geteuid() != 0:
            modes.append((folder, folder.stat().st_mode))
            folder.chmod(0o555)
            return
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if os.path.dirname(os.path.abspath(dst)) == str(folder):
                raise PermissionError(13, "Read-only file system", str(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    yield make
    for folder, mode in modes:
        folder.chmod(mode)


def test_read_only_data_puts_manifest_in_cache_dir(pairs, monkeypatch, tmp_path, read_only):
    monkeypatch.setenv("FOODLAB_CACHE", str(tmp_path / "cache"))
    read_only(pairs)
    lay = resolve_layout(pairs)
    first = build_index(lay, "manifest")
    assert first.manifest_path.is_relative_to(tmp_path / "cache" / "manifests")
    assert not list(pairs.glob(".foodlab_manifest*"))
    assert build_index(lay, "manifest").source == "manifest"


def test_stale_manifest_in_read_only_folder_is_passed_over(pairs, monkeypatch, tmp_path, read_only):
    """A dataset copied or mounted read-only together with its (now stale) manifest: the fresh manifest in
    the cache dir wins, and files learned bad stay remembered at every open."""
    monkeypatch.setenv("FOODLAB_CACHE", str(tmp_path / "cache"))
    lay = resolve_layout(pairs)
    assert build_index(lay, "manifest").manifest_path.parent == pairs
    _tick()
    for sub, ext in (("images", "jpg"), ("masks", "png")):    # the folders change after the manifest was written
        (pairs / sub / f"extra.{ext}").write_bytes((pairs / sub / f"000000.{ext}").read_bytes())
    jpg = pairs / "images" / "000003.jpg"
    jpg.write_bytes(jpg.read_bytes()[:300])
    read_only(pairs)
    ds = FoodSegDataset(pairs, image_size=32)
    assert len(ds) == 13 and ds.manifest_path.is_relative_to(tmp_path / "cache")
    for i in range(len(ds)):
        ds[i]
    assert [os.path.basename(p) for p, _ in ds.bad_files()] == ["000003.jpg"]
    reopened = [FoodSegDataset(pairs, image_size=32) for _ in range(4)]
    assert [len(r) for r in reopened] == [12, 12, 12, 12]
    assert all(r.index_source == "manifest" and "000003.jpg" in str(r.skipped) for r in reopened)


def test_broken_symlinks_are_remembered_like_any_bad_file(pairs):
    link = pairs / "images" / "000004.jpg"
    link.unlink()
    link.symlink_to(pairs / "images" / "gone.jpg")
    ds = FoodSegDataset(pairs, image_size=32)                   # names only: the link is listed
    assert len(ds) == 12
    for i in range(len(ds)):
        ds[i]
    assert dict(ds.bad_files()) == {str(link): "broken symbolic link (its target does not exist)"}
    for _ in range(2):                                          # remembered: skipped at every later open
        again = FoodSegDataset(pairs, image_size=32, on_bad="raise")
        assert len(again) == 11 and str(link) in dict(again.skipped)
    lay = resolve_layout(pairs)
    verified = build_index(lay, "manifest", rescan=True, verify=True)   # what `foodlab data info --verify` runs
    assert len(verified.samples) == 11 and "broken symbolic link" in dict(verified.skipped)[str(link)]
    assert int(verified.checked.sum()) == 11                    # the link is not counted as checked
    assert len(build_index(lay, "manifest").samples) == 11


def test_samples_pickle_and_slice(pairs):
    import pickle

    idx = build_index(resolve_layout(pairs), "manifest")
    s2 = pickle.loads(pickle.dumps(idx.samples))
    assert list(s2) == list(idx.samples) and idx.samples[1:3] == [idx.samples[1], idx.samples[2]]


def test_uecfoodpix_mask_red_channel(tmp_path):
    root = make_uec(tmp_path / "uec", n=3, size=32)
    ds = FoodSegDataset(root, split="train", image_size=32, num_classes=10)
    assert ds.layout.name == "uecfoodpix" and len(ds) == 3
    mask = ds[1][1]
    assert mask[:16].unique().tolist() == [2] and mask[16:].unique().tolist() == [0]


def _truncate_keeping_stamp(path):
    """Cut ``path`` in half in place and give it back its mtime: unchanged as far as stat can tell."""
    st = path.stat()
    path.write_bytes(path.read_bytes()[: st.st_size // 2])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_incremental_verify_checks_only_new_files(pairs):
    lay = resolve_layout(pairs)
    first = build_index(lay, "manifest", verify=True)
    _tick()
    jpg = (pairs / "images" / "000000.jpg").read_bytes()
    (pairs / "images" / "new.jpg").write_bytes(jpg[: len(jpg) // 2])          # truncated newcomer
    (pairs / "masks" / "new.png").write_bytes((pairs / "masks" / "000000.png").read_bytes())
    _truncate_keeping_stamp(pairs / "images" / "000005.jpg")                 # checked before: not read again
    again = build_index(lay, "manifest", verify=True)
    assert again.source == "scan" and len(again.samples) == 12
    assert "FF D9" in dict(again.skipped)[str(pairs / "images" / "new.jpg")]
    assert list(again.samples) == list(first.samples)
    assert len(build_index(lay, "manifest", verify=True).samples) == 12      # all known: nothing re-read
    full = build_index(lay, "manifest", rescan=True, verify=True)             # a fresh listing checks everything
    assert len(full.samples) == 11 and str(pairs / "images" / "000005.jpg") in dict(full.skipped)


def test_odd_file_names(pairs):
    """Non-ASCII names, names that are not UTF-8 at all, and upper-case extensions."""
    names = [b"caf\xc3\xa9", b"raw\xff", b"UPPER"]
    for name in names:
        ext = b".JPG" if name == b"UPPER" else b".jpg"
        os.rename(pairs / "images" / "000000.jpg", os.fsencode(pairs / "images") + b"/" + name + ext)
        os.rename(pairs / "masks" / "000000.png", os.fsencode(pairs / "masks") + b"/" + name + b".png")
        for sub, e in (("images", "jpg"), ("masks", "png")):   # put 000000 back for the next name
            (pairs / sub / f"000000.{e}").write_bytes(open(os.fsencode(pairs / sub) + b"/" + name +
                                                           (ext if sub == "images" else b".png"), "rb").read())
    for reopen in (False, True):
        idx = build_index(resolve_layout(pairs), "manifest", rescan=not reopen)
        assert len(idx.samples) == 15 and idx.skipped == [] and idx.source == ("manifest" if reopen else "scan")
        assert all(os.path.isfile(i) and os.path.isfile(m) for i, m in idx.samples)
    assert len(build_index(resolve_layout(pairs), "manifest", verify=True).samples) == 15


def test_moved_dataset_or_other_cwd_reuses_its_manifest_with_current_paths(pairs, tmp_path, monkeypatch):
    """A renamed dataset (folder inodes/mtimes unchanged) or one opened via a relative path from another
    working directory must list files where they are now, not where the manifest was written from."""
    monkeypatch.chdir(pairs.parent)
    first = FoodSegDataset(pairs.name, image_size=32)          # relative path, manifest written
    moved = pairs.parent / "renamed"
    os.rename(pairs, moved)
    monkeypatch.chdir(tmp_path.parent)                          # a different cwd, a different spelling
    again = FoodSegDataset(os.path.relpath(moved), image_size=32)
    assert again.index_source == "manifest"
    assert again.fingerprint == first.fingerprint               # same data, same identity (and caches)
    assert all(os.path.isfile(i) and os.path.isfile(m) for i, m in again.samples)
    image, mask = again[0]
    assert image.shape == (3, 32, 32) and not again.skipped
