"""Converters for the released whole-model checkpoints (methods.md §7) to mugstan models.

- STAN / Mug-STAN (mmengine): HuggingFace-style vision keys under ``backbone.``, the branch as
  ``backbone.STAN_S_layers`` / ``STAN_T_layers`` / ``STAN_time_embed``, the text tower under
  ``text_backbone.``. Mug has no parameters, so a Mug-STAN checkpoint converts like a STAN one;
  evaluate it with ``model.head=mug``.
- CLIP4Clip / CLIP2Video (``pytorch_model.bin.N``): OpenAI CLIP keys under ``clip.``, plus
  ``frame_position_embeddings``, ``transformerClip`` (seqTransf, CLIP2Video) and CLIP2Video's
  ``type_position_embeddings``, ``frame2t_attention``, ``trans_layernorm``, ``weight_center``,
  ``emb_center``, ``actionClip``.

``convert_stan`` / ``convert_clip2video`` return ``(state_dict, model_config)``: the state dict of
the mugstan model (``build_model(ModelConfig(**model_config))``) with no missing or unexpected
keys, and the config fields that rebuild it (backbone found by matching the tensor shapes
against the released OpenAI CLIPs and mugstan's configs; other shapes need the CLIP's config). This
module sits above ``mugstan.models`` (it builds models from converted files); the HF key map it shares
with CLIPModel folders is ``mugstan.backbones.convert.hf_to_open_clip``. The tests write checkpoints in
the authors' own key names (tests/reference_layouts.py) and convert them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import torch

from mugstan.backbones.convert import WeightsError, _read_tensors, config_from_state_dict, hf_block, hf_to_open_clip

# The released OpenAI CLIPs every STAN / CLIP4Clip / CLIP2Video checkpoint starts from: heads of width
# 64 (OpenAI's rule) are known for these shapes only. mugstan's own configs record their heads.
RELEASED_OPENAI = ("ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "ViT-L-14-quickgelu", "ViT-L-14-336-quickgelu")


def backbone_fields(clip_sd: dict, source: str, openai_rule: bool = False) -> dict:
    """Model config fields of the backbone these CLIP tensors need: the open_clip name of the
    released OpenAI CLIP (B/32, B/16, L/14, L/14-336) or mugstan config whose shapes they have.
    Other shapes: with ``openai_rule`` (CLIP4Clip / CLIP2Video build their CLIP with OpenAI's
    ``build_model``, heads = width / 64) a ``backbone_config`` by that rule; without it (STAN's HF
    CLIPs record their heads in a config the checkpoint lacks) a ``WeightsError`` asking for
    --clip-config: their head counts cannot be known from the tensors."""
    name = match_backbone(clip_sd, source)
    if name is None and openai_rule:
        return {"backbone": None, "backbone_config": config_from_state_dict(clip_sd, source)}
    if name is None:
        v, t = (config_from_state_dict(clip_sd, source)[k] for k in ("vision_cfg", "text_cfg"))
        raise WeightsError(
            f"{source}: its CLIP (vision {v['layers']}x{v['width']}, text {t['layers']}x{t['width']}) is none of the "
            "released OpenAI ones (ViT-B/32, B/16, L/14, L/14-336), so its attention head counts cannot be "
            "known from the tensors: give --clip-config with the HuggingFace CLIPModel config it was trained from"
        )
    return {"backbone": name}


def match_backbone(clip_sd: dict, source: str):
    """The released OpenAI CLIP (``RELEASED_OPENAI``) or mugstan config whose architecture (with
    QuickGELU) fits these CLIP tensors, or None."""
    import open_clip

    from mugstan.backbones import register_configs

    register_configs()
    want = config_from_state_dict(clip_sd, source)
    for name in [*RELEASED_OPENAI, *(m for m in open_clip.list_models() if m.startswith("mugstan-"))]:
        cfg = open_clip.get_model_config(name) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if not cfg.get("quick_gelu") or "multimodal_cfg" in cfg:
            continue
        if (
            cfg.get("embed_dim"),
            v.get("width"),
            v.get("layers"),
            v.get("patch_size"),
            v.get("image_size"),
            t.get("width"),
            t.get("layers"),
        ) == (
            want["embed_dim"],
            want["vision_cfg"]["width"],
            want["vision_cfg"]["layers"],
            want["vision_cfg"]["patch_size"],
            want["vision_cfg"]["image_size"],
            want["text_cfg"]["width"],
            want["text_cfg"]["layers"],
        ):
            return name
    return None


def _load(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    sd, _ = _read_tensors(path)
    return {k.removeprefix("module."): v.float() for k, v in sd.items()}


def _finish(model_sd: dict, cfg: dict, log_scale: torch.Tensor) -> tuple[dict, dict]:
    model_sd["backbone.clip.logit_scale"] = log_scale.reshape(())
    model_sd["logit_scale.log_scale"] = log_scale.reshape(()).clone()
    return model_sd, cfg


# ---- STAN / Mug-STAN ------------------------------------------------------------------------
def convert_stan(
    path: Union[str, Path], temperature: float = 0.01, clip_config: Union[str, Path, None] = None
) -> tuple[dict, dict]:
    """STAN / Mug-STAN mmengine checkpoint -> (mugstan state dict, model config fields).

    Both released temporal modules convert: self-attention (``STAN_T_layers.k.{layer_norm1,
    self_attn.*, temporal_fc}``) and the first release's 3D convolution (``STAN_T_layers.k.{layers,
    temporal_fc}``). clip_config: the HuggingFace ``CLIPModel`` config (folder or config.json) the
    checkpoint was trained from; it fixes the head counts, which tensor shapes cannot tell (without
    it the shapes must be those of a released OpenAI CLIP, whose heads have width 64, or of a
    mugstan config; anything else is a ``WeightsError`` asking for it).
    """
    src = _load(path)
    source = str(path)
    if "backbone.class_embedding" not in src or "backbone.layers.0.self_attn.q_proj.weight" not in src:
        raise WeightsError(f"{path}: not a STAN checkpoint (no backbone.class_embedding / backbone.layers.0.*)")
    if not any(k.startswith("text_backbone.") for k in src):
        raise WeightsError(f"{path}: no text tower (text_backbone.*) in the checkpoint")
    conv = "backbone.STAN_T_layers.0.layers.weight" in src  # the first release's Conv3d temporal module
    depth = len({k.split(".")[2] for k in src if k.startswith("backbone.STAN_S_layers.")})
    if depth == 0:
        raise WeightsError(f"{path}: no STAN branch (backbone.STAN_S_layers.*) in the checkpoint")
    # the released vision keys are HF's, re-rooted at backbone. (blocks as layers.{i}, embeddings flat)
    embeddings = ("class_embedding", "patch_embedding.weight", "position_embedding.weight")
    vision = {}
    for k in [k for k in src if k.startswith("backbone.") and not k.startswith("backbone.STAN_")]:
        name = k[len("backbone.") :]
        name = "embeddings." + name if name in embeddings else "encoder." + name if name.startswith("layers.") else name
        vision[name] = src.pop(k)
    text = {
        k[len("text_backbone.") :].removeprefix("text_model."): src.pop(k)
        for k in [k for k in src if k.startswith("text_backbone.")]
    }
    for tower, key, where in (
        (vision, "visual_projection.weight", "backbone."),
        (text, "text_projection.weight", "text_backbone."),
    ):
        if key not in tower:
            raise WeightsError(f"{path}: missing tensor {where + key!r}")
    clip_sd = hf_to_open_clip(
        vision, text, vision.pop("visual_projection.weight"), text.pop("text_projection.weight"), source
    )
    model_sd = {f"backbone.clip.{k}": v for k, v in clip_sd.items()}
    model_sd["branch.time_embed.weight"] = src.pop("backbone.STAN_time_embed.weight")
    for k in range(depth):
        s, t = f"backbone.STAN_S_layers.{k}.", f"backbone.STAN_T_layers.{k}."
        model_sd.update(hf_block(src, s, f"branch.spatial.{k}.", "attn.in_proj_", source))
        for part in ("weight", "bias"):
            if conv:
                model_sd[f"branch.temporal.{k}.conv.{part}"] = _take(src, f"{t}layers.{part}", source)
            model_sd[f"branch.temporal.{k}.temporal_fc.{part}"] = _take(src, f"{t}temporal_fc.{part}", source)
        if not conv:
            model_sd.update(hf_block(src, t, f"branch.temporal.{k}.", "attn.in_proj.", source))
    leftover = sorted(src) + [f"backbone.{k}" for k in vision] + [f"text_backbone.{k}" for k in text]
    if leftover:
        raise WeightsError(f"{path}: unexpected tensors {leftover[:8]} for a STAN / Mug-STAN checkpoint")
    backbone = (
        {"backbone": None, "backbone_config": _clip_config(clip_config)}
        if clip_config
        else backbone_fields(clip_sd, source)
    )
    cfg = {
        **backbone,
        "branch": "stan",
        "head": "mean",
        "temperature": temperature,
        "loss_reduction": "sum",
        "stan": {
            "depth": depth,
            "time_module": "conv" if conv else "self",
            "max_frames": model_sd["branch.time_embed.weight"].shape[0],
        },
    }
    return _finish(model_sd, cfg, torch.tensor(math.log(1.0 / temperature)))


def _take(src: dict, key: str, source: str):
    if key not in src:
        raise WeightsError(f"{source}: missing tensor {key!r}")
    return src.pop(key)


def _clip_config(path: Union[str, Path]) -> dict:
    """The open_clip config of a HuggingFace CLIPModel config (a folder or its config.json)."""
    from mugstan.backbones.convert import hf_open_clip_config, read_hf_config

    path = Path(path)
    return hf_open_clip_config(read_hf_config(path if path.is_dir() else path.parent))


# ---- CLIP4Clip / CLIP2Video ------------------------------------------------------------------
def _block_key(key: str) -> str:
    return key.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(
        ".attn.in_proj_bias", ".attn.in_proj.bias"
    )


def convert_clip2video(path: Union[str, Path]) -> tuple[dict, dict]:
    """CLIP4Clip (meanP / seqTransf) or CLIP2Video ``pytorch_model.bin.N`` -> (state dict, config fields)."""
    src = _load(path)
    clip_sd = {k[len("clip.") :]: v for k, v in src.items() if k.startswith("clip.")}
    if not clip_sd:
        raise WeightsError(f"{path}: not a CLIP4Clip / CLIP2Video checkpoint (no clip.* tensors)")
    clip_sd = {k: v for k, v in clip_sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model_sd = {f"backbone.clip.{k}": v for k, v in clip_sd.items()}
    rest = {k: v for k, v in src.items() if not k.startswith("clip.")}
    if "type_position_embeddings.weight" in rest:
        head = "tdb_tab"
        for k, v in rest.items():
            model_sd[f"head.{_block_key(k)}"] = v
        seq_layers = len({k.split(".")[2] for k in rest if k.startswith("transformerClip.resblocks.")})
        extra = {"tab_centers": rest["weight_center"].shape[0], "seq_layers": seq_layers}
    elif "frame_position_embeddings.weight" in rest:
        head = "seqTransf"
        for k, v in rest.items():
            model_sd[f"head.{_block_key(k.replace('transformerClip.', 'transformer.'))}"] = v
        extra = {"seq_layers": len({k.split(".")[2] for k in rest if k.startswith("transformerClip.resblocks.")})}
    else:
        head, extra = "meanP", {}
        if rest:
            raise WeightsError(f"{path}: unexpected tensors {sorted(rest)[:6]} for a meanP checkpoint")
    cfg = {
        **backbone_fields(clip_sd, str(path), openai_rule=True),
        "branch": "none",
        "head": head,
        "loss_reduction": "mean",
        **extra,
    }
    return _finish(model_sd, cfg, clip_sd["logit_scale"])


def load_converted(path: Union[str, Path], overrides=()):
    """Build the mugstan model stored in a ``mugstan convert --format stan|clip2video`` output.

    overrides: ``model.*`` overrides (``model.head=mug`` scores a Mug-STAN checkpoint with Mug).
    """
    from safetensors import safe_open

    from mugstan.config import model_config
    from mugstan.models import build_model

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError or OSError for a damaged file
        raise WeightsError(
            f"{path}: cannot be read as safetensors: corrupt, truncated or empty ({type(err).__name__}); "
            "run `mugstan convert` again"
        ) from None
    if "model_config" not in meta:
        raise WeightsError(
            f"{path}: no model_config in the metadata (was it written by `mugstan convert --format stan|clip2video`?)"
        )
    cfg = model_config(json.loads(meta["model_config"]), overrides, source=f"{path} (model_config)")
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model
