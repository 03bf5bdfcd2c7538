"""What a frame-level branch returns, and the branch that adds nothing.

A branch reads the backbone's per-frame vision output and gives

    FrameFeatures.embeds   [B, T, E]     per-frame embeddings in the joint space (not normalised),
                                         what every head reads;
    FrameFeatures.patches  [B, T, P, D]  per-frame patch tokens (vision width D, P = grid^2,
                                         row-major), for consumers that need space: detection's
                                         RoI pooling, a language model's video tokens.

``NoBranch`` passes the backbone's own per-frame embeddings and final-layer patch tokens through;
``mugstan.branches.stan.STAN`` adds the spatial-temporal auxiliary branch. Both take the same
arguments: the backbone's ``VisionOutput`` for the B*T frames (with the blocks listed in ``taps``),
the backbone, and the frame mask [B, T].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from mugstan.backbones.clip import CLIPBackbone, VisionOutput


class FrameFeatures(NamedTuple):
    embeds: torch.Tensor  # [B, T, E]
    patches: torch.Tensor  # [B, T, P, D]


class NoBranch(nn.Module):
    """The backbone's per-frame output as it is: CLIP applied to each frame."""

    taps: list[int] = []
    grad_checkpointing = False

    def forward(self, vision: VisionOutput, backbone: CLIPBackbone, mask: torch.Tensor) -> FrameFeatures:
        """vision: backbone.encode_frames(frames [B*T, 3, H, W]); mask [B, T] bool -> FrameFeatures."""
        b, t = mask.shape
        last = vision.last
        return FrameFeatures(vision.embeds.view(b, t, -1), last[:, 1:].view(b, t, last.shape[1] - 1, last.shape[2]))
