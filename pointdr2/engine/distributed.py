"""torch.distributed helpers: torchrun environment, samplers, metric reduction, rank-0 duties.

Launch with ``torchrun --nproc_per_node N -m pointdr2 train CONFIG`` (or ``scripts/dist_train.sh``):
torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the
backend is NCCL on CUDA and gloo on CPU. Without those variables everything runs in one process
and every helper here degrades to the single-process behaviour.

Data order: :class:`EpochSampler` permutes with a generator seeded by ``(seed, epoch)`` only and
gives rank ``r`` the slice ``perm[r::world]`` truncated to a multiple of the per-rank batch size,
so the global batch ``k`` of a W-process run with batch ``b`` holds exactly the samples of batch
``k`` of a one-process run with batch ``W*b``. :class:`ShardSampler` (evaluation) splits the
dataset without padding, so summed confusion matrices count every sample exactly once.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistInfo", "init_distributed", "cleanup", "is_main", "world_size", "rank", "barrier",
           "all_reduce_sum", "broadcast_object", "EpochSampler", "ShardSampler"]

log = logging.getLogger(__name__)


class DistInfo:
    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1, backend: str | None = None) -> None:
        self.rank, self.local_rank, self.world_size, self.backend = rank, local_rank, world_size, backend

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistInfo(rank={self.rank}, local_rank={self.local_rank}, world_size={self.world_size}, backend={self.backend})"


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op in a single process).

    ``device_type`` "cuda" selects NCCL (and binds this process to ``cuda:LOCAL_RANK``), anything
    else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank_ = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun (scripts/dist_train.sh)")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.debug("joined process group: rank %d/%d (%s)", rank_, world, backend)
    return DistInfo(rank_, local, world, backend)


def cleanup(synchronize: bool = False) -> None:
    """Leave the process group; with ``synchronize`` (a run that finished on every rank) wait for the
    other ranks first. An error path never waits: its peers may never come."""
    if dist.is_available() and dist.is_initialized():
        # every rank reaches the end before any tears down its gloo pairs: a rank that destroys the
        # group while a peer still talks to it can abort ("terminate called without an active exception")
        gc.collect()  # objects that hold the group (a DDP Reducer in a reference cycle) go while it lives
        if synchronize:
            try:
                dist.barrier()
            except RuntimeError as exc:  # a peer already gone: nothing left to wait for
                log.debug("barrier before destroy_process_group failed: %s", exc)
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (returns a new tensor on the input's device).

    Integer tensors (confusion matrices, counts) reduce exactly. With NCCL the tensor travels
    through the current CUDA device.
    """
    if not _active():
        return tensor.clone()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = tensor.detach().to(device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class EpochSampler(Sampler[int]):
    """Training order that depends on ``(seed, epoch)`` only; rank ``r`` of ``world`` takes ``perm[r::world]``.

    ``batch_size`` is the per-rank batch: each rank's list is cut to ``num_batches * batch_size``
    with the same ``num_batches`` on every rank (drop_last semantics), so processes step in
    lockstep, and a multiple of ``batches_multiple_of`` (the accumulation steps). ``start_batch`` skips the first batches of the epoch (resuming an interrupted epoch).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, batches_multiple_of: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.seed, self.shuffle = int(num_samples), int(batch_size), int(seed), shuffle
        self.rank, self.world = int(rank), int(world_size)
        self.epoch = 0
        self.start_batch = 0
        self.num_batches = self.num_samples // (self.batch_size * self.world)
        # Whole optimizer steps only (gradient accumulation groups of micro-batches).
        self.num_batches -= self.num_batches % max(int(batches_multiple_of), 1)
        if self.num_batches == 0:
            raise ValueError(f"train split has {self.num_samples} samples, fewer than one global batch "
                             f"({self.batch_size} x {self.world} processes); lower train.batch_size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g)
        else:
            perm = torch.arange(self.num_samples)
        mine = perm[: self.num_batches * self.batch_size * self.world][self.rank :: self.world]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * self.batch_size


class ShardSampler(Sampler[int]):
    """Evaluation split without padding or duplicates: rank ``r`` takes indices ``r, r+W, r+2W, ...``."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(int(rank), int(num_samples), int(world_size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
