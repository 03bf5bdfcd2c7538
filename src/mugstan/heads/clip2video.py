"""CLIP2Video: Temporal Difference Block (TDB) and Temporal Alignment Block (TAB), methods.md §3.

Video side, from per-frame CLIP embeddings F [B, T, E] and the frame mask m [B, T]:

- TDB: differences d_i = F_{i+1} - F_i are encoded (one block, LayerNorm, 2*sigmoid - 1),
  interleaved with the frames [F_0, d_0, F_1, ..., d_{T-2}, F_{T-1}] with position (frame i and
  difference i share pos_i) and type embeddings (frame 1, difference 0), run through the 4-block
  temporal transformer; the frame positions plus F, meanP-pooled, give the global embedding v_g.
- TAB: the T frames plus ceil(T/2) motion tokens (TDB steps 1-3 on frames 0, 2, 4, ..., then a
  1-block transformer and the residual) are aggregated on K shared centres into v_tab.

Text side: the EOT embedding t_g, and the TAB aggregate of all token features but SOT, t_tab.
Scores S = w S_g + (1 - w) S_tab. Each side is a separate encoder, so both are returned as one
vector [sqrt(w) x_g ; sqrt(1-w) x_tab] whose dot products are S: embeddings can be indexed.

As in the reference, the TAB aggregates the raw token features on both sides (normalising them
first changes a released checkpoint's TAB scores by tens of logits), and the TDB's LayerNorm
before the sigmoid is a plain one (eps 1e-5), unlike the temporal blocks' 1e-12.

Fixes over the reference, each with a compatibility switch (``compat=True``) for matching
released numbers: the per-head mask is expanded batch-major (the reference's head-major
``repeat`` mixes masks of different videos), and a difference token is real only when both of
its frames are (the reference gives difference i the mask of frame i).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mugstan.backbones.clip import TextOutput
from mugstan.config import ConfigError
from mugstan.heads.base import Embeddings, Head
from mugstan.heads.blocks import TemporalTransformer
from mugstan.heads.mean import mean_pool


class CLIP2VideoHead(Head):
    """TDB + TAB over frame embeddings and the TAB text aggregation.

    width: joint embedding width E; heads: attention heads of the temporal blocks (CLIP's text
    head count); centers: K (5, 7 for VATEX); weight: w of the global score.
    """

    def __init__(self, width: int, heads: int, centers: int = 5, weight: float = 0.5,
                 layers: int = 4, compat: bool = False, max_frames: int = 77):
        super().__init__()
        if not 0.0 < weight < 1.0:
            raise ValueError(f"tab_weight must be in (0, 1), got {weight}")
        self.width, self.weight, self.compat = width, weight, compat
        self.frame_position_embeddings = nn.Embedding(max_frames, width)
        self.type_position_embeddings = nn.Embedding(2, width)
        self.frame2t_attention = TemporalTransformer(width, heads, 1, head_major_mask=compat)
        # a plain LayerNorm in the reference: eps 1e-5, not the blocks' 1e-12
        self.trans_layernorm = nn.LayerNorm(width)
        self.transformerClip = TemporalTransformer(width, heads, layers, head_major_mask=compat)
        self.actionClip = TemporalTransformer(width, heads, 1, head_major_mask=compat)
        # N(0, 0.125): the reference writes 64 ** -0.5 whatever E is.
        self.weight_center = nn.Parameter(torch.randn(centers, width) * 0.125)
        self.emb_center = nn.Parameter(torch.randn(centers, width) * 0.125)

    def init_from_clip(self, backbone) -> bool:
        """Positions and blocks from CLIP's text tower; False (fresh init) when widths differ."""
        if backbone.text_width != self.width:
            return False
        positions = backbone.text_positional_embedding  # [context, Dt]
        with torch.no_grad():
            n = min(self.frame_position_embeddings.num_embeddings, positions.shape[0])
            self.frame_position_embeddings.weight[:n].copy_(positions[:n])
            self.type_position_embeddings.weight.copy_(positions[:2])
        self.frame2t_attention.load_clip_blocks(backbone.text_blocks[:1])
        self.transformerClip.load_clip_blocks(backbone.text_blocks)
        self.actionClip.load_clip_blocks(backbone.text_blocks[:1])
        return True

    # ---- TDB ----------------------------------------------------------------------------
    def difference_tokens(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TDB steps 1-3: frames [B, T, E], mask [B, T] -> tokens [B, 2T-1, E], mask [B, 2T-1]."""
        b, t, e = frames.shape
        if t > self.frame_position_embeddings.num_embeddings:
            raise ConfigError(
                f"CLIP2Video has {self.frame_position_embeddings.num_embeddings} frame positions (CLIP4Clip's), got "
                f"{t} frames: set data.num_frames / data.test_num_frames to at most "
                f"{self.frame_position_embeddings.num_embeddings}"
            )
        pos = self.frame_position_embeddings.weight
        diff_mask = mask[:, :-1] if self.compat else mask[:, :-1] & mask[:, 1:]
        if t > 1:
            diff = frames[:, 1:] - frames[:, :-1] + pos[1:t]
            diff = self.frame2t_attention(diff, mask[:, 1:] if self.compat else diff_mask)
            diff = 2 * torch.sigmoid(self.trans_layernorm(diff)) - 1
            tokens = torch.cat([torch.stack([frames[:, :-1], diff], dim=2).flatten(1, 2), frames[:, -1:]], dim=1)
            token_mask = torch.cat([torch.stack([mask[:, :-1], diff_mask], dim=2).flatten(1, 2), mask[:, -1:]], dim=1)
        else:
            tokens, token_mask = frames, mask
        index = torch.arange(2 * t - 1, device=frames.device)
        types = self.type_position_embeddings.weight[(index % 2 == 0).long()]  # frames 1, differences 0
        return tokens + pos[index // 2] + types, token_mask

    # ---- TAB ----------------------------------------------------------------------------
    def aggregate(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """NetVLAD-like pooling on the shared centres: x [B, N, E], mask [B, N] -> [B, E] unit."""
        assign = torch.softmax(x @ self.weight_center.t(), dim=-1) * mask.unsqueeze(-1).to(x.dtype)  # [B, N, K]
        residual = torch.einsum("bnk,bne->bke", assign, x) - assign.sum(1).unsqueeze(-1) * self.emb_center
        return F.normalize(F.normalize(residual, dim=-1).mean(1), dim=-1)

    def _join(self, glob: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        return torch.cat([math.sqrt(self.weight) * glob, math.sqrt(1 - self.weight) * tab], dim=-1)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E] per-frame embeddings, mask [B, T] bool -> Embeddings(x [B, 2E])."""
        tokens, token_mask = self.difference_tokens(frames, mask)
        glob = mean_pool(self.transformerClip(tokens, token_mask)[:, ::2] + frames, mask)

        sub, sub_mask = frames[:, ::2], mask[:, ::2]
        tokens, token_mask = self.difference_tokens(sub, sub_mask)
        motion = self.actionClip(tokens, token_mask)[:, ::2] + sub
        tab = self.aggregate(torch.cat([frames, motion], 1), torch.cat([mask, sub_mask], 1))
        return Embeddings(self._join(glob, tab))

    def encode_text(self, text: TextOutput) -> Embeddings:
        """EOT embedding [N, E] and token features [N, L, E] with mask [N, L] -> Embeddings(x [N, 2E])."""
        words = text.mask.clone()
        words[:, 0] = False  # SOT does not take part in the alignment
        return Embeddings(self._join(F.normalize(text.pooled, dim=-1), self.aggregate(text.tokens, words)))

    def loss_terms(self, text: Embeddings, video: Embeddings) -> list[tuple[float, torch.Tensor]]:
        """w * InfoNCE(S_global) + (1 - w) * InfoNCE(S_tab): the two parts of the joined vectors [N, 2E]."""
        e = self.width
        s_glob = (text.x[:, :e] @ video.x[:, :e].t()) / self.weight
        s_tab = (text.x[:, e:] @ video.x[:, e:].t()) / (1 - self.weight)
        return [(self.weight, s_glob), (1 - self.weight, s_tab)]

    def vector_dim(self, embed_dim: int) -> int:
        return 2 * embed_dim
