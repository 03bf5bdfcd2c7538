"""Process groups and samplers: one process, or ``torchrun`` with NCCL on GPUs and gloo on CPUs.

``TrainSampler`` yields each process's micro-batches of a seeded per-epoch permutation and can
start mid-epoch, so a resumed run sees exactly the batches the interrupted one had left.
``ShardSampler`` gives each process a contiguous shard with no padding: every evaluation item is
counted exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mugstan.config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, local_rank, device)


def device_arg(text: str) -> str:
    """A ``--device`` value, checked (argparse ``type=``): the name parses and that device is on this
    machine; else an ``argparse.ArgumentTypeError`` (``mugstan`` prints it as one ``error:`` line)."""
    import argparse

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: give cpu, cuda, cuda:1, ...") from None
    if device.type == "cpu":
        return text
    if device.type == "mps":
        count = int(torch.backends.mps.is_available())
    else:  # cuda, xpu, ...: torch.cuda / torch.xpu say how many there are
        backend = getattr(torch, device.type, None)
        count = backend.device_count() if hasattr(backend, "is_available") and backend.is_available() else 0
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has no {device.type} device (or its driver is missing): use --device cpu"
        )
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {count} {device.type} device{'s' if count > 1 else ''} "
            f"({device.type}:0{f' to {device.type}:{count - 1}' if count > 1 else ''})"
        )
    return text


def device_generators() -> tuple[torch.Generator, ...]:
    """The default random generators of the accelerators present: CUDA's, one per device; none on
    a CPU-only machine. Checkpoints and gradient caching save and restore them with the CPU's."""
    if not torch.cuda.is_available():
        return ()
    torch.cuda.init()  # CUDA's default generators are created on first use
    return tuple(torch.cuda.default_generators)


@dataclass(frozen=True)
class DeviceSettings:
    """What training does differently on a GPU: the loader's workers hand over uint8 clips
    (normalised on the device, ``models.model_inputs``) into pinned memory, and DDP is told the
    process's device."""

    uint8_clips: bool
    pin_memory: bool
    ddp_device_ids: Optional[list[int]]


def device_settings(device: torch.device) -> DeviceSettings:
    gpu = device.type == "cuda"
    return DeviceSettings(uint8_clips=gpu, pin_memory=gpu, ddp_device_ids=[device.index or 0] if gpu else None)


def is_distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class TrainSampler(Sampler[list[int]]):
    """Micro-batches of indices for one process.

    Each epoch is a permutation seeded by (seed, epoch). Optimiser step s takes the global batch
    perm[s*G:(s+1)*G] (G = global batch) as ``accum`` contiguous micro-batches of G / accum clips
    (each one contrastive batch), and this process yields its 1/world slice of each. Micro-batch a
    is therefore the same set of clips whatever the number of processes, so runs with accumulation
    on 1 and on N processes follow the same loss curve. Incomplete global batches at the end of an
    epoch are dropped.
    """

    def __init__(self, n: int, global_batch: int, world: int, rank: int, accum: int = 1, seed: int = 0):
        if global_batch % (world * accum):
            raise ConfigError(
                f"train.batch_size={global_batch} must be divisible by processes x train.accum_steps = "
                f"{world} x {accum} = {world * accum}: set train.batch_size to a multiple of {world * accum}"
            )
        if n < global_batch:
            raise ConfigError(
                f"the training set has {n} items, fewer than one batch of train.batch_size={global_batch}"
            )
        self.n, self.global_batch, self.world, self.rank, self.accum, self.seed = (
            n,
            global_batch,
            world,
            rank,
            accum,
            seed,
        )
        self.epoch, self.skip_steps = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip_steps = epoch, skip_steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        micro = self.global_batch // self.accum  # one contrastive batch, all processes
        local = micro // self.world
        for step in range(self.skip_steps, self.steps_per_epoch):
            for a in range(self.accum):
                start = step * self.global_batch + a * micro + self.rank * local
                yield perm[start : start + local].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.skip_steps) * self.accum


class ShardSampler(Sampler[int]):
    """Contiguous shard ``rank`` of ``world`` over range(n), no padding, no duplicates."""

    def __init__(self, n: int, world: int = 1, rank: int = 0):
        per = -(-n // world)
        self.indices = list(range(min(n, rank * per), min(n, (rank + 1) * per)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
