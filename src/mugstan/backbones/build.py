"""Building a backbone: an open_clip model from a name, a pretrained tag, a weights file or a
config, wrapped in the class that reads it (``CLIPBackbone``, or ``CoCaBackbone`` for CoCa).

The one place that knows both backbone classes: ``backbones.clip`` and ``backbones.coca`` define
them and import nothing from here.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional, Union

import torch.nn as nn

from mugstan.backbones import register_configs
from mugstan.backbones.clip import CLIPBackbone
from mugstan.backbones.coca import CoCaBackbone, init_decoder_projection
from mugstan.config import ConfigError


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs to the root logger; what matters of it mugstan says itself."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def list_models() -> list[str]:
    """Every backbone name ``build_clip`` accepts: open_clip's ViT configs and mugstan's tiny ones."""
    import open_clip

    register_configs()
    return [m for m in open_clip.list_models() if m.startswith(("ViT", "mugstan", "coca_ViT"))]


def named_config(name: str, pretrained: Optional[str] = None, quick_gelu: bool = False) -> dict:
    """The open_clip config of a named backbone as ``build_clip`` builds it: with QuickGELU where
    ``quick_gelu`` or the pretrained tag (OpenAI's) asks for it."""
    import open_clip

    register_configs()
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


def wrap(model: nn.Module) -> CLIPBackbone:
    """The backbone class that reads an open_clip model: ``CoCaBackbone`` for CoCa, ``CLIPBackbone`` otherwise."""
    import open_clip

    if isinstance(model, open_clip.CoCa):
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
    from mugstan.hub import hub_reachable, offline_unless_reachable, resolve_weights

    register_configs()
    if weights is not None and pretrained is not None:
        raise ConfigError(f"give either pretrained={pretrained!r} or weights={str(weights)!r}, not both")
    loaded = load_clip_weights(resolve_weights(weights), weights_format) if weights is not None else None
    if config is not None:
        if pretrained is not None:
            raise ConfigError(
                "model.backbone_config describes an architecture open_clip has no pretrained weights for; "
                "give model.weights instead of model.pretrained"
            )
        clip = model_from_config(config)
    elif name is None:
        if loaded is None:
            raise ConfigError("build_clip needs a model name or a weights file to infer the architecture from")
        if loaded.config is None:  # never a model with guessed head counts
            raise ConfigError(
                f"model.backbone is null but {loaded.unknown}: set model.backbone to the architecture it was "
                "trained as (e.g. model.backbone=mugstan-tiny or ViT-B-32) or give model.backbone_config"
            )
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
            # file, a checkpoint) or random initialisation is what the config asks for (training says so);
            # a failed download is logged by open_clip and then reported below, once
            with _quiet_root_logger(), offline_unless_reachable():
                clip = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as err:  # open_clip raises RuntimeError / OSError / HF hub errors
            if pretrained is None:
                raise
            why = (
                "the Hugging Face Hub cannot be reached and they are not in its cache"
                if not hub_reachable()
                else f"{type(err).__name__}: {err}"
            )
            raise ConfigError(
                f"could not fetch open_clip weights {name!r} / {pretrained!r} ({why}). "
                "On a machine without internet, download the checkpoint elsewhere and pass its local "
                "path instead: model.weights=/path/to/ViT-B-32.pt (OpenAI .pt, HuggingFace CLIPModel "
                "folder or open_clip .safetensors) and model.pretrained=null"
            ) from err
    if pretrained is None and isinstance(clip, open_clip.CoCa):
        init_decoder_projection(clip)  # open_clip leaves it uninitialised; loaded weights replace it
    if loaded is not None:
        loaded.load_into(clip)
    clip.eval()
    backbone = wrap(clip)
    backbone.architecture = {k: v for k, v in config.items() if k != "custom_text"}  # what weights files record
    return backbone
