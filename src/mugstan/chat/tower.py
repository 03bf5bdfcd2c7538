"""A LLaVA checkpoint's CLIP vision tower as a mugstan ``CLIPBackbone``, cut at the projector's layer.

LLaVA feeds its projector the patch tokens of one vision layer (``vision_feature_layer``, -2 in
LLaVA-1.5: the output of the second-to-last block, before any LayerNorm, class token dropped by the
"default" strategy). mugstan's backbone is built from the HuggingFace ``CLIPVisionModel`` tensors
of the blocks up to that layer and no further, so

    backbone.encode_frames(frames).last[:, 1:]  ==  LLaVA's selected image features   [N, P, D]

and a STAN branch built on it (``models.build_branch``) reads the last K blocks *of that tower*:
its patch tokens are at the depth the projector was trained on. The tensors are mapped with the
one HF block map of mugstan (``backbones.convert.hf_block``). The tower has no joint embedding
space, so ``visual.proj`` is the identity (E = D) and the open_clip text tower is a one-block
placeholder that nothing reads; both are left out of chat checkpoints.
"""

from __future__ import annotations

import torch

from mugstan.backbones.clip import CLIPBackbone
from mugstan.backbones.convert import WeightsError, hf_block
from mugstan.config import ConfigError

# The open_clip CLIP needs a text tower; the chat model never uses it.
_PLACEHOLDER_TEXT = {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}


def tower_layers(num_layers: int, feature_layer: int) -> int:
    """Blocks kept so that the last one's output is ``hidden_states[feature_layer]`` of HF CLIP.

    HF's hidden_states[0] is the stem output and hidden_states[i] the output of block i - 1, so
    layer -2 of a 24-block tower keeps 23 blocks and layer -1 keeps all 24.
    """
    keep = feature_layer + 1 + num_layers if feature_layer < 0 else feature_layer
    if not 1 <= keep <= num_layers:
        raise ConfigError(f"model.chat.feature_layer={feature_layer} is outside the {num_layers}-block vision tower "
                         f"(use -1 .. -{num_layers} or 1 .. {num_layers})")
    return keep


def backbone_from_hf_tower(vision_model: torch.nn.Module, feature_layer: int, source: str) -> CLIPBackbone:
    """A HF ``CLIPVisionModel`` (LLaVA's ``model.vision_tower``) -> ``CLIPBackbone`` whose last block is
    ``feature_layer``'s (see ``tower_layers``). Strict: every kept tensor must be present."""
    import open_clip

    cfg = vision_model.config
    if getattr(cfg, "model_type", "") != "clip_vision_model":
        raise WeightsError(
            f"{source}: the vision tower is {getattr(cfg, 'model_type', type(vision_model).__name__)!r}; "
            "mugstan's branch needs a CLIP ViT tower (clip_vision_model), as in LLaVA-1.5"
        )
    if cfg.hidden_act not in ("quick_gelu", "gelu"):
        raise WeightsError(
            f"{source}: vision_config.hidden_act={cfg.hidden_act!r}; mugstan supports quick_gelu and gelu"
        )
    if abs(cfg.layer_norm_eps - 1e-5) > 1e-12:
        raise WeightsError(f"{source}: vision_config.layer_norm_eps={cfg.layer_norm_eps}; open_clip's CLIP uses 1e-5")
    keep = tower_layers(cfg.num_hidden_layers, feature_layer)
    width = cfg.hidden_size
    config = {
        "embed_dim": width,
        "quick_gelu": cfg.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": cfg.image_size,
            "layers": keep,
            "width": width,
            "patch_size": cfg.patch_size,
            "head_width": width // cfg.num_attention_heads,
            "mlp_ratio": cfg.intermediate_size / width,
        },
        "text_cfg": dict(_PLACEHOLDER_TEXT),
    }
    clip = open_clip.CLIP(**config)
    hf = {
        k.removeprefix("vision_model."): v.detach().float()
        for k, v in vision_model.state_dict().items()
        if not k.endswith("position_ids")
    }

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise WeightsError(f"{source}: vision tower tensor {key!r} is missing")
        return hf.pop(key)

    sd = {
        "visual.class_embedding": take("embeddings.class_embedding"),
        "visual.conv1.weight": take("embeddings.patch_embedding.weight"),
        "visual.positional_embedding": take("embeddings.position_embedding.weight"),
        "visual.proj": torch.eye(width),
    }
    for part in ("weight", "bias"):
        sd[f"visual.ln_pre.{part}"] = take(f"pre_layrnorm.{part}")
        sd[f"visual.ln_post.{part}"] = take(f"post_layernorm.{part}")
    for i in range(keep):
        sd.update(hf_block(hf, f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}.", "attn.in_proj_", source))
    missing, _ = clip.load_state_dict(sd, strict=False)
    untouched = [k for k in missing if k.startswith("visual.")]
    if untouched:
        raise WeightsError(f"{source}: the vision tower does not fill {untouched[:5]} of the open_clip model")
    clip.requires_grad_(False)
    clip.eval()
    return CLIPBackbone(clip)
