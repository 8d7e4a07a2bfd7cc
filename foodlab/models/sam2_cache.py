"""The two on-disk caches of SAM2 outputs: image-encoder embeddings and teacher mask logits.

Both are computed once over a dataset (expensive: the full SAM2 image encoder runs on
every image) and reused by later runs. They share one contract: fp16 ``.npy`` memmaps
plus a ``meta.json`` that is written last and atomically, so ``"complete": true`` means
every array is on disk, and a cache whose meta matches the request is reused as is.

- ``embed_dataset`` / ``EmbeddingDataset``: the features the mask decoder consumes, for
  decoder-only training (``foodlab embed``).
- ``teacher_logits`` / ``TeacherTargets``: a SAM2 teacher's mask logits, for distilling
  the lightweight head (``foodlab distill``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from foodlab.atomic import write_text_atomic
from foodlab.config import ModelConfig
from foodlab.devices import autocast, autocast_dtype, resolve_device
from foodlab.models.sam2_backend import build_sam2_model, encode

log = logging.getLogger(__name__)

_ARRAYS = ("image_embed", "high_res_0", "high_res_1")


def _read_complete_meta(meta_path: Path) -> dict | None:
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("complete") else None


def _finish(meta_path: Path, meta: dict) -> None:
    """Written last and atomically: "complete" means every array is there."""
    write_text_atomic(meta_path, json.dumps({**meta, "complete": True}, indent=2))


# ---------------------------------------------------------------- embeddings

def embed_dataset(dataset, out_dir: str | Path, model_type: str = "tiny", checkpoint: str | Path | None = None,
                  batch_size: int = 2, device="auto", image_size: int | None = None, amp: bool = True) -> Path:
    """Run the frozen SAM2 image encoder once over ``dataset`` and store its outputs (fp16) on disk.

    Writes ``image_embed.npy``, ``high_res_0.npy``, ``high_res_1.npy`` (the features the
    decoder consumes, after ``conv_s0``/``conv_s1`` and ``no_mem_embed``, so those stay
    frozen in decoder-only training), ``masks.npy`` (uint8 class ids) and ``meta.json``.
    A complete cache with the same model type, checkpoint, SAM2 input size and dataset
    fingerprint is reused as is.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    dev = resolve_device(device)
    sam = build_sam2_model(model_type, checkpoint, dev, image_size=image_size)
    meta = {
        "model_type": model_type,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "sam2_image_size": int(sam.image_size),
        "num_images": len(dataset),
        "fingerprint": str(getattr(dataset, "fingerprint", "")),
        "num_classes": int(getattr(dataset, "num_classes", 1)),
    }
    meta_path = out / "meta.json"
    old = _read_complete_meta(meta_path)
    if old and all(old.get(k) == v for k, v in meta.items()):
        log.info("reusing SAM2 embeddings in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted rewrite must not look complete to EmbeddingDataset
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    dtype = autocast_dtype(dev) if amp else None
    arrays: dict[str, np.ndarray] = {}
    start = 0
    with torch.inference_mode():
        for images, masks in tqdm(loader, desc=f"SAM2 {model_type} embeddings", unit="batch"):
            with autocast(dev, dtype):
                feats = encode(sam, images.to(dev))
            tensors = {"image_embed": feats["image_embed"], "high_res_0": feats["high_res_feats"][0],
                       "high_res_1": feats["high_res_feats"][1], "masks": masks}
            if not arrays:
                for name, t in tensors.items():
                    np_dtype = np.uint8 if name == "masks" else np.float16
                    arrays[name] = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np_dtype,
                                                             shape=(len(dataset), *t.shape[1:]))
            end = start + images.shape[0]
            for name, t in tensors.items():
                arrays[name][start:end] = t.clamp(0, 255).to(torch.uint8).numpy() if name == "masks" \
                    else t.float().cpu().numpy().astype(np.float16)
            start = end
    for a in arrays.values():
        a.flush()
    _finish(meta_path, {**meta, "mask_size": list(arrays["masks"].shape[1:]) if arrays else None})
    log.info("wrote SAM2 %s embeddings for %d images to %s", model_type, len(dataset), out)
    return out


