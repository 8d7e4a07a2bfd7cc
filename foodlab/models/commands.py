"""`foodlab predict` (masks + overlays for your own photos) and `foodlab embed` (SAM2 embeddings cache)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="segment food in an image or a folder of images",
                       description="Write <stem>_mask.png and <stem>_overlay.jpg per image. Binary heads write "
                                   "0/255 masks (visible); multi-class heads write class ids 0..C-1.")
    p.add_argument("input", type=Path, help="an image file or a folder of images")
    p.add_argument("--weights", type=Path, required=True, help="model.pt, best.pt or last.pt written by foodlab train (or a save_head file)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mode", choices=("sam2", "lightweight"), default="sam2")
    p.add_argument("--sam2-checkpoint", type=Path, default=None, help="local SAM2.1 .pt (else random weights)")
    p.add_argument("--sam2-model-type", default="tiny", choices=("tiny", "small", "base_plus", "large"))
    p.add_argument("--sam2-image-size", type=int, default=None, help=argparse.SUPPRESS)  # tests/smoke only
    p.add_argument("--image-size", type=int, default=512, help="resolution the head runs at")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_predict)

    e = sub.add_parser("embed", help="cache SAM2 image embeddings of a dataset for decoder-only training")
    e.add_argument("--data", type=Path, required=True, help="dataset root (any layout FoodSegDataset reads)")
    e.add_argument("--out", type=Path, required=True, help="output folder for the .npy arrays + meta.json")
    e.add_argument("--split", default=None)
    e.add_argument("--model-type", default="tiny", choices=("tiny", "small", "base_plus", "large"))
    e.add_argument("--sam2-checkpoint", type=Path, default=None)
    e.add_argument("--sam2-image-size", type=int, default=None, help=argparse.SUPPRESS)
    e.add_argument("--image-size", type=int, default=512, help="dataset image/mask size")
    e.add_argument("--num-classes", type=int, default=1)
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=run_embed)


def _image_paths(src: Path) -> list[Path]:
    if src.is_dir():
        paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {src}")
        return paths
    if not src.is_file():
        raise FileNotFoundError(f"no such image or folder: {src}")
    return [src]


def _overlay(rgb, mask, num_classes: int):
    """Food pixels tinted by class colour (50 %), as BGR for cv2.imwrite."""
    import cv2
    import numpy as np

    palette = np.random.default_rng(0).integers(64, 256, size=(max(num_classes, 2), 3)).astype(np.uint8)
    palette[0] = 0
    palette[1] = (255, 64, 0) if num_classes <= 2 else palette[1]
    colour = palette[mask.clip(0, len(palette) - 1)]
    out = rgb.copy()
    fg = mask > 0
    out[fg] = (0.5 * rgb[fg] + 0.5 * colour[fg]).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def run_predict(args) -> int:
    import cv2
    import numpy as np
    import torch

    from foodlab.data import read_image  # RGB uint8, EXIF-upright, grayscale/RGBA/16-bit handled
    from foodlab.models import FoodDetector

    paths = _image_paths(args.input)
    model = FoodDetector.load_head(args.weights, sam2_model_type=args.sam2_model_type,
                                   sam2_checkpoint=args.sam2_checkpoint, device=args.device,
                                   sam2_image_size=args.sam2_image_size)
    args.out.mkdir(parents=True, exist_ok=True)
    s = args.image_size
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        rgbs = [read_image(p) for p in chunk]
        batch = np.stack([cv2.resize(r, (s, s), interpolation=cv2.INTER_AREA) for r in rgbs])
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
        result = model.predict(images, mode=args.mode)
        for path, rgb, mask, score in zip(chunk, rgbs, result["masks"].cpu().numpy(), result["scores"].tolist()):
            mask = cv2.resize(mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
            written = mask * 255 if model.num_classes == 1 else mask
            cv2.imwrite(str(args.out / f"{path.stem}_mask.png"), written)
            cv2.imwrite(str(args.out / f"{path.stem}_overlay.jpg"), _overlay(rgb, mask, model.num_classes))
            log.info("%s: food %.1f%% of pixels, score %.3f", path.name, 100 * (mask > 0).mean(), score)
    log.info("wrote %d masks and overlays to %s (mode %s)", len(paths), args.out, args.mode)
    return 0


def run_embed(args) -> int:
    from foodlab.data import FoodSegDataset
    from foodlab.models.sam2_cache import embed_dataset

    dataset = FoodSegDataset(args.data, split=args.split, image_size=args.image_size, num_classes=args.num_classes)
    out = embed_dataset(dataset, args.out, model_type=args.model_type, checkpoint=args.sam2_checkpoint,
                        batch_size=args.batch_size, device=args.device, image_size=args.sam2_image_size)
    print(out)
    return 0
