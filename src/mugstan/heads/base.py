"""The contract every retrieval head keeps, and the features that travel between the parts.

A head turns per-frame embeddings into the video side of the joint space, turns the text tower's
output into the text side, and scores one against the other:

    encode_video(frames [B, T, E], mask [B, T])   -> Embeddings
    encode_text(TextOutput)                       -> Embeddings
    scores(text, video)                           -> [A, B] unscaled, dense (one chunk)
    similarity(text, video, chunk)                -> [A, B] unscaled, in chunks (bounded memory)
    loss_terms(text, video)                       -> [(weight, [A, A] unscaled scores), ...]

``Embeddings`` are unit vectors ``x [N, E']`` (``mask`` None) for dual encoders, whose dot products
are the scores, so video embeddings can be computed once and indexed; or unit per-frame /
per-token features ``x [N, S, E]`` with ``mask [N, S]`` (Mug), scored by the head. The logit scale
and the loss (with the all-gather) live outside the heads: ``mugstan.models`` and
``mugstan.losses``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mugstan.backbones.clip import TextOutput

MAX_LOG_SCALE = math.log(100.0)


class Embeddings(NamedTuple):
    """x: [N, E'] unit vectors (dual encoders) or [N, S, E] unit features (Mug); mask: [N, S] bool or None."""

    x: torch.Tensor
    mask: Optional[torch.Tensor] = None

    def to(self, device) -> "Embeddings":
        return Embeddings(self.x.to(device), None if self.mask is None else self.mask.to(device))

    def rows(self, rows) -> "Embeddings":
        """The rows ``rows`` (a slice or an index tensor) of x and mask."""
        return Embeddings(self.x[rows], None if self.mask is None else self.mask[rows])

    @staticmethod
    def cat(parts: list["Embeddings"]) -> "Embeddings":
        return Embeddings(
            torch.cat([p.x for p in parts]), None if parts[0].mask is None else torch.cat([p.mask for p in parts])
        )


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...], mask [B, T] bool -> [B, ...] mean over the real frames (denominator >= 1)."""
    weight = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1)


class Head(nn.Module):
    """Base of the retrieval heads: a dual encoder scored by dot products of unit vectors.

    Subclasses define ``encode_video``; the text side defaults to CLIP's normalised EOT
    embedding. Heads whose embeddings are not plain unit vectors override ``scores`` (Mug) or
    ``loss_terms`` (CLIP2Video's two-part loss).
    """

    def init_from_clip(self, backbone) -> bool:
        """Initialise new modules from the backbone (seqTransf, TDB+TAB copy CLIP's text tower);
        False when they had to start fresh. Heads without parameters have nothing to do."""
        return True

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E] per-frame embeddings (not normalised), mask [B, T] bool -> Embeddings."""
        raise NotImplementedError

    def encode_text(self, text: TextOutput) -> Embeddings:
        """The text tower's output -> Embeddings (here: the L2-normalised EOT embedding [N, E])."""
        return Embeddings(F.normalize(text.pooled, dim=-1))

    def scores(self, text: Embeddings, video: Embeddings) -> torch.Tensor:
        """Dense unscaled scores [A, B] of A texts against B videos."""
        return text.x @ video.x.t()

    def similarity(self, text: Embeddings, video: Embeddings, chunk: int = 256) -> torch.Tensor:
        """``scores`` for all texts x all videos in blocks of ``chunk`` x ``chunk``: memory bounded
        by one block's intermediates whatever A and B are."""
        if text.x.shape[-1] != video.x.shape[-1]:
            raise ValueError(f"text features are {text.x.shape[-1]}-d but video features {video.x.shape[-1]}-d")
        a, b = text.x.shape[0], video.x.shape[0]
        if a <= chunk and b <= chunk:
            return self.scores(text, video)
        return torch.cat(
            [
                torch.cat(
                    [
                        self.scores(text.rows(slice(i, i + chunk)), video.rows(slice(j, j + chunk)))
                        for j in range(0, b, chunk)
                    ],
                    dim=1,
                )
                for i in range(0, a, chunk)
            ],
            dim=0,
        )

    def loss_terms(self, text: Embeddings, video: Embeddings) -> list[tuple[float, torch.Tensor]]:
        """The contrastive loss is sum(weight * InfoNCE(scale * scores)) over these terms."""
        return [(1.0, self.scores(text, video))]

    def text_vector(self, text: TextOutput) -> torch.Tensor:
        """One unit vector per text [N, E'] in the space of ``video_vector`` (classifier initialisation)."""
        return self.encode_text(text).x

    def video_vector(self, video: Embeddings) -> torch.Tensor:
        """One unit vector per video [B, E'] from ``encode_video``'s output (recognition)."""
        return video.x

    def vector_dim(self, embed_dim: int) -> int:
        """Width E' of ``video_vector`` for a backbone of joint width ``embed_dim``."""
        return embed_dim


class LogitScale(nn.Module):
    """Learned: stored as log(scale) (initialised from CLIP's ``logit_scale``), clamped to
    <= ln(100) by ``clamp_()`` after every optimiser step; scoring uses exp(stored value) as it is.
    Fixed: scale = 1 / temperature, not trained (STAN: tau = 0.01 MSR-VTT B/32, 0.02 B/16, 0.05 DiDeMo).
    """

    def __init__(self, init_log_scale: torch.Tensor, temperature: Optional[float] = None):
        super().__init__()
        self.fixed = temperature is not None
        if self.fixed:
            if temperature <= 0:
                raise ValueError(f"model.temperature must be positive, got {temperature}")
            self.register_buffer("log_scale", torch.tensor(math.log(1.0 / temperature)))
        else:
            self.log_scale = nn.Parameter(init_log_scale.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        if not self.fixed:
            self.log_scale.clamp_(max=MAX_LOG_SCALE)
