"""CLIP4Clip seqTransf: a 4-block temporal transformer over frame embeddings (methods.md §2).

    X = F + frame_position_embedding[0:T]  ->  blocks with a key mask  ->  + F  ->  meanP

The frame position embedding (Embedding(77, E)) starts as CLIP's text positional embedding and
block i as CLIP text block i; both need CLIP's text width to equal the joint width E (true of
every OpenAI ViT). Otherwise they start fresh, which ``SeqTransf.init_from_clip`` reports. The text
side is CLIP's L2-normalised EOT embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mugstan.config import ConfigError
from mugstan.heads.base import Embeddings, Head
from mugstan.heads.blocks import TemporalTransformer
from mugstan.heads.mean import mean_pool


class SeqTransf(Head):
    """width: joint embedding width E; heads: attention heads (CLIP's text head count); layers: blocks."""

    def __init__(self, width: int, heads: int, layers: int = 4, max_frames: int = 77):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(max_frames, width)
        self.transformer = TemporalTransformer(width, heads, layers)

    def init_from_clip(self, backbone) -> bool:
        """Copy CLIP's text positions and first text blocks; False when the widths differ."""
        positions = backbone.text_positional_embedding  # [context, Dt]
        if backbone.text_width != self.frame_position_embeddings.embedding_dim:
            return False
        with torch.no_grad():
            n = min(self.frame_position_embeddings.num_embeddings, positions.shape[0])
            self.frame_position_embeddings.weight[:n].copy_(positions[:n])
        self.transformer.load_clip_blocks(backbone.text_blocks)
        return True

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E] (per-frame embeddings), mask [B, T] bool -> Embeddings(x [B, E] unit)."""
        t = frames.shape[1]
        if t > self.frame_position_embeddings.num_embeddings:
            raise ConfigError(
                f"seqTransf has {self.frame_position_embeddings.num_embeddings} frame positions (CLIP4Clip's), got "
                f"{t} frames: set data.num_frames / data.test_num_frames to at most "
                f"{self.frame_position_embeddings.num_embeddings}"
            )
        x = frames + self.frame_position_embeddings.weight[:t]
        x = self.transformer(x, mask) + frames
        return Embeddings(mean_pool(x, mask))
