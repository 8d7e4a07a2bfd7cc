"""The training loop: ``train(data_cfg, model_cfg, train_cfg)`` -> a tracked, checkpointed run.

Order matters and is the point of this file: check the MLflow store first (an
unreachable server fails before any data or model is built), then data, model,
optimizer, and a resume from ``last.pt`` if asked; then epochs of
``train_one_epoch`` + ``evaluate``, each ending in an atomic checkpoint. A batch
is anything ``step_fn(model, batch) -> (loss, logits, target)`` understands, so
supervised training, full-SAM2 training, decoder-only training on cached
embeddings and distillation all run through this one loop.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from foodlab import devices, tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig, as_dict
from foodlab.labels import class_ids
from foodlab.train.build import build_datasets, build_model, sam2_decoder_setup
from foodlab.train.checkpoint import (
    StopOnSignal,
    restore_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from foodlab.train.ddp import Dist, ResumableSampler
from foodlab.train.losses import segmentation_loss
from foodlab.train.metrics import SegMetrics, overlay_figure

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    run_id: str | None
    best_miou: float
    metrics: dict[str, float]                  # the last validation metrics
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    steps: int                                 # optimizer steps taken in total (across resumes)
    epochs: int                                # epochs completed
    skipped: dict = field(default_factory=dict)  # the dataset's bad-sample report
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    interrupted: bool = False


@dataclass
class Session:
    """Everything one epoch needs; built once by ``train``."""
    model: nn.Module            # what the forward runs through (maybe DDP / compiled)
    raw_model: nn.Module        # what gets saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step_fn: StepFn
    device: torch.device
    amp_dtype: torch.dtype | None
    cfg: TrainConfig
    dist: Dist
    track: bool
    progress: bool
    max_steps: int | None
    step: int = 0


def supervised_step(full_sam2: bool = False) -> StepFn:
    """(images, masks) batches; full SAM2 is prompted from the ground-truth masks."""
    def step(model: nn.Module, batch: Any):
        images, masks = batch[0], batch[1]
        logits = model(images, masks=masks) if full_sam2 else model(images)
        return segmentation_loss(logits, masks), logits, masks
    return step


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=device.type == "cuda")
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(s: Session, loader, num_classes: int) -> tuple[dict[str, float], tuple | None]:
    """Validation metrics over this rank's share (confusion summed over ranks) and a sample for overlays."""
    s.raw_model.eval()
    metrics, loss_sum, n, sample = SegMetrics(num_classes), 0.0, 0, None
    for batch in loader:
        batch = to_device(batch, s.device)
        with devices.autocast(s.device, s.amp_dtype):
            loss, logits, target = s.step_fn(s.raw_model, batch)
        pred = class_ids(logits.float())
        metrics.update(pred, target)
        loss_sum, n = loss_sum + float(loss) * len(target), n + len(target)
        images = batch[0] if isinstance(batch, (list, tuple)) else None
        if sample is None and isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == 3:
            sample = (images[:4].cpu(), target[:4].cpu(), pred[:4].cpu())
    metrics.confusion = s.dist.all_reduce_sum(metrics.confusion, s.device)
    totals = s.dist.all_reduce_sum(torch.tensor([loss_sum, float(n)], dtype=torch.float64), s.device)
    out = metrics.compute()
    out["loss"] = float(totals[0] / max(1.0, float(totals[1])))
    s.raw_model.train()
    return out, sample


