"""CLIP backbone over open_clip, with vision layer taps and per-token text features.

``CLIPBackbone`` wraps an ``open_clip.CLIP`` (its parameters keep open_clip's names, so
``backbone.clip.state_dict()`` is an open_clip state dict) and exposes what the video methods
need and plain ``CLIP.forward`` hides:

- ``encode_frames``: frames ``[N, 3, H, W]`` -> hidden states ``[N, 1+P, D]`` after any requested
  blocks (STAN's taps), the final block output, and the per-frame embeddings ``[N, E]``;
- ``encode_text``: token ids ``[N, L]`` -> pooled EOT embedding ``[N, E]``, per-token features
  ``[N, L, E]`` (``ln_final(x) @ text_projection`` at every position) and the token mask;
- ``fuse``: STAN's output fusion, CLIP's ``ln_post`` + projection (``project``) of each frame's
  class token plus the branch's (``mugstan.backbones.coca.CoCaBackbone`` fuses before its pooler).

``Tokenizer`` produces ``SOT + BPE[: L-2] + EOT`` padded with 0, so the end-of-text token always
survives truncation. ``mugstan.backbones.build.build_clip`` creates a backbone (this class, or a
``CoCaBackbone`` for open_clip CoCa models) from an open_clip name, an open_clip pretrained tag
and/or a local weights file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mugstan.config import ConfigError

SOT_TOKEN = 49406
EOT_TOKEN = 49407


class Tokenizer:
    """CLIP BPE tokenizer with a configurable length that always keeps the EOT token.

    ``tokenizer(texts)`` returns ``(ids [N, L] int64, mask [N, L] bool)``; ``mask`` is True for
    SOT, the text tokens and EOT. Captions longer than ``L - 2`` BPE tokens are truncated before
    EOT is appended (the reference bug that slices after appending is not reproduced).
    """

    def __init__(self, context_length: int = 77, keep_eot: bool = True):
        from open_clip.tokenizer import SimpleTokenizer

        if context_length < 3:
            raise ValueError(f"context_length must be at least 3 (SOT, one token, EOT), got {context_length}")
        self.context_length = context_length
        self.keep_eot = keep_eot  # False: the STAN authors' CLIPTokenize (cut after EOT; model.eot_compat)
        self._bpe = SimpleTokenizer()

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, with SOT and EOT, truncated to ``context_length``."""
        if not isinstance(text, str):
            raise TypeError(f"caption must be a string, got {type(text).__name__}: {text!r}")
        if not self.keep_eot:  # reference behaviour: append EOT, then cut (long captions lose it)
            return [SOT_TOKEN, *self._bpe.encode(text), EOT_TOKEN][: self.context_length]
        body = self._bpe.encode(text)[: self.context_length - 2]
        return [SOT_TOKEN, *body, EOT_TOKEN]

    def decode(self, ids: Sequence[int]) -> str:
        """BPE ids (without SOT / EOT) -> text, whitespace normalised."""
        return " ".join(self._bpe.decode(list(ids)).split())

    def __call__(self, texts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = self.encode(text)
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0


@dataclass
class VisionOutput:
    """What ``CLIPBackbone.encode_frames`` returns.

    hidden: {block index: [N, 1+P, D]} outputs of the requested blocks (0-based).
    last: [N, 1+P, D] output of the final block (before ln_post).
    embeds: [N, E] per-frame embeddings, proj(ln_post(last[:, 0])), not normalised.
    """

    hidden: dict[int, torch.Tensor]
    last: torch.Tensor
    embeds: torch.Tensor


@dataclass
class TextOutput:
    """What ``CLIPBackbone.encode_text`` returns.

    pooled: [N, E] the EOT token's feature (CLIP's text embedding), not normalised.
    tokens: [N, L, E] ln_final(x) @ text_projection at every position.
    mask: [N, L] bool, True for real tokens (SOT, text, EOT).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


class CLIPBackbone(nn.Module):
    """An open_clip ``CLIP`` with layer taps. Parameters live under ``self.clip``."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.check_towers(clip)
        self.clip = clip
        self.grad_checkpointing = False
        self.architecture: dict = {}  # the open_clip config it was built from (build_clip sets it)

    @staticmethod
    def check_towers(clip: nn.Module) -> None:
        """Refuse open_clip models whose vision tower this class does not read (CoCa has its own)."""
        visual = clip.visual
        if not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(
                "mugstan's CLIPBackbone needs a plain ViT vision tower (class token, no attentional pooling); "
                f"got {type(visual).__name__}. Use an open_clip ViT model such as ViT-B-32, or a CoCa "
                "model (coca_ViT-B-32) through build_clip, which wraps it in a CoCaBackbone."
            )
        if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
            raise ConfigError(f"unsupported vision pooling {visual.pool_type!r}: mugstan reads the class token")

    # ---- shapes -------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def vision_width(self) -> int:
        return self.visual.class_embedding.shape[0]

    @property
    def vision_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def vision_heads(self) -> int:
        return self.visual.transformer.resblocks[0].attn.num_heads

    @property
    def embed_dim(self) -> int:
        return self.clip.text_projection.shape[-1] if isinstance(self.clip.text_projection, torch.Tensor) \
            else self.clip.text_projection.out_features

    @property
    def text_width(self) -> int:
        return self.clip.token_embedding.weight.shape[1]

    @property
    def text_heads(self) -> int:
        return self.clip.transformer.resblocks[0].attn.num_heads

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.clip.transformer.resblocks

    @property
    def text_positional_embedding(self) -> nn.Parameter:
        """The text tower's position embedding [context, Dt] (seqTransf / TDB initialise from it)."""
        return self.clip.positional_embedding

    @property
    def context_length(self) -> int:
        return self.clip.positional_embedding.shape[0]

    @property
    def image_size(self) -> int:
        return self.visual.conv1.stride[0] * self.grid_size

    @property
    def grid_size(self) -> int:
        return round((self.visual.positional_embedding.shape[0] - 1) ** 0.5)

    @property
    def num_patches(self) -> int:
        return self.visual.positional_embedding.shape[0] - 1

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters: everything outside ``visual`` (open_clip's ``logit_scale``
        among them, which the model's own scale supersedes and keeps frozen)."""
        return [p for name, p in self.clip.named_parameters() if not name.startswith("visual.")]

    def freeze_text(self) -> None:
        """No gradient for the text tower (``text_parameters``)."""
        for p in self.text_parameters():
            p.requires_grad_(False)

    def pooled_text_parameters(self) -> list[nn.Parameter]:
        """Parameters that only the pooled text embedding reads, not the per-token features: none for
        CLIP, whose pooled embedding is the EOT token's feature (CoCa: its appended CLS token)."""
        return []

    # ---- vision -------------------------------------------------------------------------
    def embed_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Vision stem: frames [N, 3, H, W] -> tokens [N, 1+P, D] (class token first, after ln_pre)."""
        v = self.visual
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [N, 3, H, W], got {tuple(frames.shape)}")
        x = v.conv1(frames.to(v.conv1.weight.dtype))  # [N, D, g, g]
        if x.shape[-2] * x.shape[-1] != self.num_patches:
            raise ConfigError(
                f"frames of {tuple(frames.shape[-2:])} give a {x.shape[-2]}x{x.shape[-1]} patch grid, "
                f"but the model expects {self.image_size}x{self.image_size} input; set "
                f"data.image_size={self.image_size}"
            )
        x = x.flatten(2).transpose(1, 2)  # [N, P, D]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    def run_block(self, block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One residual block, with activation checkpointing when enabled and training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
        return block(x, attn_mask=attn_mask)

    def encode_frames(self, frames: torch.Tensor, taps: Sequence[int] = ()) -> VisionOutput:
        """frames [N, 3, H, W] (CLIP-normalised) -> VisionOutput.

        taps: 0-based block indices whose outputs are returned in ``hidden`` (negative indices
        count from the end, ``-1`` is the last block).
        """
        n_layers = self.vision_layers
        wanted = {t % n_layers for t in taps}
        if any(not -n_layers <= t < n_layers for t in taps):
            raise ValueError(f"taps {list(taps)} out of range for a {n_layers}-layer vision tower")
        x = self.embed_patches(frames)
        hidden = {}
        for i, block in enumerate(self.visual.transformer.resblocks):
            x = self.run_block(block, x)
            if i in wanted:
                hidden[i] = x
        return VisionOutput(hidden=hidden, last=x, embeds=self.frame_embeds(x))

    def frame_embeds(self, last: torch.Tensor) -> torch.Tensor:
        """Final block output [N, 1+P, D] -> per-frame embeddings [N, E]: the class token through
        ln_post and proj."""
        return self.project(last[:, 0])

    def fuse(self, last: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """STAN's output fusion: final block output [B, T, 1+P, D] and the branch's video class token
        [B, 1, D] -> per-frame embeddings [B, T, E] = project(frame class token + branch class token).
        With ``cls`` zero it equals ``frame_embeds`` of every frame."""
        return self.project(last[:, :, 0] + cls)

    def project(self, cls: torch.Tensor) -> torch.Tensor:
        """Class-token features [..., D] -> embeddings [..., E] (CLIP's ln_post, then proj)."""
        return self.visual.ln_post(cls) @ self.visual.proj

    # ---- text ---------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TextOutput:
        """ids [N, L] int64 (SOT ... EOT, 0-padded) -> TextOutput.

        mask [N, L] bool (True = real token) defaults to ``ids != 0``. The text transformer is
        causal, so padding after EOT never changes the pooled embedding. L may be shorter than
        CLIP's context (77); the causal mask and positions are sliced to L.
        """
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [N, L], got {tuple(ids.shape)}")
        n, length = ids.shape
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the text tower's context length {self.context_length}")
        if mask is None:
            mask = ids != 0
        c = self.clip
        x = c.token_embedding(ids) + c.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=ids.device).triu_(1).to(x.dtype)
        for block in c.transformer.resblocks:
            x = self.run_block(block, x, attn_mask=causal)
        x = c.ln_final(x)
        proj = c.text_projection
        tokens = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        pooled = tokens[torch.arange(n, device=ids.device), ids.argmax(dim=-1)]
        return TextOutput(pooled=pooled, tokens=tokens, mask=mask.bool())
