"""``foodlab train`` and ``foodlab distill`` (``python -m foodlab.train`` = ``foodlab train``).

Flags default to None and only override the settings below them: the dataclass defaults
in foodlab.config, then a ``--config FILE``, then the flags given. Heavy imports stay
inside the command functions.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


TRAIN_EPILOG = """\
settings: defaults from foodlab/config.py, then --config FILE (YAML with data:, model:,
train: sections; unknown keys and wrong types are refused naming file and key), then flags.

each run writes <out-dir>/<experiment>/<run-name or UTC time>-<MLflow run id[:8]>/:
last.pt + previous.pt (for --resume), best.pt, model.pt and training.log; best.pt,
model.pt and training.log are also logged to the MLflow run.

--resume             continue the experiment's latest run (refused while it is running)
--resume FOLDER      continue that run folder
--resume RUN_ID      continue the run with that MLflow run id
a resume must keep the run's image size, classes, head, data, batch size and lr; a larger
--epochs extends it: the lr continues from where it stands down to lr/100 (never back up).

exit codes: 0 done, 1 failed (message says why), 2 bad flags or settings, 3 loss diverged,
130 interrupted (a checkpoint was saved; --resume continues).
"""


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags `foodlab train` and `foodlab distill` share."""
    bool_flag = argparse.BooleanOptionalAction
    p.add_argument("--config", metavar="FILE",
                   help="YAML with data:, model:, train: sections (keys as in foodlab/config.py); its values "
                        "replace the defaults and the flags given here replace its values")
    p.add_argument("--data", metavar="DIR", help="dataset root (default: the built-in synthetic dataset)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), help="default auto: cuda > mps > cpu")
    p.add_argument("--model-type", choices=("tiny", "small", "base_plus", "large"), help="SAM2 size")
    p.add_argument("--lightweight-head", action=bool_flag, default=None,
                   help="train the lightweight head (default) or, with --no-lightweight-head, SAM2 itself")
    p.add_argument("--head", choices=("fast", "baseline"))
    p.add_argument("--image-size", type=int)
    p.add_argument("--num-classes", type=int, help="1: food/not food; >1: class ids")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: per device)")
    p.add_argument("--amp", action=bool_flag, default=None, help="autocast (default: per device)")
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--cache", nargs="?", const="auto", metavar="DIR",
                   help="decoded-image cache (default folder: $FOODLAB_CACHE/decoded, else ~/.cache/foodlab/decoded)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                   help="continue a run: a run folder, an MLflow run id, or nothing for the experiment's latest run")
    p.add_argument("--experiment", help="MLflow experiment")
    p.add_argument("--run-name", help="MLflow run name (also names the run folder)")
    p.add_argument("--register", metavar="NAME",
                   help="register the trained head as a new version of the MLflow registered model NAME "
                        "(then: foodlab models promote NAME)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--out-dir", help="each run gets <out-dir>/<experiment>/<run-name or UTC time>-<MLflow run id>/")
    p.add_argument("--val-fraction", type=float, help="seeded holdout when the dataset has no val split")
    p.add_argument("--freeze-image-encoder", action="store_true", default=None)
    p.add_argument("--sam2-checkpoint", metavar="PATH")
    p.add_argument("--sam2-cached-embeddings", action="store_true", default=None,
                   help="with --no-lightweight-head: train SAM2's decoder on precomputed image embeddings")
    p.add_argument("--synthetic-n", type=int, help="images in the built-in synthetic dataset")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (tests, smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs_from_args(args: argparse.Namespace):
    """(DataConfig, ModelConfig, TrainConfig) from the dataclass defaults plus the flags given."""
    from dataclasses import replace

    from foodlab.config import Config, load_yaml

    def given(**pairs):
        return {k: v for k, v in pairs.items() if v is not None}

    base = load_yaml(args.config) if getattr(args, "config", None) else Config()

    cache = args.cache
    if cache == "auto":
        from foodlab.data.synth import default_cache_root

        cache = str(default_cache_root() / "decoded")
    n_classes = args.num_classes
    data = replace(base.data, **given(root=args.data, image_size=args.image_size, num_classes=n_classes, cache=cache,
                              synth_n=args.synthetic_n))  # --seed is the training seed, not the data's
    if args.image_size is not None and args.data is None:
        data.synth_size = args.image_size  # generate at the size we train at: no resize per sample
    model = replace(base.model, **given(use_lightweight_head=args.lightweight_head, head=args.head,
                                sam2_model_type=args.model_type, sam2_checkpoint=args.sam2_checkpoint,
                                freeze_image_encoder=args.freeze_image_encoder, num_classes=n_classes))
    train = replace(base.train, **given(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
                                num_workers=args.num_workers, amp=args.amp, accum_steps=args.accum_steps,
                                channels_last=args.channels_last, compile=args.compile, seed=args.seed,
                                val_fraction=args.val_fraction, out_dir=args.out_dir, resume=args.resume,
                                experiment=args.experiment, run_name=args.run_name, register=args.register,
                                sam2_cached_embeddings=args.sam2_cached_embeddings))
    return data, model, train


def _setup_rank_logging() -> None:
    """Rank 0 keeps the console level; other DDP ranks log warnings only (each run's file log is its folder's)."""
    from foodlab.logging_setup import setup_logging

    if int(os.environ.get("RANK", "0")) != 0:
        setup_logging(logging.WARNING)


def _run(args: argparse.Namespace, distill: bool) -> int:
    """Train or distill; errors (a dead tracking server, divergence: exit 3, bad settings: exit 2) reach
    ``cli.main``, which prints them as one line."""
    _setup_rank_logging()
    data, model, train_cfg = configs_from_args(args)
    if distill:
        from foodlab.train.distill import distill as run

        result = run(data, model, train_cfg, teacher=args.teacher_checkpoint or args.teacher,
                     targets=args.targets, alpha=args.alpha, teacher_cache=args.teacher_cache,
                     teacher_image_size=args.teacher_image_size,
                     max_steps=args.max_steps, progress=not args.no_progress)
    else:
        from foodlab.train.loop import train as run

        result = run(data, model, train_cfg, max_steps=args.max_steps, progress=not args.no_progress)
    if result.interrupted:
        print(f"interrupted at step {result.steps}; checkpoint {result.last_checkpoint}; "
              f"continue with: foodlab {'distill' if distill else 'train'} --resume {result.run_folder}",
              file=sys.stderr)
        return 130
    log.info("done: %d steps, best val mIoU %.4f, run %s, folder %s (best.pt, last.pt, model.pt, training.log)",
             result.steps, result.best_miou, result.run_id, result.run_folder)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train the lightweight head (or SAM2) with MLflow tracking",
                       description="Train on a dataset folder, or on the built-in synthetic dataset without --data.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_flags(p)
    p.set_defaults(func=lambda args: _run(args, distill=False))

    d = sub.add_parser("distill", help="train the lightweight head on a SAM2 teacher's cached masks",
                       description="Run the SAM2 teacher once over the dataset, cache its mask logits, "
                                   "then train the lightweight head on them.")
    add_training_flags(d)
    teacher = d.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher-checkpoint", metavar="PATH", help="SAM2 checkpoint of the teacher")
    teacher.add_argument("--teacher", choices=("random",), help="random SAM2 weights (plumbing tests only)")
    d.add_argument("--targets", choices=("soft", "hard"), default="soft",
                   help="soft: sigmoid/softmax of the teacher's logits; hard: its thresholded masks")
    d.add_argument("--alpha", type=float, default=0.0, help="weight of the ground-truth loss (0: teacher only)")
    d.add_argument("--teacher-cache", metavar="DIR",
                   help="where teacher logits are cached (default: <out-dir>/teacher_cache)")
    d.add_argument("--teacher-image-size", type=int, help="SAM2 input size of the teacher (default: its 1024)")
    d.set_defaults(func=lambda args: _run(args, distill=True))