def train_one_epoch(s: Session, loader, epoch: int, first_batch: int, stop: StopOnSignal) -> dict:
    """Train until the loader ends, ``max_steps`` or a stop signal; returns the epoch's statistics.

    Stops are honoured only where an optimizer step just finished, so a saved position
    never splits a gradient-accumulation group.
    """
    cfg, accum = s.cfg, max(1, s.cfg.accum_steps)
    n_batches = first_batch + len(loader)
    bar = tqdm(total=n_batches, initial=first_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (s.progress and s.dist.is_main), leave=False, dynamic_ncols=True)
    stats = {"loss_sum": 0.0, "images": 0, "wait_s": 0.0, "busy_s": 0.0, "batch": first_batch, "reason": "end"}
    s.model.train()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        b = stats["batch"]
        is_step = (b + 1) % accum == 0 or b + 1 == n_batches
        batch = to_device(batch, s.device, cfg.channels_last)
        with s.dist.no_sync(s.model, sync=is_step):
            with devices.autocast(s.device, s.amp_dtype):
                loss, _, target = s.step_fn(s.model, batch)
            bad, stopping = s.dist.any(not bool(torch.isfinite(loss.detach())), stop.requested, device=s.device)
            if bad:
                raise TrainingDiverged(
                    f"loss became {float(loss.detach()):g} at step {s.step + 1} (epoch {epoch + 1}, batch {b + 1}); "
                    "stopped without saving, the last good checkpoint is kept; lower --lr or try --no-amp")
            s.scaler.scale(loss / accum).backward()
        if is_step:
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.optimizer.zero_grad(set_to_none=True)
            s.scheduler.step()
            s.step += 1
        t2 = time.perf_counter()
        n_img, loss_val = len(target) * s.dist.world_size, float(loss.detach())
        stats["batch"], stats["images"] = b + 1, stats["images"] + n_img
        stats["loss_sum"] += loss_val * n_img
        stats["wait_s"], stats["busy_s"] = stats["wait_s"] + (t1 - t0), stats["busy_s"] + (t2 - t0)
        ips = n_img / max(t2 - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_val:.4f}", img_s=f"{ips:.1f}")
        bar.update()
        if s.track and s.dist.is_main and is_step and s.step % max(1, cfg.log_every) == 0:
            tracking.log_metrics({"train_loss": loss_val, "images_per_s": ips,
                                  "lr": s.optimizer.param_groups[0]["lr"]}, step=s.step)
        if is_step and stopping:
            stats["reason"] = "signal"
            break
        if is_step and s.max_steps is not None and s.step >= s.max_steps:
            stats["reason"] = "max_steps"
            break
    bar.close()
    stats["complete"] = stats["batch"] >= n_batches
    return stats


@dataclass
class Progress:
    """Where a run stands: restored by a resume, advanced by every epoch, saved in each checkpoint."""
    epoch: int = 0                 # the next epoch to train (0-based)
    batch: int = 0                 # the next batch of that epoch
    best_miou: float = -1.0
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    interrupted: bool = False

    @property
    def fresh(self) -> bool:
        return self.epoch == 0 and self.batch == 0 and not self.history

    @property
    def train_time_s(self) -> float:
        """Time spent training (no validation, no logging), summed over resumes."""
        return self.history[-1]["train_time_s"] if self.history else 0.0


@dataclass
class Loaders:
    train_ds: Any
    val_ds: Any
    full_ds: Any
    sampler: ResumableSampler
    train: Any
    val: Any


def train(
    data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
    max_steps: int | None = None, progress: bool = True, track: bool = True,
    datasets: tuple | None = None, model: nn.Module | None = None, step_fn: StepFn | None = None,
    on_epoch_end: Callable[[dict], bool] | None = None, extra_params: dict | None = None,
) -> TrainResult:
    """Train (or resume) a model and return where things ended up.

    ``datasets=(train, val, full)``, ``model`` and ``step_fn`` replace the defaults built
    from the configs (distillation and the benchmarks use them); ``on_epoch_end(entry)``
    returning True stops after that epoch; ``track=False`` runs without MLflow.
    """
    device = devices.resolve_device(train_cfg.device)
    dist = Dist.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        return _train(data_cfg, model_cfg, train_cfg, device, dist, max_steps=max_steps, progress=progress,
                      track=track and dist.is_main, datasets=datasets, model=model, step_fn=step_fn,
                      on_epoch_end=on_epoch_end, extra_params=extra_params or {})
    finally:
        dist.close()


