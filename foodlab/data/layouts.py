"""Where a dataset keeps its images and masks: the folder layouts foodlab reads.

- ``pairs``: ``root/images/*`` + ``root/masks/*`` matched by file stem (``root/<split>/images`` with a split);
- ``foodseg103``: ``root/Images/img_dir/{train,test}`` + ``root/Images/ann_dir/{train,test}``;
- ``uecfoodpix``: ``root/{train,test}/img`` + ``root/{train,test}/mask``, the class id in the mask's red channel.

A layout resolves to a list of ``FolderPair`` (one per split); ``split=None`` means every split found.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from foodlab.errors import UsageError

LAYOUTS = ("pairs", "foodseg103", "uecfoodpix")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")


def default_cache_root() -> Path:
    """Where foodlab keeps derived files (synthetic data, manifests of read-only data, decoded cache)."""
    return Path(os.environ.get("FOODLAB_CACHE") or Path.home() / ".cache" / "foodlab")


class LayoutError(UsageError):
    """The folder does not look like the layout asked for (or like any, for layout='auto')."""


@dataclass(frozen=True)
class FolderPair:
    split: str | None
    image_dir: Path
    mask_dir: Path


@dataclass(frozen=True)
class Layout:
    name: str
    root: Path
    folders: tuple[FolderPair, ...]
    mask_channel: str | None = None   # "red" for UECFoodPix: the class id lives in the mask's R channel


def _split_folders(root: Path, split: str | None, image_sub: str, mask_sub: str, per_split_root: bool) -> list:
    splits = [split] if split else list(SPLITS)
    pairs = []
    for s in splits:
        if per_split_root:       # uecfoodpix: root/<split>/img
            img, msk = root / s / image_sub, root / s / mask_sub
        else:                    # foodseg103: root/Images/img_dir/<split>
            img, msk = root / image_sub / s, root / mask_sub / s
        if img.is_dir() and msk.is_dir():
            pairs.append(FolderPair(s, img, msk))
        elif split:
            missing = img if not img.is_dir() else msk
            raise LayoutError(f"{root}: split {split!r} has no folder {missing}")
    return pairs


def resolve_layout(root: str | Path, layout: str = "auto", split: str | None = None) -> Layout:
    """Find the image/mask folders of ``root`` for ``layout`` (or detect it); clear errors when absent."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset root {root} is not a folder")
    if layout not in LAYOUTS + ("auto",):
        raise LayoutError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    name = detect_layout(root, split) if layout == "auto" else layout
    if name == "pairs":
        base = root / split if split else root
        img, msk = base / "images", base / "masks"
        for d in (img, msk):
            if not d.is_dir():
                raise LayoutError(f"{root}: layout 'pairs' needs folder {d}")
        return Layout(name, root, (FolderPair(split, img, msk),))
    if name == "foodseg103":
        folders = _split_folders(root, split, "Images/img_dir", "Images/ann_dir", per_split_root=False)
        channel = None
    else:
        folders = _split_folders(root, split, "img", "mask", per_split_root=True)
        channel = "red"
    if not folders:
        raise LayoutError(f"{root}: layout {name!r} found no split folders ({', '.join(SPLITS)})")
    return Layout(name, root, tuple(folders), channel)


def detect_layout(root: str | Path, split: str | None = None) -> str:
    root = Path(root)
    base = root / split if split else root
    if (base / "images").is_dir() and (base / "masks").is_dir():
        return "pairs"
    if (root / "Images" / "img_dir").is_dir() and (root / "Images" / "ann_dir").is_dir():
        return "foodseg103"
    if any((root / s / "img").is_dir() and (root / s / "mask").is_dir() for s in SPLITS):
        return "uecfoodpix"
    raise LayoutError(
        f"{root}: cannot detect the dataset layout; expected images/ + masks/ (pairs), "
        "Images/img_dir + Images/ann_dir (foodseg103) or {train,test}/img + {train,test}/mask (uecfoodpix)")
