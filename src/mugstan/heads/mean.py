"""Order-blind heads: the masked mean over frames (methods.md §2 and §4).

- ``Mean`` (STAN): mean of the raw per-frame embeddings over the real frames, L2-normalised.
  STAN's fused frame embeddings are averaged as they are (the released STAN scores).
- ``MeanP`` (CLIP4Clip meanP): each frame L2-normalised first, then the masked mean, normalised.

Padded frames are not zero in feature space, so the mask is what keeps them out. The text side of
both is CLIP's L2-normalised EOT embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mugstan.heads.base import Embeddings, Head, masked_mean


def mean_pool(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """frames [B, T, E], mask [B, T] bool -> [B, E] unit vectors of the normalised frames' masked mean (meanP)."""
    return F.normalize(masked_mean(F.normalize(frames, dim=-1), mask), dim=-1)


class Mean(Head):
    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E], mask [B, T] bool -> Embeddings(x [B, E] unit)."""
        return Embeddings(F.normalize(masked_mean(frames, mask), dim=-1))


class MeanP(Head):
    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E], mask [B, T] bool -> Embeddings(x [B, E] unit)."""
        return Embeddings(mean_pool(frames, mask))