def _train(data_cfg, model_cfg, train_cfg, device, dist, *, max_steps, progress, track, datasets, model, step_fn,
           on_epoch_end, extra_params) -> TrainResult:
    if track:  # before any data or model work: a dead tracking server fails here, in seconds
        tracking.configure(check=True)
    if model_cfg.num_classes != data_cfg.num_classes:
        raise ValueError(f"model num_classes={model_cfg.num_classes} but data num_classes={data_cfg.num_classes}")
    log.info("Using device: %s (%s)", devices.device_name(device), device)
    seed_everything(train_cfg.seed)
    datasets, model, step_fn = _datasets_and_model(data_cfg, model_cfg, train_cfg, device, dist, datasets, model,
                                                   step_fn)
    s, loaders = _session(model, step_fn, datasets, model_cfg, train_cfg, device, dist, track=track,
                          progress=progress, max_steps=max_steps)
    ckpt_dir = Path(train_cfg.out_dir) / (train_cfg.run_name or train_cfg.experiment)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state = _resume(s, last_path) if train_cfg.resume else Progress()
    _mark_head_trained(s.raw_model, s.step)
    configs = {"data": as_dict(data_cfg), "model": as_dict(model_cfg), "train": as_dict(train_cfg)}
    run_ctx = (tracking.start_run(train_cfg.experiment, train_cfg.run_name, run_id=state.run_id,
                                  log_system_metrics=True) if track else contextlib.nullcontext())
    with run_ctx as run, StopOnSignal() as stop:
        state.run_id = run.info.run_id if track else None
        if track:
            _log_run_start(s, state, configs, loaders, extra_params)

        def save(epoch: int, batch: int, rng: dict, paths: tuple[Path, ...]) -> None:
            if dist.is_main:
                ckpt = training_state(s, epoch, batch, rng, {"best_miou": state.best_miou, "history": state.history,
                                                              "run_id": state.run_id, "configs": configs})
                for path in paths:
                    save_checkpoint(ckpt, path)

        for epoch in range(state.epoch, train_cfg.epochs):
            skip = state.batch if epoch == state.epoch else 0
            loaders.sampler.set_epoch(epoch, skip=skip * train_cfg.batch_size)
            loaders.train.generator = torch.Generator().manual_seed(train_cfg.seed + epoch)  # worker seeds
            t_epoch = time.perf_counter()
            train_time = state.train_time_s
            st = train_one_epoch(s, loaders.train, epoch, skip, stop)
            train_time += time.perf_counter() - t_epoch
            _mark_head_trained(s.raw_model, s.step)
            rng = rng_state()
            if st["reason"] == "signal":
                save(epoch, st["batch"], rng, (last_path,))
                _log_interrupted(s, state, epoch, st["batch"], last_path)
                break
            entry = _end_epoch(s, state, loaders, st, epoch, t_epoch, train_time, model_cfg.num_classes)
            position = (epoch + 1, 0) if st["complete"] else (epoch, st["batch"])
            improved = entry["val_miou"] > state.best_miou
            state.best_miou = max(state.best_miou, entry["val_miou"])
            save(*position, rng, (last_path, best_path) if improved else (last_path,))
            set_rng_state(rng)  # validation and logging must not shift the training RNG stream
            if st["reason"] == "max_steps" or (on_epoch_end is not None and on_epoch_end(entry)):
                break
        skipped = loaders.full_ds.bad_report() if hasattr(loaders.full_ds, "bad_report") else {}
        if track:
            _log_final_artifacts(s.raw_model, skipped, ckpt_dir, state.history[-1] if state.history else {})
    dist.barrier()
    return TrainResult(state.run_id, state.best_miou, state.history[-1] if state.history else {},
                       best_path if best_path.exists() else None, last_path if last_path.exists() else None,
                       s.step, len(state.history), skipped, state.history, state.interrupted)


