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
that of one chunk's activations plus the embeddings. Works for dual encoders and Mug (whose
per-frame / per-token features are the cached "embeddings"), with autocast, fp16 loss scaling
and activation checkpointing (its recomputation restores the random state the re-encoding pass
ran under: the first pass, the re-encoding and the recomputation draw the same drop-path masks).
Under DDP the caller trains the unwrapped model, makes the processes start from the same weights
(``broadcast_parameters``, what DDP's constructor does) and averages the gradients once per step
(``average_gradients``): the re-encoding passes cannot go through DDP's forward, and one
all-reduce per step is what DDP would do anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.distributed as dist

from mugstan.models import Embeddings, VideoTextModel


class RandomState:
    """Snapshot of the CPU and CUDA generators, to replay a chunk's dropout exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    @contextlib.contextmanager
    def replay(self):
        cpu, cuda = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:  # continue the stream where the first pass left it
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)


def _encode(model: VideoTextModel, batch: dict, rows: slice, device: torch.device) -> tuple[Embeddings, Embeddings]:
    text = model.encode_text(batch["ids"][rows].to(device), batch["text_mask"][rows].to(device))
    video = model.encode_video(batch["frames"][rows].to(device, non_blocking=True), batch["frame_mask"][rows].to(device))
    return text, video


def _cat(parts: list[Embeddings]) -> Embeddings:
    x = torch.cat([p.x for p in parts]).detach()
    x = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).requires_grad_()
    mask = None if parts[0].mask is None else torch.cat([p.mask for p in parts])
    return Embeddings(x, mask)


def gradcache_backward(model: VideoTextModel, batch: dict, chunk_size: int, device: torch.device,
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                       scale: float = 1.0, scaler: Optional[torch.amp.GradScaler] = None) -> torch.Tensor:
    """Drop-in for ``loss = model(**batch); (loss * scale).backward()`` with the batch in chunks.

    model: the (unwrapped) VideoTextModel; batch: ``frames [B, T, 3, H, W]``, ``frame_mask
    [B, T]``, ``ids [B, L]``, ``text_mask [B, L]``; chunk_size: rows encoded with the graph at a
    time; autocast: a factory of the precision context; scale: gradient multiplier (1 / accum);
    scaler: fp16 GradScaler. Returns the detached full-batch loss. Gradients land in ``.grad``.
    """
    if not isinstance(model, VideoTextModel) or hasattr(model, "classifier"):
        raise ValueError("gradient caching applies to contrastive video-text models (model.task=retrieval)")
    if chunk_size < 1:
        raise ValueError(f"train.chunk_size must be at least 1, got {chunk_size}")
    n = batch["frames"].shape[0]
    chunks = [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]

    # 1. embeddings of every chunk, no graph; remember each chunk's random state
    states, texts, videos = [], [], []
    with torch.no_grad():
        for rows in chunks:
            states.append(RandomState())
            with autocast():
                text, video = _encode(model, batch, rows, device)
            texts.append(text)
            videos.append(video)

    # 2. full-batch loss (gathered across processes) and its gradient w.r.t. the embeddings
    text_all, video_all = _cat(texts), _cat(videos)
    with autocast():
        loss = model.loss(text_all, video_all)
    scaled = loss * scale
    (scaler.scale(scaled) if scaler else scaled).backward()  # also fills the logit scale's grad
    text_grad, video_grad = text_all.x.grad, video_all.x.grad

    # 3. re-encode each chunk with the graph under the same random state; push its cached gradient
    for rows, state in zip(chunks, states):
        with state.replay(), autocast():
            text, video = _encode(model, batch, rows, device)
        surrogate = (text.x.to(text_grad.dtype) * text_grad[rows]).sum() + (video.x.to(video_grad.dtype) * video_grad[rows]).sum()
        surrogate.backward()
    return loss.detach()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (what DDP's constructor does)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce-average every gradient across processes (what DDP does once per step).

    One flat all-reduce of the gradients and a presence flag per parameter: a parameter that no
    process gave a gradient keeps ``grad = None`` (the optimiser skips it, as in one process).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
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
    for p, g, seen in zip(params, grads, flat[-len(params):].tolist()):
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
        if seen == 0:
            p.grad = None
