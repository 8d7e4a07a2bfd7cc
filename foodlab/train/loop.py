"""The training run: ``train(data_cfg, model_cfg, train_cfg)`` -> a tracked, checkpointed run.

Order matters and is the point of this file: refuse settings that cannot work and
check the MLflow store first (both fail before any data or model is built); then the
run's own locked folder (``run_folder``), data, model, optimizer, and a resume if asked;
then epochs of ``train_one_epoch`` + ``evaluate``, each ending in an atomic checkpoint;
then the run's files go to MLflow (``run_tracking``). What one epoch does is in ``epoch``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from foodlab import devices, tracking
from foodlab.config import DataConfig, ModelConfig, TrainConfig, as_dict
from foodlab.errors import FoodlabError, UsageError
from foodlab.logging_setup import log_to_file
from foodlab.train import run_tracking, schedule
from foodlab.train.build import build_datasets, build_model, sam2_decoder_setup
from foodlab.train.checkpoint import (
    StopOnSignal,
    load_checkpoint,
    restore_training_state,
    rng_state,
    set_rng_state,
    training_state,
)
from foodlab.train.ddp import Dist, ResumableSampler
from foodlab.train.epoch import Session, StepFn, evaluate, seed_everything, supervised_step, train_one_epoch
from foodlab.train.metrics import overlay_figure
from foodlab.train.run_folder import RunFolder, find_run
from foodlab.train.settings_check import check_settings, resume_changes, resume_conflicts

log = logging.getLogger(__name__)


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
    run_folder: Path | None = None             # <out_dir>/<experiment>/<run>/ (see run_folder)


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
    Settings that cannot work raise ``UsageError`` before any work.
    """
    check_settings(data_cfg, model_cfg, train_cfg, max_steps)
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
    configs = {"data": as_dict(data_cfg), "model": as_dict(model_cfg), "train": as_dict(train_cfg)}
    folder = None
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(StopOnSignal())  # from here on a signal ends the run KILLED, not half-logged
        try:
            if train_cfg.resume:  # folder and checkpoint first: a refused resume never touches the MLflow run
                folder, ckpt = _open_resumed_run(stack, train_cfg, configs, dist)
                datasets, model, step_fn = _datasets_and_model(data_cfg, model_cfg, train_cfg, device, dist,
                                                               datasets, model, step_fn)
                _check_same_data(ckpt, datasets[2], folder)
                run_id = _start_tracking(stack, train_cfg, ckpt["run_id"]) if track else ckpt.get("run_id")
            else:  # the MLflow run first: its id names the folder
                ckpt, run_id = None, _start_tracking(stack, train_cfg, None) if track else None
                folder = _open_new_run(stack, train_cfg, run_id, dist)
                datasets, model, step_fn = _datasets_and_model(data_cfg, model_cfg, train_cfg, device, dist,
                                                               datasets, model, step_fn)
            if stop.requested:
                raise KeyboardInterrupt  # stopped while data and model were being built: nothing to save yet
            seed_everything(train_cfg.seed)
            s, loaders = _session(model, step_fn, datasets, model_cfg, train_cfg, device, dist, track=track,
                                  progress=progress, max_steps=max_steps)
            state = _resume(s, ckpt, configs) if ckpt is not None else Progress()
            state.run_id = run_id
            if track:
                run_tracking.log_run_start(s, loaders.full_ds, configs, {
                    "train_images": len(loaders.train_ds), "val_images": len(loaders.val_ds),
                    "max_steps": max_steps, "amp_dtype": str(s.amp_dtype).replace("torch.", "")}, extra_params,
                    changes=resume_changes(ckpt["configs"], configs) if ckpt is not None else None)
            _epochs(s, state, loaders, folder, configs, stop, on_epoch_end)
        except BaseException as exc:  # Ctrl-C ends the MLflow run KILLED, anything else FAILED
            if track and folder is not None and tracking.active_run_id() is not None:
                run_tracking.finish(folder, interrupted=True, log_model=None, skipped=None,
                                    status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        skipped = loaders.full_ds.bad_report() if hasattr(loaders.full_ds, "bad_report") else {}
        if state.history:
            log.info("final: %s", ", ".join(f"{k} {v:.4g}" for k, v in state.history[-1].items()
                                            if isinstance(v, float)))
        if track:
            run_tracking.finish(folder, state.interrupted, log_model=s.raw_model, skipped=skipped,
                                status="KILLED" if state.interrupted else "FINISHED",
                                image_size=data_cfg.image_size, register=train_cfg.register)
        elif dist.is_main and not state.interrupted:
            run_tracking.save_final_model(s.raw_model, folder.model)
    dist.barrier()
    return TrainResult(run_id=state.run_id, best_miou=state.best_miou,
                       metrics=state.history[-1] if state.history else {},
                       best_checkpoint=folder.best if folder.best.exists() else None,
                       last_checkpoint=folder.last if folder.last.exists() else None, steps=s.step,
                       epochs=len(state.history), skipped=skipped, history=state.history,
                       interrupted=state.interrupted, run_folder=folder.path)


class _SharedFolder:
    """What ranks other than 0 see of the run folder: its paths, no lock (rank 0 holds it)."""

    def __init__(self, path: Path):
        self.path = path

    last, previous, best = RunFolder.last, RunFolder.previous, RunFolder.best
    model, log_file = RunFolder.model, RunFolder.log_file


def _start_tracking(stack: contextlib.ExitStack, cfg: TrainConfig, run_id: str | None) -> str:
    run = stack.enter_context(tracking.start_run(cfg.experiment, cfg.run_name, run_id=run_id,
                                                 log_system_metrics=True))
    return run.info.run_id


def _open_new_run(stack: contextlib.ExitStack, cfg: TrainConfig, run_id: str | None, dist: Dist):
    """Rank 0 creates and locks the run's folder and logs into it; the other ranks learn its path."""
    if not dist.is_main:
        return _SharedFolder(dist.broadcast(None))
    folder = stack.enter_context(RunFolder.create(cfg.out_dir, cfg.experiment, cfg.run_name, run_id))
    stack.enter_context(log_to_file(folder.log_file))
    log.info("run folder %s", folder.path)
    dist.broadcast(folder.path)
    return folder


def _open_resumed_run(stack: contextlib.ExitStack, cfg: TrainConfig, configs: dict, dist: Dist):
    """The folder ``--resume`` names, locked, and its newest good checkpoint, checked against the settings given.

    Rank 0 decides and tells the others which checkpoint (by step), or that it refused, so no rank waits forever.
    """
    if dist.is_main:
        try:
            folder = stack.enter_context(RunFolder(find_run(cfg.out_dir, cfg.experiment, cfg.resume)))
            stack.enter_context(log_to_file(folder.log_file))
            ckpt = folder.load_last()
            conflicts = resume_conflicts(ckpt.get("configs", {}), configs)
            if conflicts:
                raise UsageError(f"cannot resume {folder.path}: settings differ from the run's: "
                                 f"{'; '.join(conflicts)}; resume with the run's settings or start a new run")
        except FoodlabError as exc:
            dist.broadcast(exc)
            raise
        dist.broadcast((folder.path, ckpt["step"]))
        return folder, ckpt
    decided = dist.broadcast(None)
    if isinstance(decided, FoodlabError):
        raise decided
    path, step = decided
    shared = _SharedFolder(path)
    for candidate in (shared.last, shared.previous):  # the file rank 0 chose: the one at its step
        ckpt = load_checkpoint(candidate)
        if ckpt["step"] == step:
            return shared, ckpt
    raise FoodlabError(f"rank {dist.rank}: no checkpoint at step {step} in {path}")


def _check_same_data(ckpt: dict, full_ds, folder) -> None:
    saved, now = ckpt.get("dataset_fingerprint"), str(getattr(full_ds, "fingerprint", "n/a"))
    if saved is not None and saved != now:
        raise UsageError(f"cannot resume {folder.path}: the dataset changed (fingerprint {now}, run: {saved}); "
                         "resume on the run's data or start a new run")


def _datasets_and_model(data_cfg, model_cfg, train_cfg, device, dist, datasets, model, step_fn):
    """(train, val, full) datasets, the model to train and its step function; given ones win over the configs."""
    log.info("Using device: %s (%s)", devices.device_name(device), device)
    seed_everything(train_cfg.seed)
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
    steps_per_epoch = math.ceil(len(loader) / train_cfg.accum_steps)
    total_steps = steps_per_epoch * train_cfg.epochs if max_steps is None else max_steps
    scheduler = schedule.cosine_schedule(optimizer, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=devices.needs_grad_scaler(device, amp_dtype))

    fwd = dist.wrap(raw_model, device, find_unused=not model_cfg.use_lightweight_head)
    if train_cfg.compile:
        fwd = torch.compile(fwd)
    session = Session(model=fwd, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      step_fn=step_fn, device=device, amp_dtype=amp_dtype, cfg=train_cfg, dist=dist, track=track,
                      progress=progress, max_steps=max_steps, num_classes=model_cfg.num_classes)
    return session, Loaders(train_ds, val_ds, full_ds, sampler, loader, val_loader)


def _resume(s: Session, ckpt: dict, configs: dict) -> Progress:
    """Load the checkpoint into the session; a larger ``--epochs`` extends the lr plan from where the run stands."""
    planned = schedule.planned_steps(s.scheduler)
    restore_training_state(ckpt, s.raw_model, s.optimizer, s.scheduler, s.scaler)
    s.step = ckpt["step"]
    _mark_head_trained(s.raw_model, s.step)
    old_epochs = ckpt["configs"]["train"]["epochs"]
    if configs["train"]["epochs"] > old_epochs and planned > schedule.planned_steps(s.scheduler):
        log.info("extending the run from %d to %d epochs: lr continues from %.3g down to %.3g over %d steps",
                 old_epochs, configs["train"]["epochs"], s.optimizer.param_groups[0]["lr"],
                 s.cfg.lr * schedule.MIN_LR_FRACTION, planned)
        schedule.extend(s.scheduler, planned)
    log.info("resuming at epoch %d, batch %d, step %d", ckpt["epoch"] + 1, ckpt["batch"], s.step)
    return Progress(ckpt["epoch"], ckpt["batch"], ckpt["best_miou"], ckpt["history"], ckpt["run_id"])


def _mark_head_trained(model: nn.Module, step: int) -> None:
    """A detector's head counts as trained (SAM2 is then prompted from it) once an optimizer step updated it."""
    if step > 0 and getattr(model, "use_lightweight_head", False) and hasattr(model, "head_trained"):
        model.head_trained = True


def _epochs(s: Session, state: Progress, loaders: Loaders, folder, configs: dict, stop: StopOnSignal,
            on_epoch_end: Callable[[dict], bool] | None) -> None:
    """Epochs until the plan, ``max_steps``, ``on_epoch_end`` or a stop signal ends them; each ends in a checkpoint."""
    fingerprint = str(getattr(loaders.full_ds, "fingerprint", "n/a"))

    def checkpoint(epoch: int, batch: int, rng: dict) -> dict:
        return training_state(s, epoch, batch, rng, {"best_miou": state.best_miou, "history": state.history,
                                                     "run_id": state.run_id, "configs": configs,
                                                     "dataset_fingerprint": fingerprint})

    for epoch in range(state.epoch, s.cfg.epochs):
        skip = state.batch if epoch == state.epoch else 0
        loaders.sampler.set_epoch(epoch, skip=skip * s.cfg.batch_size)
        loaders.train.generator = torch.Generator().manual_seed(s.cfg.seed + epoch)  # worker seeds
        t_epoch, train_time = time.perf_counter(), state.train_time_s
        st = train_one_epoch(s, loaders.train, epoch, skip, stop)
        train_time += time.perf_counter() - t_epoch
        _mark_head_trained(s.raw_model, s.step)
        rng = rng_state()
        if st["reason"] == "signal":
            if s.dist.is_main:
                folder.save_last(checkpoint(epoch, st["batch"], rng))
            if s.track:
                tracking.set_tags({"interrupted_at_step": s.step})
            log.warning("stopped by signal at step %d (epoch %d, batch %d); checkpoint %s; continue with "
                        "--resume %s", s.step, epoch + 1, st["batch"], folder.last, folder.path)
            state.interrupted = True
            return
        entry = _end_epoch(s, state, loaders, st, epoch, t_epoch, train_time)
        improved = entry["val_miou"] > state.best_miou
        state.best_miou = max(state.best_miou, entry["val_miou"])
        if s.dist.is_main:
            ckpt = checkpoint(*((epoch + 1, 0) if st["complete"] else (epoch, st["batch"])), rng)
            folder.save_last(ckpt)
            if improved:
                folder.save_best(ckpt)
        set_rng_state(rng)  # validation and logging must not shift the training RNG stream
        if st["reason"] == "max_steps" or (on_epoch_end is not None and on_epoch_end(entry)):
            return


def _check_bad_data(loaders: Loaders) -> None:
    """Raise DatasetError when most images loaded so far (in any process) were bad: judged at every
    epoch end, since with ``drop_last`` some samples are never loaded at all."""
    for ds in {id(d): d for d in (loaders.full_ds, loaders.train_ds, loaders.val_ds)}.values():
        base = getattr(ds, "dataset", ds)   # under a holdout Subset
        check = getattr(base, "check_bad_fraction", None)
        if check is not None:
            check()


def _end_epoch(s: Session, state: Progress, loaders: Loaders, st: dict, epoch: int, t_epoch: float,
               train_time: float) -> dict:
    """Validate, record the epoch in the history, log its metrics and an overlay figure; returns the entry."""
    _check_bad_data(loaders)   # mostly-bad data fails in its first epoch, drop_last and workers included
    val, sample = evaluate(s, loaders.val, s.num_classes)
    _check_bad_data(loaders)
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
