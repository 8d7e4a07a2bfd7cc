"""Several processes, one training run: what changes under ``torchrun``.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``Dist.from_env`` starts the
process group (nccl on CUDA, gloo otherwise). A single process gets a ``Dist``
with world_size 1 and every helper below becomes a no-op, so the loop has one path.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_kind: str) -> Dist:
        """Join the process group when launched by torchrun; a plain process stays single."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or "RANK" not in os.environ:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)  # so "cuda" below means this process's GPU
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        log.info("DDP: rank %d/%d (local %d), backend %s", rank, world, local_rank, backend)
        return cls(rank, world, local_rank, backend)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, *flags: bool, device: torch.device) -> list[bool]:
        """Whether any rank raised each flag (NaN loss, stop signal), so all ranks stop together."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def all_reduce_sum(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Sum a (CPU) tensor over ranks, e.g. a confusion matrix; returns it on the CPU."""
        if not self.enabled:
            return tensor
        t = tensor.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the run folder, which only rank 0 can name)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: torch.nn.Module, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
        """DistributedDataParallel; ``find_unused`` for SAM2, whose video-only parts get no gradient here."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def no_sync(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on accumulation micro-steps that do not end in an optimizer step."""
        if self.enabled and not sync and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded order per epoch: seed + epoch) that can skip what was consumed.

    Works without a process group (num_replicas=1), so one sampler serves both cases;
    ``set_epoch(epoch, skip)`` drops the first ``skip`` samples of this rank's share,
    which is how ``--resume`` continues mid-epoch on exactly the next batch.
    """

    def __init__(self, dataset, d: Dist, seed: int, shuffle: bool = True, drop_last: bool = False):
        super().__init__(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)
