"""CLIP4Clip meanP: order-blind masked mean of L2-normalised frame embeddings (methods.md §2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...], mask [B, T] bool -> [B, ...] mean over the real frames (denominator >= 1)."""
    weight = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1)


class MeanP(nn.Module):
    """frames [B, T, E], mask [B, T] bool -> video embedding [B, E], L2-normalised.

    Each frame is normalised, the real frames are averaged, the mean is normalised again.
    Padded frames are not zero in feature space, so the mask is what keeps them out.
    """

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(F.normalize(frames, dim=-1), mask), dim=-1)
