"""Released checkpoints written in their authors' key names (methods.md §7), not by mugstan: the
module names come from the libraries the authors built on (transformers' ``CLIPModel`` and
``CLIPEncoderLayer`` for STAN, open_clip's OpenAI layout for CLIP4Clip / CLIP2Video) and from
the reference code's own attribute names. Every tensor is random, so a swapped or dropped key
shows. A naming mistake in mugstan's converters cannot be repeated here."""

import torch
import torch.nn as nn


def stan_reference_layout(
    time_module: str = "self", depth: int = 4, seed: int = 4, width: int = 64, heads: int = 2
) -> dict:
    """A STAN / Mug-STAN mmengine checkpoint ``{"meta", "state_dict"}`` for mugstan-tiny's CLIP
    (vision: 4 layers, width 64, 2 heads, 32 px, patch 8; text: 2 layers, width 64, 2 heads;
    projection 64; ``width`` / ``heads`` give another shape), as the authors'
    ``VITCLIPPretrained_STAN`` + ``CLIPTextPretrained`` hold it:
    the HF vision modules re-rooted at ``backbone.``, ``backbone.STAN_S_layers.k`` (a
    ``CLIPEncoderLayer``), ``backbone.STAN_T_layers.k`` (``layer_norm1``, ``self_attn``
    (``CLIPAttention``), ``temporal_fc``; or, time_module "conv", the first release's Conv3d
    ``layers`` and ``temporal_fc``), ``backbone.STAN_time_embed`` (Embedding(64, D)), and
    ``text_backbone.text_model`` / ``text_backbone.text_projection``."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    torch.manual_seed(seed)
    common = {
        "hidden_size": width,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "hidden_act": "quick_gelu",
    }
    cfg = CLIPConfig(
        text_config={**common, "num_hidden_layers": 2, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**common, "num_hidden_layers": 4, "image_size": 32, "patch_size": 8},
        projection_dim=width,
    )
    clip = CLIPModel(cfg)
    vision = cfg.vision_config
    embeddings = clip.vision_model.embeddings
    backbone = {
        "class_embedding": embeddings.class_embedding,
        "patch_embedding": embeddings.patch_embedding,
        "position_embedding": embeddings.position_embedding,
        "pre_layrnorm": clip.vision_model.pre_layrnorm,
        "post_layernorm": clip.vision_model.post_layernorm,
        "layers": clip.vision_model.encoder.layers,
        "visual_projection": clip.visual_projection,
        "STAN_S_layers": nn.ModuleList([CLIPEncoderLayer(vision) for _ in range(depth)]),
        "STAN_time_embed": nn.Embedding(64, width),
    }
    if time_module == "self":
        backbone["STAN_T_layers"] = nn.ModuleList(
            [
                nn.ModuleDict(
                    {
                        "layer_norm1": nn.LayerNorm(width),
                        "self_attn": CLIPAttention(vision),
                        "temporal_fc": nn.Linear(width, width),
                    }
                )
                for _ in range(depth)
            ]
        )
    else:
        backbone["STAN_T_layers"] = nn.ModuleList(
            [
                nn.ModuleDict({"layers": nn.Conv3d(width, width, 3, padding=1), "temporal_fc": nn.Linear(width, width)})
                for _ in range(depth)
            ]
        )
    backbone = nn.ModuleDict({k: v for k, v in backbone.items() if isinstance(v, nn.Module)})
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["backbone.class_embedding"] = (
        embeddings.class_embedding.detach()
    )  # a bare nn.Parameter on the authors' module
    state.update({f"text_backbone.text_model.{k}": v for k, v in clip.text_model.state_dict().items()})
    state["text_backbone.text_projection.weight"] = clip.text_projection.weight
    state = {k: v.detach().clone() for k, v in state.items() if "position_ids" not in k}  # buffers, not weights
    for v in state.values():  # every tensor perturbed, norms and zero-initialised ones included
        v.add_(torch.randn_like(v) * 0.05)
    return {"meta": {"mmengine_version": "0.8.4"}, "state_dict": state}


def clip2video_reference_layout(centers: int = 5, seq_layers: int = 4, head: str = "tdb_tab") -> dict:
    """A CLIP4Clip / CLIP2Video ``pytorch_model.bin.N`` state dict written from the reference's
    module names (CLIP2Video ``modules/modeling.py``, CLIP4Clip ``modules/modeling.py``, methods.md
    §7): OpenAI CLIP under ``clip.``; for seqTransf and tdb_tab ``frame_position_embeddings`` and
    ``transformerClip``; for tdb_tab the TDB / TAB modules. Every tensor random."""
    import open_clip

    torch.manual_seed(5)
    arch = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 4},
    }
    sd = {
        f"clip.{k}": v.normal_(0, 0.05) for k, v in open_clip.CLIP(**arch).state_dict().items()
    }  # OpenAI's key layout
    sd["clip.logit_scale"] = torch.tensor(4.6052)
    if head == "meanP":
        return sd
    e = 32

    def block(prefix: str) -> None:  # the reference's ResidualAttentionBlock (nn.MultiheadAttention inside)
        shapes = {
            "attn.in_proj_weight": (3 * e, e),
            "attn.in_proj_bias": (3 * e,),
            "attn.out_proj.weight": (e, e),
            "attn.out_proj.bias": (e,),
            "ln_1.weight": (e,),
            "ln_1.bias": (e,),
            "mlp.c_fc.weight": (4 * e, e),
            "mlp.c_fc.bias": (4 * e,),
            "mlp.c_proj.weight": (e, 4 * e),
            "mlp.c_proj.bias": (e,),
            "ln_2.weight": (e,),
            "ln_2.bias": (e,),
        }
        sd.update({f"{prefix}.{name}": torch.randn(shape) * 0.05 for name, shape in shapes.items()})

    sd["frame_position_embeddings.weight"] = torch.randn(77, e)
    for i in range(seq_layers):
        block(f"transformerClip.resblocks.{i}")
    for i in range(seq_layers):  # LayerNorms near 1, so that a swapped weight / bias shows
        sd[f"transformerClip.resblocks.{i}.ln_1.weight"] += 1
        sd[f"transformerClip.resblocks.{i}.ln_2.weight"] += 1
    if head == "seqTransf":
        return sd
    sd["type_position_embeddings.weight"] = torch.randn(2, e)
    block("frame2t_attention.resblocks.0")
    sd["trans_layernorm.weight"], sd["trans_layernorm.bias"] = torch.rand(e) + 0.5, torch.randn(e) * 0.1
    sd["weight_center"], sd["emb_center"] = torch.randn(centers, e) * 0.125, torch.randn(centers, e) * 0.125
    block("actionClip.resblocks.0")
    return sd
