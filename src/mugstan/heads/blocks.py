"""Building blocks of the temporal modules: attention, residual block, drop-path, masks.

The blocks keep CLIP's packed ``in_proj`` layout so CLIP text layers copy over one to one
(``Block.load_clip_block``), and attention always goes through
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# CLIP4Clip / CLIP2Video temporal blocks: LayerNorm eps 1e-12 and additive masks of -1e6, so a
# query whose keys are all masked attends uniformly instead of producing NaN (methods.md §2).
REFERENCE_LN_EPS = 1e-12
REFERENCE_MASK_VALUE = -1e6


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: zero the residual branch of a whole sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention with a packed in_proj, through scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [N, S, D]; attn_mask broadcastable to [N, heads, S, S]: float (added) or bool (True = attend)."""
        n, s, d = x.shape
        q, k, v = self.in_proj(x).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, s, d))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)); x + mlp(ln_2(x)) with a QuickGELU MLP."""

    def __init__(self, width: int, heads: int, ln_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)
        ))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))

    @torch.no_grad()
    def load_clip_block(self, block: nn.Module) -> None:
        """Copy the weights of an open_clip ``ResidualAttentionBlock`` of the same width."""
        self.ln_1.load_state_dict(block.ln_1.state_dict())
        self.ln_2.load_state_dict(block.ln_2.state_dict())
        self.attn.in_proj.weight.copy_(block.attn.in_proj_weight)
        self.attn.in_proj.bias.copy_(block.attn.in_proj_bias)
        self.attn.out_proj.load_state_dict(block.attn.out_proj.state_dict())
        self.mlp.c_fc.load_state_dict(block.mlp.c_fc.state_dict())
        self.mlp.c_proj.load_state_dict(block.mlp.c_proj.state_dict())


def additive_key_mask(mask: torch.Tensor, heads: int, head_major: bool = False) -> torch.Tensor:
    """Key mask [B, S] bool -> additive mask [B, heads, 1, S] of 0 / -1e6 (reference convention).

    head_major=False (the fix, CLIP4Clip): every head of video b uses video b's mask.
    head_major=True (CLIP2Video's quirk, ``mask.repeat(n_head, 1, 1)`` fed to a batch-major
    attention): head h of video b uses the mask of video ``(b * heads + h) mod B``.
    """
    b = mask.shape[0]
    additive = (~mask).float() * REFERENCE_MASK_VALUE  # [B, S]
    if head_major:
        source = (torch.arange(b, device=mask.device)[:, None] * heads + torch.arange(heads, device=mask.device)) % b
        return additive[source].unsqueeze(2)  # [B, H, 1, S]
    return additive[:, None, None, :].expand(b, heads, 1, mask.shape[1])


class TemporalTransformer(nn.Module):
    """The CLIP4Clip temporal transformer: ``layers`` blocks (eps 1e-12) with a key mask."""

    def __init__(self, width: int, heads: int, layers: int, head_major_mask: bool = False):
        super().__init__()
        self.heads = heads
        self.head_major_mask = head_major_mask
        self.resblocks = nn.ModuleList([Block(width, heads, REFERENCE_LN_EPS) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, S, D], mask [B, S] bool (True = real token) -> [B, S, D]."""
        attn_mask = additive_key_mask(mask, self.heads, self.head_major_mask)
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x

    def load_clip_blocks(self, blocks: nn.ModuleList) -> None:
        """Initialise block i from CLIP text block i (widths must match)."""
        for ours, theirs in zip(self.resblocks, blocks, strict=False):
            ours.load_clip_block(theirs)
