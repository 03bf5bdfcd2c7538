"""Converters for the released whole-model checkpoints (methods.md §7), both directions.

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
against open_clip's QuickGELU configs). ``to_stan_state_dict`` / ``to_clip2video_state_dict``
write a mugstan model in the released layouts (used by the round-trip tests).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import torch

from mugstan.backbones.convert import WeightsError, _read_tensors, config_from_state_dict

# HF per-block names -> open_clip per-block names (q, k, v are concatenated separately)
_HF_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def _hf_block(src: dict, prefix: str, dst_prefix: str, in_proj: str) -> dict:
    """One HF-layout block (prefix ends with '.') -> open_clip-layout tensors under dst_prefix.

    in_proj: how the packed projection is named on our side ("attn.in_proj_" for
    nn.MultiheadAttention, "attn.in_proj." for mugstan's Attention).
    """
    out = {}
    for part in ("weight", "bias"):
        out[f"{dst_prefix}{in_proj}{part}"] = torch.cat([src[f"{prefix}self_attn.{p}_proj.{part}"] for p in "qkv"])
        for hf, oc in _HF_BLOCK.items():
            key = f"{prefix}{hf}.{part}"
            if key in src:
                out[f"{dst_prefix}{oc}.{part}"] = src[key]
    return out


def _to_hf_block(sd: dict, prefix: str, dst_prefix: str, in_proj: str) -> dict:
    out = {}
    for part in ("weight", "bias"):
        for name, chunk in zip("qkv", sd[f"{prefix}{in_proj}{part}"].chunk(3)):
            out[f"{dst_prefix}self_attn.{name}_proj.{part}"] = chunk
        for hf, oc in _HF_BLOCK.items():
            key = f"{prefix}{oc}.{part}"
            if key in sd:
                out[f"{dst_prefix}{hf}.{part}"] = sd[key]
    return out


def _hf_clip_to_open_clip(vision: dict, text: dict) -> dict:
    """HF CLIPVisionModel + CLIPTextModel tensors (roots stripped) -> open_clip CLIP keys."""
    sd = {
        "visual.class_embedding": vision["embeddings.class_embedding"],
        "visual.conv1.weight": vision["embeddings.patch_embedding.weight"],
        "visual.positional_embedding": vision["embeddings.position_embedding.weight"],
        "visual.proj": vision["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": text["embeddings.token_embedding.weight"],
        "positional_embedding": text["embeddings.position_embedding.weight"],
        "text_projection": text["text_projection.weight"].t().contiguous(),
    }
    for part in ("weight", "bias"):
        sd[f"visual.ln_pre.{part}"] = vision[f"pre_layrnorm.{part}"]
        sd[f"visual.ln_post.{part}"] = vision[f"post_layernorm.{part}"]
        sd[f"ln_final.{part}"] = text[f"final_layer_norm.{part}"]
    for tower, root, dst in ((vision, "layers.", "visual.transformer.resblocks."), (text, "encoder.layers.", "transformer.resblocks.")):
        for i in sorted({int(k[len(root):].split(".")[0]) for k in tower if k.startswith(root)}):
            sd.update(_hf_block(tower, f"{root}{i}.", f"{dst}{i}.", "attn.in_proj_"))
    return sd


def match_backbone(clip_sd: dict, source: str) -> str:
    """The open_clip model name whose architecture (with QuickGELU) fits these CLIP tensors."""
    import open_clip

    from mugstan.backbones.clip import _register_configs

    _register_configs()
    want = config_from_state_dict(clip_sd, source)
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if not (cfg.get("quick_gelu") and isinstance(v.get("patch_size"), int)) or v.get("timm_model_name") or t.get("hf_model_name"):
            continue
        if (cfg.get("embed_dim"), v.get("width"), v.get("layers"), v.get("patch_size"), v.get("image_size"), t.get("width"), t.get("layers")) == (
            want["embed_dim"], want["vision_cfg"]["width"], want["vision_cfg"]["layers"], want["vision_cfg"]["patch_size"],
            want["vision_cfg"]["image_size"], want["text_cfg"]["width"], want["text_cfg"]["layers"],
        ):
            return name
    raise WeightsError(f"{source}: no open_clip QuickGELU ViT config matches the CLIP tensors ({want})")


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
def convert_stan(path: Union[str, Path], temperature: float = 0.01) -> tuple[dict, dict]:
    """STAN / Mug-STAN mmengine checkpoint -> (mugstan state dict, model config fields)."""
    src = _load(path)
    vision = {k[len("backbone."):]: v for k, v in src.items() if k.startswith("backbone.") and not k.startswith("backbone.STAN_")}
    text = {k[len("text_backbone."):].removeprefix("text_model."): v for k, v in src.items() if k.startswith("text_backbone.")}
    if "class_embedding" not in vision or "layers.0.self_attn.q_proj.weight" not in vision:
        raise WeightsError(f"{path}: not a STAN checkpoint (no backbone.class_embedding / backbone.layers.0.*)")
    if not text:
        raise WeightsError(f"{path}: no text tower (text_backbone.*) in the checkpoint")
    vision = {("embeddings." + k if k in ("class_embedding", "patch_embedding.weight", "position_embedding.weight") else k): v for k, v in vision.items()}
    clip_sd = _hf_clip_to_open_clip(vision, text)
    if any(k.startswith("backbone.STAN_T_layers.") and ".conv" in k for k in src):
        raise WeightsError(f"{path}: 3D-convolution STAN_T_layers are not part of any released layout")
    depth = len({k.split(".")[2] for k in src if k.startswith("backbone.STAN_S_layers.")})
    if depth == 0:
        raise WeightsError(f"{path}: no STAN branch (backbone.STAN_S_layers.*) in the checkpoint")
    model_sd = {f"backbone.clip.{k}": v for k, v in clip_sd.items()}
    model_sd["temporal.time_embed.weight"] = src["backbone.STAN_time_embed.weight"]
    for k in range(depth):
        s, t = f"backbone.STAN_S_layers.{k}.", f"backbone.STAN_T_layers.{k}."
        model_sd.update(_hf_block(src, s, f"temporal.spatial.{k}.", "attn.in_proj_"))
        model_sd.update(_hf_block(src, t, f"temporal.temporal.{k}.", "attn.in_proj."))
        for part in ("weight", "bias"):
            model_sd[f"temporal.temporal.{k}.temporal_fc.{part}"] = src[f"{t}temporal_fc.{part}"]
    cfg = {
        "backbone": match_backbone(clip_sd, str(path)), "temporal": "stan", "head": "cosine", "temperature": temperature,
        "loss_reduction": "sum", "stan": {"depth": depth, "time_module": "self", "max_frames": src["backbone.STAN_time_embed.weight"].shape[0]},
    }
    return _finish(model_sd, cfg, torch.tensor(math.log(1.0 / temperature)))


def to_stan_state_dict(model) -> dict:
    """A mugstan STAN model's weights in the released mmengine layout."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clip = {k[len("backbone.clip."):]: v for k, v in sd.items() if k.startswith("backbone.clip.")}
    out = {
        "backbone.class_embedding": clip["visual.class_embedding"],
        "backbone.patch_embedding.weight": clip["visual.conv1.weight"],
        "backbone.position_embedding.weight": clip["visual.positional_embedding"],
        "backbone.visual_projection.weight": clip["visual.proj"].t().contiguous(),
        "text_backbone.text_model.embeddings.token_embedding.weight": clip["token_embedding.weight"],
        "text_backbone.text_model.embeddings.position_embedding.weight": clip["positional_embedding"],
        "text_backbone.text_projection.weight": clip["text_projection"].t().contiguous(),
        "backbone.STAN_time_embed.weight": sd["temporal.time_embed.weight"],
    }
    for part in ("weight", "bias"):
        out[f"backbone.pre_layrnorm.{part}"] = clip[f"visual.ln_pre.{part}"]
        out[f"backbone.post_layernorm.{part}"] = clip[f"visual.ln_post.{part}"]
        out[f"text_backbone.text_model.final_layer_norm.{part}"] = clip[f"ln_final.{part}"]
    n_vis = len({k.split(".")[3] for k in clip if k.startswith("visual.transformer.resblocks.")})
    n_txt = len({k.split(".")[2] for k in clip if k.startswith("transformer.resblocks.")})
    for i in range(n_vis):
        out.update(_to_hf_block(clip, f"visual.transformer.resblocks.{i}.", f"backbone.layers.{i}.", "attn.in_proj_"))
    for i in range(n_txt):
        out.update(_to_hf_block(clip, f"transformer.resblocks.{i}.", f"text_backbone.text_model.encoder.layers.{i}.", "attn.in_proj_"))
    for k in range(len(model.temporal.spatial)):
        out.update(_to_hf_block(sd, f"temporal.spatial.{k}.", f"backbone.STAN_S_layers.{k}.", "attn.in_proj_"))
        out.update(_to_hf_block(sd, f"temporal.temporal.{k}.", f"backbone.STAN_T_layers.{k}.", "attn.in_proj."))
        for part in ("weight", "bias"):
            out[f"backbone.STAN_T_layers.{k}.temporal_fc.{part}"] = sd[f"temporal.temporal.{k}.temporal_fc.{part}"]
    return {"state_dict": out, "meta": {"mmengine_version": "converted-by-mugstan"}}


# ---- CLIP4Clip / CLIP2Video ------------------------------------------------------------------
_C2V_MODULES = {"frame2t_attention": "frame2t_attention", "transformerClip": "transformerClip", "actionClip": "actionClip"}


def _block_key(key: str) -> str:
    return key.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(".attn.in_proj_bias", ".attn.in_proj.bias")


def convert_clip2video(path: Union[str, Path]) -> tuple[dict, dict]:
    """CLIP4Clip (meanP / seqTransf) or CLIP2Video ``pytorch_model.bin.N`` -> (state dict, config fields)."""
    src = _load(path)
    clip_sd = {k[len("clip."):]: v for k, v in src.items() if k.startswith("clip.")}
    if not clip_sd:
        raise WeightsError(f"{path}: not a CLIP4Clip / CLIP2Video checkpoint (no clip.* tensors)")
    clip_sd = {k: v for k, v in clip_sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model_sd = {f"backbone.clip.{k}": v for k, v in clip_sd.items()}
    rest = {k: v for k, v in src.items() if not k.startswith("clip.")}
    if "type_position_embeddings.weight" in rest:
        temporal = "tdb_tab"
        for k, v in rest.items():
            model_sd[f"temporal.{_block_key(k)}"] = v
        seq_layers = len({k.split(".")[2] for k in rest if k.startswith("transformerClip.resblocks.")})
        extra = {"tab_centers": rest["weight_center"].shape[0], "seq_layers": seq_layers}
    elif "frame_position_embeddings.weight" in rest:
        temporal = "seqTransf"
        for k, v in rest.items():
            model_sd[f"temporal.{_block_key(k.replace('transformerClip.', 'transformer.'))}"] = v
        extra = {"seq_layers": len({k.split(".")[2] for k in rest if k.startswith("transformerClip.resblocks.")})}
    else:
        temporal, extra = "meanP", {}
        if rest:
            raise WeightsError(f"{path}: unexpected tensors {sorted(rest)[:6]} for a meanP checkpoint")
    cfg = {"backbone": match_backbone(clip_sd, str(path)), "temporal": temporal, "head": "cosine", "loss_reduction": "mean", **extra}
    return _finish(model_sd, cfg, clip_sd["logit_scale"])


def to_clip2video_state_dict(model) -> dict:
    """A mugstan meanP / seqTransf / tdb_tab model's weights in the CLIP4Clip / CLIP2Video layout."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        if k.startswith("backbone.clip."):
            out["clip." + k[len("backbone.clip."):]] = v
        elif k.startswith("temporal."):
            key = k[len("temporal."):].replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(".attn.in_proj.bias", ".attn.in_proj_bias")
            out[key.replace("transformer.resblocks", "transformerClip.resblocks") if key.startswith("transformer.") else key] = v
    out["clip.logit_scale"] = model.logit_scale.log_scale.detach().clone()  # the scale the model scores with
    return out


def load_converted(path: Union[str, Path]):
    """Build the mugstan model stored in a ``mugstan convert --format stan|clip2video`` output."""
    from safetensors import safe_open

    from mugstan.config import ModelConfig, STANConfig
    from mugstan.models import build_model

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "model_config" not in meta:
        raise WeightsError(f"{path}: no model_config in the metadata (was it written by `mugstan convert --format stan|clip2video`?)")
    fields = json.loads(meta["model_config"])
    fields["stan"] = STANConfig(**fields.get("stan", {}))
    model = build_model(ModelConfig(**fields))
    model.load_state_dict(state, strict=True)
    return model
