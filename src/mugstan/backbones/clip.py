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

``build_clip`` returns a ``CoCaBackbone`` for open_clip CoCa models (``coca_ViT-B-32`` ...).

``Tokenizer`` produces ``SOT + BPE[: L-2] + EOT`` padded with 0, so the end-of-text token always
survives truncation. ``build_clip`` creates the model from an open_clip name, an open_clip
pretrained tag (downloaded and cached by open_clip) and/or a local weights file.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mugstan.config import ConfigError

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_CONFIG_DIR = Path(__file__).parent / "model_configs"


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
                f"but the model expects {self.image_size}x{self.image_size} input; set data.image_size={self.image_size}"
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


@contextlib.contextmanager
def _quiet_root_logger(quiet: bool):
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _register_configs() -> None:
    import open_clip

    if "mugstan-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def list_models() -> list[str]:
    """Every backbone name ``build_clip`` accepts: open_clip's ViT configs and mugstan's tiny ones."""
    import open_clip

    _register_configs()
    return [m for m in open_clip.list_models() if m.startswith(("ViT", "mugstan", "coca_ViT"))]


def named_config(name: str, pretrained: Optional[str] = None, quick_gelu: bool = False) -> dict:
    """The open_clip config of a named backbone as ``build_clip`` builds it: with QuickGELU where
    ``quick_gelu`` or the pretrained tag (OpenAI's) asks for it."""
    import open_clip

    _register_configs()
    config = {k: v for k, v in (open_clip.get_model_config(name) or {}).items() if k != "custom_text"}
    if quick_gelu or (pretrained and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu")):
        config["quick_gelu"] = True
    return config


def model_from_config(config: dict) -> nn.Module:
    """An open_clip model from a model config dict: ``CoCa`` when it has a ``multimodal_cfg``
    (a caption decoder), ``CLIP`` otherwise."""
    import open_clip

    config = {k: v for k, v in config.items() if k != "custom_text"}  # open_clip's JSON flag, not an argument
    return open_clip.CoCa(**config) if "multimodal_cfg" in config else open_clip.CLIP(**config)


def wrap(model: nn.Module) -> "CLIPBackbone":
    """The backbone class that reads an open_clip model: ``CoCaBackbone`` for CoCa, ``CLIPBackbone`` otherwise."""
    import open_clip

    if isinstance(model, open_clip.CoCa):
        from mugstan.backbones.coca import CoCaBackbone

        return CoCaBackbone(model)
    return CLIPBackbone(model)


def build_clip(
    name: Optional[str] = "ViT-B-32",
    pretrained: Optional[str] = None,
    weights: Optional[Union[str, Path]] = None,
    weights_format: str = "auto",
    config: Optional[dict] = None,
) -> CLIPBackbone:
    """Create a CLIP backbone.

    name: open_clip model name (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``mugstan-tiny``, ...; CoCa:
        ``coca_ViT-B-32``, ``coca_ViT-L-14``, ``mugstan-coca-tiny``, returned as a ``CoCaBackbone``),
        or None to infer the architecture from ``weights``.
    pretrained: open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...): open_clip
        downloads and caches the weights. Needs internet once; offline, pass ``weights``.
    weights: local file or folder, or a Hub spec (``hf-hub:org/name``, ``local-dir:PATH``,
        ``mugstan.hub``): OpenAI ``.pt`` (TorchScript or state dict), HuggingFace
        ``CLIPModel`` directory, or open_clip-layout ``.safetensors`` / ``.pt`` (see
        ``mugstan.backbones.convert``). Loaded strictly: every tensor must match.
    config: an open_clip model config for an unnamed architecture (``model.backbone_config``);
        takes the place of ``name``.

    The open_clip config the model was built from is ``backbone.architecture``: what every weights
    file mugstan writes records. ``name`` None with a file that records no architecture and has
    shapes of no named one is a ``ConfigError`` naming model.backbone (its head counts would be a
    guess).
    """
    import open_clip

    from mugstan.backbones.convert import load_clip_weights
    from mugstan.hub import resolve_weights

    _register_configs()
    if weights is not None and pretrained is not None:
        raise ConfigError(f"give either pretrained={pretrained!r} or weights={str(weights)!r}, not both")
    loaded = load_clip_weights(resolve_weights(weights), weights_format) if weights is not None else None
    if config is not None:
        if pretrained is not None:
            raise ConfigError("model.backbone_config describes an architecture open_clip has no pretrained weights for; "
                             "give model.weights instead of model.pretrained")
        clip = model_from_config(config)
    elif name is None:
        if loaded is None:
            raise ConfigError("build_clip needs a model name or a weights file to infer the architecture from")
        if loaded.config is None:  # never a model with guessed head counts
            raise ConfigError(f"model.backbone is null but {loaded.unknown}: set model.backbone to the architecture it was "
                              "trained as (e.g. model.backbone=mugstan-tiny or ViT-B-32) or give model.backbone_config")
        config = loaded.config
        clip = model_from_config(config)
    else:
        if name not in open_clip.list_models():
            raise ConfigError(
                f"unknown backbone {name!r}; choose one of {', '.join(list_models())}, or pass "
                "backbone=null with a weights file to infer the architecture"
            )
        # QuickGELU wherever the weights were trained with it: OpenAI's (open_clip's `openai` tags
        # say so in their pretrained config, and open_clip alone would only warn) and local files.
        tag = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
        kwargs = {}
        if (loaded is not None and loaded.config and loaded.config.get("quick_gelu")) or tag.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        config = named_config(name, quick_gelu=bool(kwargs))
        try:
            # open_clip warns "initialized randomly" whenever no tag is given: here weights follow (a
            # file, a checkpoint) or random initialisation is what the config asks for (training says so)
            with _quiet_root_logger(pretrained is None):
                clip = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as err:  # open_clip raises RuntimeError / OSError / HF hub errors
            if pretrained is None:
                raise
            raise ConfigError(
                f"could not fetch open_clip weights {name!r} / {pretrained!r} ({type(err).__name__}: {err}). "
                "On a machine without internet, download the checkpoint elsewhere and pass its local "
                "path instead: model.weights=/path/to/ViT-B-32.pt (OpenAI .pt, HuggingFace CLIPModel "
                "folder or open_clip .safetensors) and model.pretrained=null"
            ) from err
    if pretrained is None and isinstance(clip, open_clip.CoCa):
        from mugstan.backbones.coca import init_decoder_projection

        init_decoder_projection(clip)  # open_clip leaves it uninitialised; loaded weights replace it
    if loaded is not None:
        loaded.load_into(clip)
    clip.eval()
    backbone = wrap(clip)
    backbone.architecture = {k: v for k, v in config.items() if k != "custom_text"}  # what weights files record
    return backbone
