"""`foodlab predict` (masks + overlays for your own photos), `foodlab embed` (SAM2 embeddings cache) and
`foodlab models promote|list` (the MLflow model registry)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="segment food in an image or a folder of images",
                       description="Write <name>_mask.png and <name>_overlay.jpg per image, at the image's own size. "
                                   "Binary heads write 0/255 masks (visible); multi-class heads write class ids "
                                   "0..C-1. Unreadable files are skipped and reported (exit code 1).")
    p.add_argument("input", type=Path, help="an image file or a folder of images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="model.pt, best.pt or last.pt written by foodlab train "
                                                  "(or a save_head file)")
    src.add_argument("--model", metavar="URI", help="an MLflow Model: models:/NAME@champion, models:/NAME/3, "
                                                    "runs:/<run id>/model")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mode", choices=("sam2", "lightweight"), default="sam2")
    p.add_argument("--sam2-checkpoint", type=Path, default=None,
                   help="local SAM2.1 .pt (else the model's own, else random weights)")
    p.add_argument("--sam2-model-type", default=None, choices=("tiny", "small", "base_plus", "large"),
                   help="default: the model's own, else tiny")
    p.add_argument("--sam2-image-size", type=int, default=None, help=argparse.SUPPRESS)  # tests/smoke only
    p.add_argument("--image-size", type=int, default=None,
                   help="resolution the head runs at (default: the model's training size, else 512)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2, help="processes decoding images")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_predict)

    m = sub.add_parser("models", help="the model registry: promote the best version, list versions",
                       description="Registered foodlab models (foodlab train --register NAME). Load the champion "
                                   "with `foodlab predict --model models:/NAME@champion` or serve it with "
                                   "`mlflow models serve -m models:/NAME@champion --env-manager local`.")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    pr = msub.add_parser("promote", help="point the alias 'champion' at the best version (or at --version N)")
    pr.add_argument("name", help="registered model name")
    how = pr.add_mutually_exclusive_group()
    how.add_argument("--metric", default="val_miou",
                     help="pick the version whose run logged the best value of this metric (default: val_miou; "
                          "names with loss/error/time: lowest wins, else highest)")
    how.add_argument("--version", help="pick this version")
    pr.add_argument("--alias", default="champion", help=argparse.SUPPRESS)
    pr.set_defaults(func=run_promote)
    ls = msub.add_parser("list", help="versions of a registered model with their aliases and run metrics")
    ls.add_argument("name", help="registered model name")
    ls.set_defaults(func=run_list)

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


def load_for_predict(args):
    """(detector, head image size) from --weights or --model; flags given override the model's own settings."""
    sam2 = {"sam2_checkpoint": args.sam2_checkpoint, "sam2_image_size": args.sam2_image_size, "device": args.device}
    if args.model:
        from foodlab.models.pyfunc import load_detector

        loaded = load_detector(args.model, sam2_model_type=args.sam2_model_type, **sam2)
        return loaded.detector, args.image_size or loaded.image_size
    from foodlab.models.detector import FoodDetector

    detector = FoodDetector.from_head_file(args.weights, sam2_model_type=args.sam2_model_type or "tiny", **sam2)
    return detector, args.image_size or 512


def run_predict(args) -> int:
    from foodlab.models.predict import image_paths, predict_folder

    image_paths(args.input)   # a missing input is named before a model is loaded
    detector, image_size = load_for_predict(args)
    report = predict_folder(detector, args.input, args.out, mode=args.mode, image_size=image_size,
                            batch_size=args.batch_size, num_workers=args.num_workers)
    print(f"wrote {len(report.written)} masks and overlays to {args.out} (mode {args.mode}, "
          f"{report.images_per_s:.2f} images/s)")
    if report.failed:
        for path, reason in report.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"{len(report.failed)} of {len(report.failed) + len(report.written)} inputs could not be read",
              file=sys.stderr)
        return 1
    return 0


def run_promote(args) -> int:
    from foodlab import tracking

    tracking.configure(check=True)
    version = tracking.promote(args.name, metric=args.metric, version=args.version, alias=args.alias)
    how = f"chosen as version {args.version}" if args.version else f"best {args.metric}"
    print(f"models:/{args.name}@{args.alias} -> version {version} ({how})")
    return 0


def run_list(args) -> int:
    from foodlab import tracking

    tracking.configure(check=True)
    versions = tracking.model_versions(args.name)
    if not versions:
        print(f"no versions of {args.name!r}")
        return 0
    shown = sorted({k for v in versions for k in v["metrics"] if k.startswith("val_")})
    print("\t".join(["version", "aliases", "run_id", *shown]))
    for v in versions:
        values = [f"{v['metrics'][k]:.4f}" if k in v["metrics"] else "-" for k in shown]
        print("\t".join([v["version"], ",".join(v["aliases"]) or "-", v["run_id"] or "-", *values]))
    return 0


def run_embed(args) -> int:
    from foodlab.data.dataset import FoodSegDataset
    from foodlab.models.sam2_cache import embed_dataset

    dataset = FoodSegDataset(args.data, split=args.split, image_size=args.image_size, num_classes=args.num_classes)
    out = embed_dataset(dataset, args.out, model_type=args.model_type, checkpoint=args.sam2_checkpoint,
                        batch_size=args.batch_size, device=args.device, image_size=args.sam2_image_size)
    print(out)
    return 0
