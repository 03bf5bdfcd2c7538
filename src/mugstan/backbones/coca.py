"""CoCa backbone over open_clip's ``CoCa``: the CLIP backbone contract, an attentional pooler, a caption decoder.

open_clip's CoCa (``coca_ViT-B-32``, ``coca_ViT-L-14``) differs from CLIP in three places, and
``CoCaBackbone`` reads each of them exactly as ``open_clip.CoCa`` does:

- Vision: the same ViT trunk (class token, ``ln_pre``, residual blocks), then an attentional
  pooler over all 1+P tokens of the final block (``ln_k`` on the tokens, ``ln_q`` on Q learned
  queries, cross-attention) -> ``ln_post`` (width E) -> query 0 times ``proj`` [E, E] is the
  contrastive embedding; queries 1..Q-1 (not projected) are the caption decoder's visual tokens.
- Text: SOT + BPE + EOT padded with 0 to the context (76), a learned CLS token appended at the
  end (position 76); causal attention plus a key mask from the padding (open_clip's legacy CoCa
  mask, shifted by one position, is what the released weights were trained with and is kept);
  the pooled embedding is ``ln_final(x[CLS]) @ text_projection``.
- A multimodal text decoder (causal self-attention over the caption's text-tower features,
  cross-attention to the visual tokens) predicting the next token.

The contract of ``mugstan.backbones.clip.CLIPBackbone`` is kept, so every branch and head works
unchanged: ``encode_frames`` (layer taps on the trunk, per-frame embeddings through the pooler),
``encode_text`` (pooled [N, E] and per-token [N, L, E] features, the tokens projected the way the
pooled one is: ``ln_final`` then ``text_projection``), the shape properties, and the fusion hook
``fuse(last, cls)``: STAN's video class token is added at the class position of every frame's
final tokens *before* the attentional pooler, so with the branch's output zero the model is CoCa
applied to each frame. ``project`` (a class token alone through ``ln_post`` and ``proj``) has no
CoCa counterpart and is refused.

Beyond the contract: ``caption_tokens`` (the pooler's caption queries over the fused tokens of
all frames of a video) and ``next_token_logits`` (one decoder step) drive ``mugstan.caption``.
The decoder receives no gradient from the retrieval losses, so its parameters are frozen.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mugstan.backbones.clip import CLIPBackbone, TextOutput
from mugstan.config import ConfigError


def init_decoder_projection(coca: nn.Module) -> None:
    """Initialise the caption decoder's output projection [W, V], N(0, W^-0.5) as open_clip intends:
    ``MultimodalTransformer`` creates it with ``torch.empty`` and never initialises it, so a CoCa
    built without weights would otherwise decode from uninitialised memory."""
    decoder = coca.text_decoder
    with torch.no_grad():
        nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)


class CoCaBackbone(CLIPBackbone):
    """An open_clip ``CoCa`` with layer taps. Parameters live under ``self.clip`` (open_clip's names:
    ``visual.*``, ``text.*``, ``text_decoder.*``, ``logit_scale``)."""

    def __init__(self, coca: nn.Module):
        super().__init__(coca)
        coca.text_decoder.requires_grad_(False)  # no retrieval loss reaches it

    @staticmethod
    def check_towers(coca: nn.Module) -> None:
        visual = coca.visual
        if getattr(visual, "attn_pool", None) is None or getattr(visual, "attn_pool_contrastive", None) is not None:
            raise ConfigError("CoCaBackbone reads open_clip's original CoCa pooling (one attentional pooler, "
                             "vision_cfg.attentional_pool: true); 'parallel' / 'cascade' pools are not supported")
        if visual.pool_type != "tok" or visual.proj is None:
            raise ConfigError(
                f"CoCaBackbone needs vision_cfg.pool_type 'tok' and a projection, got {visual.pool_type!r}"
            )
        if coca.text.cls_emb is None or coca.text.pool_type == "none" or coca.text.text_projection is None:
            raise ConfigError("CoCaBackbone needs CoCa's text tower (text_cfg.embed_cls: true, with a projection)")
        if isinstance(coca.text.text_projection, nn.Linear):
            raise ConfigError(
                "CoCaBackbone expects text_projection as a matrix (text_cfg.proj_type 'linear' without bias)"
            )

    # ---- shapes -------------------------------------------------------------------------
    @property
    def text(self) -> nn.Module:
        return self.clip.text

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    @property
    def text_width(self) -> int:
        return self.text.width

    @property
    def text_heads(self) -> int:
        return self.text.heads

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.text.transformer.resblocks

    @property
    def text_positional_embedding(self) -> nn.Parameter:
        return self.text.positional_embedding

    @property
    def context_length(self) -> int:
        """Text tokens per caption (76): the tower's positions minus the appended CLS."""
        return self.text.positional_embedding.shape[0] - 1

    @property
    def caption_queries(self) -> int:
        """Visual tokens the caption decoder reads (the pooler's queries 1..Q-1)."""
        return self.visual.attn_pool.query.shape[0] - 1

    def pooled_text_parameters(self) -> list[nn.Parameter]:
        """The CLS embedding: only the pooled text embedding reads it (text tokens are causal)."""
        return [self.text.cls_emb]

    # ---- vision -------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor, queries: slice, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attentional pooler, then ``ln_post``: tokens [N, S, D] -> [N, Q, E] for the queries in
        ``queries``. key_mask [N, S] bool (True = a real token) or None. Queries attend independently,
        so any subset equals the same rows of open_clip's all-query pooling."""
        p = self.visual.attn_pool
        q = p.ln_q(p.query[queries]).to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        k = p.ln_k(tokens)
        out = p.attn(q, k, k, need_weights=False, key_padding_mask=None if key_mask is None else ~key_mask)[0]
        return self.visual.ln_post(out)

    def frame_embeds(self, last: torch.Tensor) -> torch.Tensor:
        """Final block output [N, 1+P, D] -> per-frame embeddings [N, E]: query 0 of the pooler @ proj
        (``open_clip.CoCa.encode_image(frames, normalize=False)``)."""
        return self.pool(last, slice(0, 1))[:, 0] @ self.visual.proj

    def fuse_tokens(self, last: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """last [B, T, 1+P, D], cls [B, 1, D] -> [B, T, 1+P, D]: ``cls`` added at every frame's class position."""
        return torch.cat([last[:, :, :1] + cls.unsqueeze(1), last[:, :, 1:]], dim=2)

    def fuse(self, last: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """STAN's output fusion for CoCa: final block output [B, T, 1+P, D], branch class token [B, 1, D]
        -> per-frame embeddings [B, T, E], the pooler reading each frame's tokens with the branch's
        class token added at the class position. ``cls`` zero gives ``frame_embeds`` of every frame."""
        b, t = last.shape[:2]
        return self.frame_embeds(self.fuse_tokens(last, cls).flatten(0, 1)).view(b, t, -1)

    def project(self, cls: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "CoCa has no per-token projection: its embedding comes from the attentional pooler over "
            "all tokens of a frame; use backbone.frame_embeds(last) or backbone.fuse(last, cls)"
        )

    def caption_tokens(
        self, last: torch.Tensor, mask: torch.Tensor, cls: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The caption decoder's visual tokens for videos: final block output [B, T, 1+P, D], frame mask
        [B, T] bool, the branch's class token [B, 1, D] (None: no branch) -> [B, Q-1, E].

        The pooler's caption queries attend over the fused tokens of all real frames at once, so a
        video gets as many visual tokens as an image; a one-frame video without a branch gets exactly
        the tokens ``open_clip.CoCa`` gives its decoder for that image."""
        if cls is not None:
            last = self.fuse_tokens(last, cls)
        b, t, s, d = last.shape
        key_mask = mask.unsqueeze(-1).expand(b, t, s).reshape(b, t * s)
        return self.pool(last.reshape(b, t * s, d), slice(1, None), key_mask)

    # ---- text ---------------------------------------------------------------------------
    def _text_mask(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention mask [N*H, L+1, L+1] for L tokens + CLS: causal, plus open_clip's key
        mask from the padding (valid [N, L] bool). Legacy CoCa (``correct_cls_mask`` False, the
        released weights) shifts the key mask right by one position, as open_clip does."""
        n, length = valid.shape
        ones = valid.new_ones(n, 1)
        keys = torch.cat([valid, ones] if self.text.correct_cls_mask else [ones, valid], dim=1)  # [N, L+1]
        causal = torch.full((length + 1, length + 1), float("-inf"), device=valid.device, dtype=dtype).triu_(1)
        mask = causal.masked_fill(~keys[:, None, :], float("-inf"))  # [N, L+1, L+1]
        return mask.repeat_interleave(self.text.heads, 0)

    def encode_text(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TextOutput:
        """ids [N, L] int64 (SOT ... EOT, 0-padded), mask [N, L] bool (default ids != 0) -> TextOutput.

        The ids are padded to CoCa's context (76) before the CLS token is appended, as open_clip's
        tokenizer pads them, so the pooled embedding is ``open_clip.CoCa.encode_text`` whatever L
        (<= 76) the dataset uses. tokens [N, L, E] = ln_final(x) @ text_projection per position.
        """
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [N, L], got {tuple(ids.shape)}")
        n, length = ids.shape
        context = self.context_length
        if length > context:
            raise ValueError(
                f"{length} tokens exceed CoCa's text context {context}; set model.context_length <= {context}"
            )
        if mask is None:
            mask = ids != 0
        text = self.text
        full = F.pad(ids, (0, context - length))
        x = text.token_embedding(full)
        x = torch.cat([x, text.cls_emb.to(x.dtype).expand(n, 1, -1)], dim=1) + text.positional_embedding.to(x.dtype)
        attn_mask = self._text_mask(F.pad(mask.bool(), (0, context - length)), x.dtype)
        for block in text.transformer.resblocks:
            x = self.run_block(block, x, attn_mask=attn_mask)
        proj = text.text_projection
        pooled = text.ln_final(x[:, -1]) @ proj
        tokens = text.ln_final(x[:, :length]) @ proj
        return TextOutput(pooled=pooled, tokens=tokens, mask=mask.bool())

    # ---- captions -----------------------------------------------------------------------
    def next_token_logits(self, visual: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """One decoder step: visual tokens [N, Q-1, E] and caption prefixes ids [N, l] (SOT first) ->
        next-token logits [N, V], as ``open_clip.CoCa(image, ids)["logits"][:, -1]``.

        The text tower runs over the prefix and its CLS, with open_clip's mask: causal, and a token 0
        in the prefix is padding to the tokens after it (open_clip's pad id; the legacy mask shifted
        by one, as ``encode_text``); the decoder reads the prefix's features before ``ln_final``."""
        n, length = ids.shape
        if length > self.clip.text_decoder.context_length:
            raise ValueError(
                f"caption prefix of {length} tokens exceeds the decoder's context "
                f"{self.clip.text_decoder.context_length}"
            )
        text = self.text
        x = text.token_embedding(ids)
        x = torch.cat([x, text.cls_emb.to(x.dtype).expand(n, 1, -1)], dim=1) + text.positional_embedding[
            : length + 1
        ].to(x.dtype)
        attn_mask = self._text_mask(ids != 0, x.dtype)
        for block in text.transformer.resblocks:
            x = block(x, attn_mask=attn_mask)
        return self.clip.text_decoder(visual, x[:, :length])[:, -1]
