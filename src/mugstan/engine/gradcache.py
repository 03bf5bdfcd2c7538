"""Gradient caching: the contrastive batch is a property of the loss, not of memory.

Contrastive learning wants many negatives (the published retrieval results use 128 videos of 12
frames per batch), and plain gradient accumulation shrinks them to one micro-batch. Gradient
caching (Gao et al., 2021) computes the exact full-batch gradient with the memory of one chunk:

1. embed the whole batch chunk by chunk without building the graph, remembering each chunk's
   random state (dropout, drop-path);
2. compute the loss over all embeddings (all-gathered across processes, as in normal training)
   and its gradient with respect to the embeddings (and the logit scale);
3. re-embed each chunk with the graph, under the same random state, and back-propagate its
   cached embedding gradient.

The cost is one extra forward pass of the encoders (about a third more compute); the memory is
that of one chunk's activations plus the embeddings. It treats every model alike: whatever the
model returns (dual-encoder vectors, Mug's per-frame / per-token features, the logit scale) is
cached and its gradient pushed back, with autocast, fp16 loss scaling
and activation checkpointing (its recomputation restores the random state the re-encoding pass
ran under: the first pass, the re-encoding and the recomputation draw the same drop-path masks).
Under DDP the caller trains the unwrapped model, makes the processes start from the same weights
(``broadcast_parameters``, what DDP's constructor does) and averages the gradients once per step
(``average_gradients``): the re-encoding passes cannot go through DDP's forward, and one
all-reduce per step is what DDP would do anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from mugstan.engine.distributed import device_generators, is_distributed
from mugstan.heads.base import Embeddings
from mugstan.models import model_inputs


class RandomState:
    """Snapshot of the CPU generator and the accelerators' (``device_generators``), to replay a
    chunk's dropout exactly. generators: which device generators (default: every CUDA device's)."""

    def __init__(self, generators: Optional[Sequence[torch.Generator]] = None):
        self.generators = tuple(device_generators() if generators is None else generators)
        self.cpu = torch.get_rng_state()
        self.devices = [g.get_state() for g in self.generators]

    @contextlib.contextmanager
    def replay(self):
        cpu, devices = torch.get_rng_state(), [g.get_state() for g in self.generators]
        torch.set_rng_state(self.cpu)
        for g, state in zip(self.generators, self.devices, strict=True):
            g.set_state(state)
        try:
            yield
        finally:  # continue the streams where the first pass left them
            torch.set_rng_state(cpu)
            for g, state in zip(self.generators, devices, strict=True):
                g.set_state(state)


def _as_leaf(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).requires_grad_()


def _cache(parts: list[dict]) -> dict:
    """Chunk outputs -> whole-batch outputs as leaves that collect the loss's gradient.

    Per-row outputs (``Embeddings``, tensors with a batch dimension) are concatenated; scalars
    (the logit scale) are the same for every chunk and taken once.
    """
    cached = {}
    for name, first in parts[0].items():
        if isinstance(first, Embeddings):
            both = Embeddings.cat([p[name] for p in parts])
            cached[name] = Embeddings(_as_leaf(both.x), both.mask)
        elif first.dim() == 0:
            cached[name] = _as_leaf(first)
        else:
            cached[name] = _as_leaf(torch.cat([p[name] for p in parts]))
    return cached


def _surrogate(outputs: dict, cached: dict, rows: slice, first_chunk: bool) -> torch.Tensor:
    """sum(output * cached gradient) over this chunk's rows: its backward pushes the cached gradient."""
    total = 0.0
    for name, out in outputs.items():
        leaf = cached[name].x if isinstance(out, Embeddings) else cached[name]
        x = out.x if isinstance(out, Embeddings) else out
        if leaf.grad is None:
            continue
        if x.dim() == 0:  # shared by all chunks: pushed once
            total = total + (x.to(leaf.grad.dtype) * leaf.grad).sum() if first_chunk else total
        else:
            total = total + (x.to(leaf.grad.dtype) * leaf.grad[rows]).sum()
    return total


def gradcache_backward(
    model: torch.nn.Module,
    loss_fn: Callable[[dict, dict], torch.Tensor],
    batch: dict,
    chunk_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale: float = 1.0,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> torch.Tensor:
    """Drop-in for ``loss = loss_fn(model(**inputs), batch); (loss * scale).backward()`` with the
    batch encoded in chunks.

    model: the unwrapped model (any mugstan model: its ``input_names`` say what it reads from
    the batch); loss_fn: ``mugstan.losses.build_loss``; batch: a collated batch of B rows;
    chunk_size: rows encoded with the graph at a time; autocast: a factory of the precision
    context; scale: gradient multiplier (1 / accum); scaler: fp16 GradScaler. Returns the detached
    full-batch loss. Gradients land in ``.grad``.
    """
    if chunk_size < 1:
        raise ValueError(f"train.chunk_size must be at least 1, got {chunk_size}")
    n = batch["frames"].shape[0]
    chunks = [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]

    # 1. outputs of every chunk, no graph; remember each chunk's random state
    states, parts = [], []
    with torch.no_grad():
        for rows in chunks:
            states.append(RandomState())
            with autocast():
                parts.append(model(**model_inputs(model, batch, device, rows)))

    # 2. full-batch loss (gathered across processes) and its gradient w.r.t. the outputs
    cached = _cache(parts)
    with autocast():
        loss = loss_fn(cached, batch)
    scaled = loss * scale
    (scaler.scale(scaled) if scaler else scaled).backward()

    # 3. re-encode each chunk with the graph under the same random state; push its cached gradient
    for i, (rows, state) in enumerate(zip(chunks, states, strict=True)):
        with state.replay(), autocast():
            outputs = model(**model_inputs(model, batch, device, rows))
        _surrogate(outputs, cached, rows, first_chunk=i == 0).backward()
    return loss.detach()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (what DDP's constructor does)."""
    if not is_distributed():
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce-average every gradient across processes (what DDP does once per step).

    One flat all-reduce of the gradients and a presence flag per parameter: a parameter that no
    process gave a gradient keeps ``grad = None`` (the optimiser skips it, as in one process).
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    params = [p for p in model.parameters() if p.requires_grad]  # the same list on every process
    present = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [present])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g, seen in zip(params, grads, flat[-len(params) :].tolist(), strict=True):
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
        if seen == 0:
            p.grad = None