class EmbeddingDataset(Dataset):
    """Reads an ``embed_dataset`` folder: item i -> ({"image_embed", "high_res_feats": [s0, s1]} fp16, mask long)."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no SAM2 embeddings in {self.root} (run `foodlab embed` first)")
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise ValueError(f"SAM2 embeddings in {self.root} are incomplete; run `foodlab embed` again")
        self.num_classes = self.meta.get("num_classes", 1)
        self._arrays: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # opened lazily so the dataset pickles cheaply into workers
            self._arrays = {n: np.load(self.root / f"{n}.npy", mmap_mode="r") for n in (*_ARRAYS, "masks")}
        return self._arrays

    def __len__(self) -> int:
        return int(self.meta["num_images"])

    def __getitem__(self, i: int):
        a = self._open()
        feats = {"image_embed": torch.from_numpy(np.array(a["image_embed"][i])),
                 "high_res_feats": [torch.from_numpy(np.array(a["high_res_0"][i])),
                                    torch.from_numpy(np.array(a["high_res_1"][i]))]}
        return feats, torch.from_numpy(np.array(a["masks"][i])).long()


# ---------------------------------------------------------------- teacher logits

def _teacher_id(teacher: str) -> str:
    """"random", or the checkpoint's path, size and mtime: a replaced checkpoint is a new teacher."""
    if teacher == "random":
        return "random"
    p = Path(teacher)
    if not p.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {teacher}")
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def teacher_logits(dataset, teacher: str, model_cfg: ModelConfig, cache_dir: str | Path, device: torch.device,
                   batch_size: int = 2, sam2_image_size: int | None = None, seed: int = 0) -> Path:
    """Run the SAM2 teacher once over ``dataset``; returns the ``.npy`` of its fp16 logits (N, C, H, W).

    The teacher is the full SAM2 prompted from the ground-truth masks (an empty mask gets
    the whole-image box). A complete cache for the same dataset fingerprint, teacher,
    model type, sizes and classes is reused without building SAM2 at all.
    """
    from tqdm.auto import tqdm

    from foodlab.models.detector import FoodDetector

    meta = {"fingerprint": str(getattr(dataset, "fingerprint", "")), "n": len(dataset),
            "teacher": _teacher_id(teacher), "model_type": model_cfg.sam2_model_type,
            "num_classes": model_cfg.num_classes, "sam2_image_size": sam2_image_size, "seed": seed}
    key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_dir) / f"teacher_{key}"
    meta_path, logits_path = out / "meta.json", out / "logits.npy"
    if _read_complete_meta(meta_path):
        log.info("reusing cached teacher logits in %s", out)
        return logits_path
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    torch.manual_seed(seed)  # a "random" teacher is the same random teacher every time
    sam_teacher = FoodDetector(use_lightweight_head=False, sam2_model_type=model_cfg.sam2_model_type,
                               sam2_checkpoint=None if teacher == "random" else teacher,
                               num_classes=model_cfg.num_classes, device=device, sam2_image_size=sam2_image_size)
    sam_teacher.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    dtype = autocast_dtype(device) if device.type != "cpu" else None
    arr, start = None, 0
    with torch.inference_mode():
        for images, masks in tqdm(loader, desc="SAM2 teacher", unit="batch"):
            with autocast(device, dtype):  # empty masks -> whole-image box prompts
                logits = sam_teacher(images.to(device), masks=masks.to(device)).float()
            if arr is None:
                arr = np.lib.format.open_memmap(logits_path, mode="w+", dtype=np.float16,
                                                shape=(len(dataset), *logits.shape[1:]))
            arr[start:start + len(logits)] = logits.clamp(-6e4, 6e4).cpu().numpy().astype(np.float16)
            start += len(logits)
    arr.flush()
    _finish(meta_path, meta)
    log.info("cached teacher logits for %d images in %s", len(dataset), out)
    return logits_path


class TeacherTargets(Dataset):
    """(image, mask, teacher_logits) for each item of ``base``; the logits come from the memmap."""

    def __init__(self, base, logits_path: str | Path):
        self.base, self.logits_path, self._logits = base, Path(logits_path), None
        self.fingerprint = getattr(base, "fingerprint", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self._logits is None:  # opened lazily: pickles cheaply into DataLoader workers
            self._logits = np.load(self.logits_path, mmap_mode="r")
        image, mask = self.base[i]
        return image, mask, torch.from_numpy(np.array(self._logits[i], dtype=np.float32))

    def bad_report(self) -> dict:
        return self.base.bad_report() if hasattr(self.base, "bad_report") else {}
