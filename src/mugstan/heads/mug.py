"""Mug: mutual-guided alignment between text tokens and video frames (methods.md §5).

Inputs are L2-normalised text token features t [A, L, E] with mask tm [A, L] (SOT, words, EOT)
and per-frame video embeddings v [B, T, E] with mask vm [B, T]. With the raw token-frame scores
r[a, b, i, j] = <t[a, i], v[b, j]> and s = r with masked words zeroed:

simple (released default): a softmax over frames of lambda*s pools each word's scores (w), a
softmax over words pools each frame's scores (f); softmaxes over words of w and over frames of f
pool again; S = (t2v + v2t) / 2.

full (feature level): the same softmax weights pool features instead of scores. Because every
pooled feature is a weighted sum of unit vectors, its dot products are the same weighted sums of
r, so the features never need to be built: w' = sum_j p_ij r_ij, f' = sum_i q_ij r_ij, and
S = <sum_i alpha_i t_i, sum_j beta_j v_j> = sum_ij alpha_i beta_j r_ij.

Masked words and frames are excluded from every softmax. ``compat=True`` reproduces the
reference's "full" mode, which does not exclude padded words at the second level (a padded
word's w' is <mean of the frames, its token feature>), so padded token features leak into the
pooled text.

``Mug`` is the head: its video side is the L2-normalised per-frame embeddings with the frame
mask, its text side the L2-normalised token features with the token mask, and ``Head.similarity``
scores A texts x B videos in chunks, so memory is O(chunk^2 * L * T) whatever A and B are (the
reference builds dense [A, B, L, T] tensors). Recognition pools one vector per item: the mean of
the frame features, and CLIP's EOT embedding on the text side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mugstan.backbones.clip import TextOutput
from mugstan.heads.base import Embeddings, Head, masked_mean


def _masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=dim)


def mug_scores(t: torch.Tensor, tm: torch.Tensor, v: torch.Tensor, vm: torch.Tensor,
               lam: float = 100.0, mode: str = "simple", compat: bool = False) -> torch.Tensor:
    """Dense Mug scores for one chunk: t [A, L, E], tm [A, L], v [B, T, E], vm [B, T] -> [A, B]."""
    r = torch.einsum("ale,bte->ablt", t, v)
    r = r.to(torch.promote_types(r.dtype, torch.float32))  # [A, B, L, T]; half precision up to fp32, fp64 stays
    words = tm[:, None, :, None]  # [A, 1, L, 1]
    frames = vm[None, :, None, :]  # [1, B, 1, T]
    s = r * words
    p = _masked_softmax(lam * s, frames, dim=3)  # over frames, per word
    q = _masked_softmax(lam * s, words, dim=2)  # over words, per frame
    word_mask, frame_mask = tm[:, None, :], vm[None, :, :]  # [A, 1, L], [1, B, T]
    if mode == "simple":
        w = (p * s).sum(3)  # [A, B, L]
        f = (q * s).sum(2)  # [A, B, T]
        t2v = (_masked_softmax(lam * w, word_mask, dim=2) * w).sum(2)
        v2t = (_masked_softmax(lam * f, frame_mask, dim=2) * f).sum(2)
        return (t2v + v2t) / 2
    if mode == "full":
        w = (p * r).sum(3)  # <video feature pooled for word i, t_i>
        f = (q * r).sum(2)  # <text feature pooled for frame j, v_j>
        alpha_mask = torch.ones_like(word_mask) if compat else word_mask
        alpha = _masked_softmax(lam * w, alpha_mask, dim=2)  # [A, B, L]
        beta = _masked_softmax(lam * f, frame_mask, dim=2)  # [A, B, T]
        return torch.einsum("abl,ablt,abt->ab", alpha, r, beta)
    raise ValueError(f"mug_mode must be 'simple' or 'full', got {mode!r}")


class Mug(Head):
    """lam: softmax temperature lambda (100); mode: "simple" | "full"; compat: the reference's
    padded-word leak in "full" mode."""

    def __init__(self, lam: float = 100.0, mode: str = "simple", compat: bool = False):
        super().__init__()
        if mode not in ("simple", "full"):
            raise ValueError(f"mug_mode must be 'simple' or 'full', got {mode!r}")
        self.lam, self.mode, self.compat = lam, str(mode), compat

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> Embeddings:
        """frames [B, T, E], mask [B, T] bool -> Embeddings(x [B, T, E] unit, mask [B, T])."""
        return Embeddings(F.normalize(frames, dim=-1), mask)

    def encode_text(self, text: TextOutput) -> Embeddings:
        """Token features [N, L, E] with mask [N, L] -> Embeddings(x [N, L, E] unit, mask [N, L])."""
        return Embeddings(F.normalize(text.tokens, dim=-1), text.mask)

    def scores(self, text: Embeddings, video: Embeddings) -> torch.Tensor:
        if not (text.mask.any(1).all() and video.mask.any(1).all()):
            raise ValueError("every text needs at least one real token and every video at least one real frame")
        return mug_scores(text.x, text.mask, video.x, video.mask, self.lam, self.mode, self.compat)

    def text_vector(self, text: TextOutput) -> torch.Tensor:
        return F.normalize(text.pooled, dim=-1)

    def video_vector(self, video: Embeddings) -> torch.Tensor:
        return F.normalize(masked_mean(video.x, video.mask), dim=-1)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, mode={self.mode}, compat={self.compat}"
