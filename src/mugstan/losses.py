"""Losses, outside the models (as open_clip's ``ClipLoss``): ``build_loss(cfg, model)`` gives a
callable ``loss(outputs, batch) -> scalar`` for the outputs of ``model(**inputs)``.

- ``ContrastiveLoss``: symmetric InfoNCE of the head's scores over the global batch (methods.md
  §2), one term per ``head.loss_terms`` (CLIP2Video has two), features all-gathered across
  processes so negatives come from every process.
- ``ClassificationLoss``: cross-entropy of a classifier's logits against the labels.
- ``DetectionLoss``: binary cross-entropy of an action detector's per-box logits (multi-label).
- ``LanguageModelLoss``: next-token cross-entropy over the answer tokens (video chat).

``gather`` all-gathers a tensor across processes so that the gradient reaches the local slice
(``_GatherWithGrad``: all-gather forward, all-reduce of a contiguous gradient backward;
``torch.distributed.nn.functional.all_gather`` on gloo silently returns wrong gradients when the
incoming gradient is not contiguous, as Mug's einsum produces). Every process then computes the same
full-batch loss; the backward of the gather sums the W identical contributions, so each process's local embeddings
receive W x dL/dx. DDP averages parameter gradients over the W processes, which divides that
factor out again: with DDP the update equals that of one process over the concatenated batch.
(Without DDP, divide by W yourself.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mugstan.config import ConfigError, ModelConfig, Task
from mugstan.engine.distributed import is_distributed, unwrap
from mugstan.heads.base import Embeddings, Head


class _GatherWithGrad(torch.autograd.Function):
    """[N, ...] per process -> [W * N, ...]; backward sums every process's gradient of our rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] on each of W processes (same N) -> [W * N, ...] in rank order, differentiable."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Like ``gather`` for tensors that need no gradient (masks, labels)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def symmetric_infonce(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits [N, N] (row i = text i, column i = its video) -> CE(rows) and CE(columns) combined.

    reduction="mean": 0.5 * (CE_t2v + CE_v2t) (CLIP4Clip, CLIP2Video);
    reduction="sum": CE_t2v + CE_v2t (STAN / Mug-STAN).
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive logits must be square [N, N], got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision up to fp32; fp64 stays
    loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    if reduction == "mean":
        return 0.5 * loss
    if reduction == "sum":
        return loss
    raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {reduction!r}")


class ContrastiveLoss:
    """outputs {"text": Embeddings, "video": Embeddings, "logit_scale": scalar} (row i of text
    matches row i of video) -> sum over the head's loss terms of weight * InfoNCE(scale * scores),
    over the features of every process."""

    def __init__(self, head: Head, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {reduction!r}")
        self.head, self.reduction = head, str(reduction)

    def __call__(self, outputs: dict, batch: dict = None) -> torch.Tensor:
        text, video = (_gather_embeddings(outputs[k]) for k in ("text", "video"))
        scale = outputs["logit_scale"]
        terms = self.head.loss_terms(text, video)
        return sum(weight * symmetric_infonce(scale * scores, self.reduction) for weight, scores in terms)


class ClassificationLoss:
    """outputs {"logits": [B, C]}, batch {"label": [B] int64} -> mean cross-entropy."""

    def __call__(self, outputs: dict, batch: dict) -> torch.Tensor:
        logits = outputs["logits"]
        return F.cross_entropy(logits.float(), batch["label"].to(logits.device))


class DetectionLoss:
    """outputs {"logits": [N, C]} (one row per box), batch {"box_labels": [N, C] multi-hot} -> binary
    cross-entropy with logits, the mean over boxes and classes (mmaction2's BBoxHeadAVA). A batch
    without boxes gives 0 (connected to the graph)."""

    def __call__(self, outputs: dict, batch: dict) -> torch.Tensor:
        logits = outputs["logits"].float()
        target = batch["box_labels"].to(logits.device, torch.float32)
        if target.shape != logits.shape:
            raise ValueError(f"box_labels {tuple(target.shape)} do not match the logits {tuple(logits.shape)}")
        if logits.numel() == 0:
            return logits.sum()
        return F.binary_cross_entropy_with_logits(logits, target)


class LanguageModelLoss:
    """outputs {"logits": [B, S, V], "labels": [B, S]} (-100 = not an answer token) -> mean cross-entropy of
    predicting token s + 1 from positions <= s, over the answer tokens of the batch."""

    def __call__(self, outputs: dict, batch: dict = None) -> torch.Tensor:
        logits, labels = outputs["logits"][:, :-1], outputs["labels"][:, 1:].to(outputs["logits"].device)
        if not (labels != -100).any():
            raise ConfigError(
                "no answer tokens in this batch (every label is -100: the prompts fill model.chat.max_length): "
                "raise model.chat.max_length"
            )
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def _gather_embeddings(e: Embeddings) -> Embeddings:
    return Embeddings(gather(e.x), None if e.mask is None else gather_nograd(e.mask))


def build_loss(cfg: ModelConfig, model: torch.nn.Module) -> Callable[[dict, dict], torch.Tensor]:
    """The loss of ``model`` (built from ``cfg``, DDP-wrapped or not)."""
    if cfg.task == Task.recognition:
        return ClassificationLoss()
    if cfg.task == Task.detection:
        return DetectionLoss()
    if cfg.task == Task.chat:
        return LanguageModelLoss()
    return ContrastiveLoss(unwrap(model).head, cfg.loss_reduction)