def _datasets_and_model(data_cfg, model_cfg, train_cfg, device, dist, datasets, model, step_fn):
    """(train, val, full) datasets, the model to train and its step function; given ones win over the configs."""
    if dist.enabled and not dist.is_main:
        dist.barrier()  # rank 0 first: it generates the synthetic data, index caches and SAM2 embeddings once
    if train_cfg.sam2_cached_embeddings and not model_cfg.use_lightweight_head and datasets is None:
        setup = sam2_decoder_setup(data_cfg, model_cfg, train_cfg, device)
        datasets, model, step_fn = setup["datasets"], setup["model"], step_fn or setup["step_fn"]
    datasets = datasets or build_datasets(data_cfg, train_cfg.val_fraction, train_cfg.seed)
    if dist.enabled and dist.is_main:
        dist.barrier()
    model = model if model is not None else build_model(model_cfg, device)
    return datasets, model, step_fn or supervised_step(not model_cfg.use_lightweight_head)


def _session(raw_model, step_fn, datasets, model_cfg, train_cfg, device, dist, *, track, progress,
             max_steps) -> tuple[Session, Loaders]:
    """Model on its device, optimizer, lr schedule, loss scaler and the loaders: everything an epoch uses."""
    from foodlab.data.loader import make_loader

    use_amp = devices.default_amp(device) if train_cfg.amp is None else train_cfg.amp
    amp_dtype = devices.autocast_dtype(device) if use_amp else None
    raw_model.to(device)
    if train_cfg.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    params = (raw_model.trainable_parameters() if hasattr(raw_model, "trainable_parameters")
              else [p for p in raw_model.parameters() if p.requires_grad])
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    train_ds, val_ds, full_ds = datasets
    bs, workers = train_cfg.batch_size, train_cfg.num_workers
    sampler = ResumableSampler(train_ds, dist, seed=train_cfg.seed, shuffle=True)
    loader = make_loader(train_ds, bs, device, num_workers=workers, shuffle=False, sampler=sampler,
                         drop_last=len(train_ds) // dist.world_size > bs, seed=train_cfg.seed)
    val_share = val_ds if not dist.enabled else torch.utils.data.Subset(
        val_ds, list(range(dist.rank, len(val_ds), dist.world_size)))
    val_loader = make_loader(val_share, bs, device, num_workers=workers, shuffle=False, seed=train_cfg.seed)
    steps_per_epoch = math.ceil(len(loader) / max(1, train_cfg.accum_steps))
    total_steps = max(1, steps_per_epoch * train_cfg.epochs if max_steps is None else max_steps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=devices.needs_grad_scaler(device, amp_dtype))

    fwd = dist.wrap(raw_model, device, find_unused=not model_cfg.use_lightweight_head)
    if train_cfg.compile:
        fwd = torch.compile(fwd)
    session = Session(model=fwd, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      step_fn=step_fn, device=device, amp_dtype=amp_dtype, cfg=train_cfg, dist=dist, track=track,
                      progress=progress, max_steps=max_steps)
    return session, Loaders(train_ds, val_ds, full_ds, sampler, loader, val_loader)


def _resume(s: Session, last_path: Path) -> Progress:
    """Load ``last_path`` into the session; a missing one starts from scratch with a warning."""
    if not last_path.exists():
        log.warning("--resume: no checkpoint at %s, starting from scratch", last_path)
        return Progress()
    ckpt = restore_training_state(last_path, s.raw_model, s.optimizer, s.scheduler, s.scaler)
    if ckpt["configs"]["train"]["batch_size"] != s.cfg.batch_size:
        raise ValueError(f"{last_path} was trained with batch size {ckpt['configs']['train']['batch_size']}; "
                         "resume with the same --batch-size (the saved position counts batches)")
    s.step = ckpt["step"]
    log.info("resuming from %s: epoch %d, batch %d, step %d", last_path, ckpt["epoch"] + 1, ckpt["batch"], s.step)
    return Progress(ckpt["epoch"], ckpt["batch"], ckpt["best_miou"], ckpt["history"], ckpt["run_id"])


def _mark_head_trained(model: nn.Module, step: int) -> None:
    """A detector's head counts as trained (SAM2 is then prompted from it) once an optimizer step updated it."""
    if step > 0 and getattr(model, "use_lightweight_head", False) and hasattr(model, "head_trained"):
        model.head_trained = True


def _log_run_start(s: Session, state: Progress, configs: dict, loaders: Loaders, extra_params: dict) -> None:
    """Tags describing the machine and data; params once, at the start of a fresh run."""
    amp_dtype = str(s.amp_dtype).replace("torch.", "")
    tracking.set_tags({"device": devices.device_name(s.device), "device_type": s.device.type,
                       "torch_version": torch.__version__, "foodlab_commit": tracking.git_commit(),
                       "dataset_fingerprint": str(getattr(loaders.full_ds, "fingerprint", "n/a")),
                       "world_size": s.dist.world_size, "amp_dtype": amp_dtype})
    if state.fresh and s.step == 0:
        tracking.log_params({**configs, "run": {"train_images": len(loaders.train_ds),
                                                "val_images": len(loaders.val_ds), "amp_dtype": amp_dtype,
                                                "max_steps": s.max_steps}, **extra_params})
    else:
        tracking.set_tags({"resumed_from_step": s.step})


def _log_interrupted(s: Session, state: Progress, epoch: int, batch: int, last_path: Path) -> None:
    if s.track:
        tracking.set_tags({"interrupted_at_step": s.step})
    log.warning("stopped by signal at step %d (epoch %d, batch %d); checkpoint %s; continue with --resume",
                s.step, epoch + 1, batch, last_path)
    state.interrupted = True


def _end_epoch(s: Session, state: Progress, loaders: Loaders, st: dict, epoch: int, t_epoch: float,
               train_time: float, num_classes: int) -> dict:
    """Validate, record the epoch in the history, log its metrics and an overlay figure; returns the entry."""
    val, sample = evaluate(s, loaders.val, num_classes)
    entry = {"epoch": epoch + 1, "step": s.step, "train_loss": st["loss_sum"] / max(1, st["images"]),
             "images_per_s": st["images"] / max(st["busy_s"], 1e-9),
             "data_wait_fraction": st["wait_s"] / max(st["busy_s"], 1e-9),
             "epoch_s": time.perf_counter() - t_epoch, "train_time_s": train_time,
             **{f"val_{k}": v for k, v in val.items()}}
    state.history.append(entry)
    if s.track:
        per_epoch = {("epoch_" + k if k in ("train_loss", "images_per_s") else k): v
                     for k, v in entry.items() if k not in ("epoch", "step")}
        tracking.log_metrics(per_epoch, step=s.step)  # per-step keys stay per-step only
        if sample is not None:
            tracking.log_figure(overlay_figure(*sample), f"overlays/epoch_{epoch + 1:03d}.png")
    log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f, Dice %.4f, %.1f img/s, "
             "data wait %.0f%%, %.1fs", epoch + 1, s.cfg.epochs, entry["train_loss"], val["loss"], val["miou"],
             val["dice"], entry["images_per_s"], 100 * entry["data_wait_fraction"], entry["epoch_s"])
    return entry


def _log_final_artifacts(raw_model: nn.Module, skipped: dict, ckpt_dir: Path, metrics: dict) -> None:
    """Bad-sample report, the model file (the head, or the whole trained module) and logs/training.log."""
    tracking.log_dict(skipped, "bad_samples.json")
    model_file = ckpt_dir / "model.pt"
    model_file.parent.mkdir(parents=True, exist_ok=True)
    if getattr(raw_model, "use_lightweight_head", False):
        raw_model.save_head(model_file)  # head name + num_classes + weights: FoodDetector.from_head_file reads it
    else:
        torch.save(raw_model.state_dict(), model_file)
    tracking.log_artifact(model_file, "model")
    for handler in logging.getLogger().handlers:
        path = getattr(handler, "baseFilename", None)
        if path and Path(path).exists():
            handler.flush()
            tracking.log_artifact(path, "logs")
    if metrics:
        log.info("final: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
