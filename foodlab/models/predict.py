"""Segment your own photos: masks at each photo's own resolution, every input accounted for.

``segment`` is the one inference path, shared by ``foodlab predict`` and the MLflow Model
(``pyfunc.py``), so both give the same masks. The head runs at its training size; in
``sam2`` mode SAM2 sees the photo itself (see ``sam2_backend.photo_masks``), prompted from
the head's mask, and its logits are thresholded at the photo's size. A photo's prompts are
seeded on their own, so its mask does not depend on the batch it came in.

``predict_folder`` batches a folder through a DataLoader (decoding in workers). A file that
cannot be decoded is skipped with its reason and reported at the end; every other photo is
written. A failed write is an error (``FoodlabError``): nothing is claimed that is not on disk.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from foodlab.atomic import atomic_write
from foodlab.data.dataset import BadSample, read_image
from foodlab.data.layouts import IMAGE_EXTS
from foodlab.errors import FoodlabError, UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = set(IMAGE_EXTS)
MODES = ("sam2", "lightweight")


def image_paths(src: Path) -> list[Path]:
    """The photos to segment: ``src`` itself, or the image files directly inside the folder ``src``."""
    src = Path(src)
    if src.is_dir():
        paths = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}; point predict at a photo "
                             "or a folder of photos")
        return paths
    if not src.is_file():
        raise UsageError(f"no such image or folder: {src}")
    return [src]


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """A distinct output name per input: the stem, plus the suffix when stems repeat (a.jpg, a.png ->
    a_jpg, a_png), plus a counter if that still collides. Compared case-insensitively (macOS, Windows)."""
    stems = Counter(p.stem.lower() for p in paths)
    used: set[str] = set()
    out = {}
    for p in paths:
        base = p.stem if stems[p.stem.lower()] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}"
        name, k = base, 1
        while name.lower() in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name.lower())
        out[p] = name
    return out


def segment(detector, photos: list[np.ndarray], *, mode: str = "sam2", image_size: int = 512,
            ) -> list[tuple[np.ndarray, float]]:
    """(mask, score) per RGB uint8 photo (H, W, 3): uint8 class ids (H, W) at the photo's own size."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not photos:
        return []
    s = int(image_size)
    head_in = np.stack([cv2.resize(p, (s, s), interpolation=cv2.INTER_AREA) for p in photos])
    head_in = torch.from_numpy(head_in).permute(0, 3, 1, 2).float().div(255)
    if mode == "lightweight":
        head = detector.predict(head_in, mode="lightweight")
        masks = [cv2.resize(m.astype(np.uint8), (p.shape[1], p.shape[0]), interpolation=cv2.INTER_NEAREST)
                 for m, p in zip(head["masks"].cpu().numpy(), photos)]
        return list(zip(masks, head["scores"].float().cpu().tolist()))
    detector.eval()
    with torch.inference_mode():
        tensors = [torch.from_numpy(p).permute(2, 0, 1).float().div(255) for p in photos]
        masks, scores = detector.refine(tensors, head_in)
    masks = [m.to(torch.uint8).cpu().numpy() for m in masks]
    return list(zip(masks, scores.float().cpu().tolist()))


def overlay(rgb: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Food pixels tinted by class colour (50 %), as BGR for cv2."""
    palette = np.random.default_rng(0).integers(64, 256, size=(max(num_classes, 2), 3)).astype(np.uint8)
    palette[0] = 0
    palette[1] = (255, 64, 0) if num_classes <= 2 else palette[1]
    colour = palette[mask.clip(0, len(palette) - 1)]
    out = rgb.copy()
    fg = mask > 0
    out[fg] = (0.5 * rgb[fg] + 0.5 * colour[fg]).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode by the suffix and write atomically; any failure is a one-line ``FoodlabError``.

    ``cv2.imwrite`` only returns False (no reason) on a read-only or full folder; encoding in
    memory and writing the bytes ourselves gives the OS's reason.
    """
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise FoodlabError(f"cannot encode {path.name} as {path.suffix}")
    try:
        with atomic_write(path) as f:
            f.write(buf.tobytes())
    except OSError as e:
        raise FoodlabError(f"cannot write {path}: {e.strerror or e}; choose an --out folder that is writable "
                           "and has space") from e


class _Photos(Dataset):
    """Item i -> (i, RGB uint8 photo or None, reason it could not be read or None)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, read_image(self.paths[i]), None
        except BadSample as e:
            return i, None, e.reason
        except (OSError, cv2.error) as e:
            return i, None, f"unreadable: {e}"


@dataclasses.dataclass
class PredictReport:
    written: list[Path]  # the mask files, one per photo segmented
    failed: list[tuple[Path, str]]  # (input, reason) for inputs skipped
    images_per_s: float


def predict_folder(detector, src: Path, out: Path, *, mode: str = "sam2", image_size: int = 512,
                   batch_size: int = 4, num_workers: int = 0, progress: bool = True) -> PredictReport:
    """Write ``<name>_mask.png`` (binary: 0/255; multi-class: class ids) and ``<name>_overlay.jpg`` per photo."""
    from tqdm.auto import tqdm

    paths = image_paths(src)
    names = output_stems(paths)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FoodlabError(f"cannot create the output folder {out}: {e.strerror or e}") from e
    loader = DataLoader(_Photos(paths), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    written, failed, done = [], [], 0
    start = time.perf_counter()
    with tqdm(total=len(paths), unit="img", desc=f"predict ({mode})", disable=not progress) as bar:
        for batch in loader:
            good = [(paths[i], rgb) for i, rgb, reason in batch if rgb is not None]
            for i, _, reason in batch:
                if reason is not None:
                    log.warning("skipping %s: %s", paths[i], reason)
                    failed.append((paths[i], reason))
            results = segment(detector, [rgb for _, rgb in good], mode=mode, image_size=image_size)
            for (path, rgb), (mask, score) in zip(good, results):
                mask_path = out / f"{names[path]}_mask.png"
                write_image(mask_path, mask * 255 if detector.num_classes == 1 else mask)
                write_image(out / f"{names[path]}_overlay.jpg", overlay(rgb, mask, detector.num_classes))
                written.append(mask_path)
                log.debug("%s: food %.1f%% of pixels, score %.3f", path.name, 100 * (mask > 0).mean(), score)
            done += len(good)
            bar.update(len(batch))
    elapsed = time.perf_counter() - start
    return PredictReport(written, failed, done / elapsed if elapsed > 0 else 0.0)
