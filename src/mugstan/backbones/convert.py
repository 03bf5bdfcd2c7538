"""Load CLIP weights from OpenAI, HuggingFace and open_clip files.

Every loader returns a ``ClipWeights``: a state dict with the keys of ``open_clip.CLIP.state_dict()``
and the open_clip model config that fits it, so ``open_clip.CLIP(**w.config)`` followed by
``w.load_into(model)`` rebuilds the model with nothing left at random initialisation.

Sources (methods.md section 7):

- ``openai``: an OpenAI CLIP ``.pt``, either a TorchScript archive or a plain state dict. The
  key layout is open_clip's; ``input_resolution``, ``context_length`` and ``vocab_size`` are
  dropped, and the architecture is inferred from the tensor shapes (heads = width / 64: OpenAI's
  ``build_model`` rule, which fixes the head counts of every OpenAI file).
- ``hf``: a HuggingFace ``CLIPModel`` directory (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``). q, k and v projections are concatenated into ``in_proj``; the Linear
  projections are transposed. ``transformers`` is not needed to read it.
- ``open_clip``: a ``.safetensors`` or ``.pt`` in open_clip's layout, e.g. what ``mugstan
  convert`` writes (its architecture is stored in the safetensors metadata). CoCa checkpoints
  (``visual.attn_pool.*``, ``text.*``, ``text_decoder.*``) are recognised by their keys; their
  config (with ``multimodal_cfg``) is read from the metadata, and ``build_clip`` then returns a
  ``CoCaBackbone``.

Tensor shapes fix every size of an architecture but not its attention head counts. A file that
records no architecture (no metadata, not OpenAI's) gets the head counts of the named
architecture (open_clip's configs and mugstan's own) whose sizes its shapes have; when there is
none, or named ones disagree, ``ClipWeights.config`` is None and ``unknown`` says why: such a file
loads only into a named backbone (``model.backbone``) or ``model.backbone_config``, never into a
guessed one.

``mugstan convert`` (``mugstan.convert``) writes them as open_clip-layout safetensors; the released
whole-model checkpoints are ``mugstan.released``'s.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from mugstan.errors import UserError, one_line
from mugstan.files import atomic_file

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
FORMATS = ("auto", "openai", "hf", "open_clip")


class WeightsError(UserError, ValueError):
    """A weights file that cannot be loaded; the message names the file and the problem."""


@dataclass
class ClipWeights:
    """CLIP weights in open_clip layout.

    state_dict: {open_clip key: tensor}
    config: open_clip model config ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}), or None
        when the file does not record its architecture and its shapes are no named one's
    source: the file or folder it came from; format: "openai" | "hf" | "open_clip"
    """

    state_dict: dict[str, torch.Tensor]
    config: Optional[dict]  # None: the head counts cannot be known (``unknown`` says why)
    source: str
    format: str
    unknown: str = ""

    def load_into(self, clip: torch.nn.Module) -> None:
        """Strictly load into an ``open_clip.CLIP``; every tensor must exist and match in shape."""
        own = clip.state_dict()
        missing = sorted(set(own) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(own))
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in self.state_dict.items()
            if k in own and v.shape != own[k].shape
        ]
        if missing or unexpected or mismatched:
            lines = [f"weights in {self.source} ({self.format}) do not fit the model:"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
                if items:
                    shown = ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
                    lines.append(f"  {title}: {shown}")
            lines.append("  Check that the backbone name matches the checkpoint, or set backbone to null to infer it.")
            raise WeightsError("\n".join(lines))
        clip.load_state_dict(self.state_dict, strict=True)


# ---- architecture from shapes ------------------------------------------------------------
def is_coca(sd: dict[str, torch.Tensor]) -> bool:
    """An open_clip CoCa state dict (a caption decoder and CoCa's text tower)."""
    return "text_decoder.ln_final.weight" in sd and "text.cls_emb" in sd


def _count(sd: dict, root: str) -> int:
    return len({k[len(root):].split(".")[0] for k in sd if k.startswith(root)})


def coca_config_from_state_dict(sd: dict[str, torch.Tensor], source: str) -> dict:
    """Infer the open_clip config of a CoCa from its open_clip-layout tensors.

    Shapes fix every size; head counts do not: here heads are width / 64 (as in coca_ViT-B-32 and
    coca_ViT-L-14) and the attentional pooler has 8 heads (both released models). Loaders use it
    only through ``named_heads``, which takes the head counts of the named architecture of these
    sizes. CoCa uses GELU (quick_gelu false).
    """
    try:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        queries, embed_dim = sd["visual.attn_pool.query"].shape
        t_width = sd["text.ln_final.weight"].shape[0]
        m_width = sd["text_decoder.ln_final.weight"].shape[0]
        vocab_size = sd["text.token_embedding.weight"].shape[0]
        context_length = sd["text.positional_embedding"].shape[0] - 1  # the appended CLS has a position too
        v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        t_mlp = sd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        m_mlp = sd["text_decoder.resblocks.0.mlp.c_fc.weight"].shape[0]
        decoder_vocab = sd["text_decoder.text_projection"].shape[1]
    except KeyError as err:
        raise WeightsError(f"{source}: not an open_clip CoCa state dict (no {err.args[0]!r})") from None
    if sd["visual.proj"].shape != (embed_dim, embed_dim) or sd["text.text_projection"].shape != (t_width, embed_dim):
        raise WeightsError(f"{source}: visual.proj {tuple(sd['visual.proj'].shape)} / text.text_projection "
                           f"{tuple(sd['text.text_projection'].shape)} do not fit a CoCa of joint width {embed_dim}")
    return {
        "embed_dim": embed_dim,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": grid * patch,
            "layers": _count(sd, "visual.transformer.resblocks."),
            "width": width,
            "head_width": min(64, width),
            "patch_size": patch,
            "mlp_ratio": v_mlp / width,
            "attentional_pool": True,
            "attn_pooler_queries": queries,
            "attn_pooler_heads": 8,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": t_width,
            "heads": max(t_width // 64, 1),
            "layers": _count(sd, "text.transformer.resblocks."),
            "mlp_ratio": t_mlp / t_width,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": context_length,
            "vocab_size": decoder_vocab,
            "width": m_width,
            "heads": max(m_width // 64, 1),
            "layers": _count(sd, "text_decoder.resblocks."),
            "mlp_ratio": m_mlp / m_width,
        },
    }


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str, quick_gelu: bool = True) -> dict:
    """Infer the open_clip config of a CLIP ViT (or a CoCa) from its open_clip/OpenAI-layout tensors."""
    if is_coca(sd):
        return coca_config_from_state_dict(sd, source)
    try:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        v_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        t_width = sd["ln_final.weight"].shape[0]
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        embed_dim = sd["text_projection"].shape[1]
        context_length, vocab_size = sd["positional_embedding"].shape[0], sd["token_embedding.weight"].shape[0]
    except KeyError as err:
        raise WeightsError(
            f"{source}: not a CLIP ViT state dict in OpenAI/open_clip layout (no {err.args[0]!r}); "
            "ResNet CLIPs are not supported, and HuggingFace folders need --format hf"
        ) from None
    if sd["visual.proj"].shape != (width, embed_dim):
        raise WeightsError(f"{source}: visual.proj is {tuple(sd['visual.proj'].shape)}, expected {(width, embed_dim)}")
    return {
        "embed_dim": embed_dim,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": grid * patch,
            "layers": v_layers,
            "width": width,
            "head_width": min(64, width),
            "patch_size": patch,
            "mlp_ratio": v_mlp / width,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": t_width,
            "heads": max(t_width // 64, 1),
            "layers": t_layers,
            "mlp_ratio": t_mlp / t_width,
        },
    }


HEAD_FIELDS = {
    "vision_cfg": ("head_width", "attn_pooler_heads"),
    "text_cfg": ("heads",),
    "multimodal_cfg": ("heads", "attn_pooler_heads"),
}


def _towers(config: dict) -> dict:
    """An open_clip config's towers as open_clip's config dataclasses (its defaults filled in)."""
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    classes = {"vision_cfg": CLIPVisionCfg, "text_cfg": CLIPTextCfg, "multimodal_cfg": MultimodalCfg}
    return {
        tower: cls(**{k: v for k, v in config.get(tower, {}).items() if k in cls.__dataclass_fields__})
        for tower, cls in classes.items()
        if tower in config or tower != "multimodal_cfg"
    }


def _sizes(config: dict) -> tuple:
    """Every size of an open_clip config that tensor shapes fix."""
    towers = _towers(config)
    v = towers["vision_cfg"]
    image = v.image_size if isinstance(v.image_size, int) else tuple(v.image_size)
    vision = (
        v.layers,
        v.width,
        round(v.mlp_ratio, 4),
        v.patch_size,
        image,
        v.attentional_pool,
        v.attn_pooler_queries if v.attentional_pool else None,
    )
    text = [
        (t.context_length, t.vocab_size, t.width, t.layers, round(t.mlp_ratio, 4))
        for name, t in towers.items()
        if name != "vision_cfg"
    ]
    return (config.get("embed_dim"), vision, *text)


def named_heads(config: dict) -> Optional[dict]:
    """``config`` (sizes inferred from shapes) with the head counts of the named architectures
    (open_clip's configs, mugstan's own) that have exactly these sizes; None when there is no such
    architecture or two of them disagree on the head counts."""
    import open_clip

    from mugstan.backbones import register_configs

    register_configs()
    want, found = _sizes(config), set()
    for name in open_clip.list_models():
        named = open_clip.get_model_config(name) or {}
        if named.get("vision_cfg", {}).get("timm_model_name") or named.get("text_cfg", {}).get("hf_model_name"):
            continue
        if ("multimodal_cfg" in named) != ("multimodal_cfg" in config) or _sizes(named) != want:
            continue
        towers = _towers(named)
        found.add(
            tuple(
                (tower, f, getattr(towers[tower], f))
                for tower, fields in HEAD_FIELDS.items()
                if tower in towers
                for f in fields
            )
        )
    if len(found) != 1:
        return None
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for tower, field, value in found.pop():
        out[tower][field] = value
    return out


def unknown_heads(source: str) -> str:
    return (
        f"{source} records no architecture and its tensor shapes are those of no named backbone, so its attention "
        "head counts cannot be known"
    )


# ---- loaders -------------------------------------------------------------------------------
def _torch_load(path: Path) -> dict:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                is_script = any(name.endswith("constants.pkl") for name in archive.namelist())
            if is_script:
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as err:  # corrupt or foreign file; torch's own message advises unpickling, which would run code from it
        raise WeightsError(
            f"{path}: cannot be read as a PyTorch checkpoint of tensors: corrupt, truncated, or not a weights "
            f"file ({type(err).__name__}); name an OpenAI .pt, a HuggingFace CLIPModel folder or a .safetensors file "
            "(docs/weights.md)"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and (safetensors) metadata of a .safetensors / .pt / .bin file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as err:
            raise WeightsError(
                f"{path}: cannot be read as safetensors: corrupt, truncated or empty ({type(err).__name__}: "
                f"{one_line(err)}); convert or download it again"
            ) from None
    return _torch_load(path), {}


def load_openai(path: Union[str, Path]) -> ClipWeights:
    """An OpenAI CLIP ``.pt`` (or any open_clip-layout ``.pt`` / ``.bin``, such as open_clip's CoCa
    checkpoints ``open_clip_pytorch_model.bin``), its architecture inferred from the shapes."""
    path = Path(path)
    sd = {k: v for k, v in _torch_load(path).items() if k not in OPENAI_EXTRA_KEYS}
    sd = {k: v.float() for k, v in sd.items()}  # released OpenAI weights are fp16
    if not is_coca(sd):  # OpenAI's layout: OpenAI's head rule holds
        return ClipWeights(sd, config_from_state_dict(sd, str(path)), str(path), "openai")
    config = named_heads(config_from_state_dict(sd, str(path)))  # open_clip's CoCa .bin: no rule of its own
    return ClipWeights(sd, config, str(path), "open_clip", "" if config else unknown_heads(str(path)))


def load_open_clip(path: Union[str, Path]) -> ClipWeights:
    """An open_clip-layout file: the architecture from its metadata, else that of the named one of
    its shapes (``named_heads``), else unknown (``config`` None)."""
    path = Path(path)
    sd, meta = _read_tensors(path)
    config = json.loads(meta["config"]) if "config" in meta else named_heads(config_from_state_dict(sd, str(path)))
    return ClipWeights(
        {k: v.float() for k, v in sd.items()},
        config,
        str(path),
        "open_clip",
        "" if config else unknown_heads(str(path)),
    )


# transformers' CLIPVisionConfig / CLIPTextConfig / CLIPConfig defaults: a config.json written by
# transformers holds only the keys that differ from them (tests compare with transformers itself).
HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
HF_PROJECTION_DIM = 512


def read_hf_config(folder: Path) -> dict:
    """config.json of a CLIPModel folder with transformers' defaults filled in."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{folder}: a HuggingFace CLIPModel folder needs config.json (not found)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{cfg_path}: invalid JSON ({err})") from None
    if not isinstance(cfg, dict) or "vision_config" not in cfg or "text_config" not in cfg:
        raise WeightsError(f"{cfg_path}: not a CLIPModel config (needs vision_config and text_config)")
    return {
        **cfg,
        "projection_dim": cfg.get("projection_dim", HF_PROJECTION_DIM),
        "vision_config": {**HF_VISION_DEFAULTS, **cfg["vision_config"]},
        "text_config": {**HF_TEXT_DEFAULTS, **cfg["text_config"]},
    }


def hf_open_clip_config(cfg: dict) -> dict:
    """A CLIPModel config (defaults filled by ``read_hf_config``) -> the open_clip model config."""
    v, t = cfg["vision_config"], cfg["text_config"]
    return {
        "embed_dim": cfg["projection_dim"],
        "quick_gelu": v["hidden_act"] == "quick_gelu",
        "vision_cfg": {
            "image_size": v["image_size"],
            "layers": v["num_hidden_layers"],
            "width": v["hidden_size"],
            "head_width": v["hidden_size"] // v["num_attention_heads"],
            "patch_size": v["patch_size"],
            "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
        },
        "text_cfg": {
            "context_length": t["max_position_embeddings"],
            "vocab_size": t["vocab_size"],
            "width": t["hidden_size"],
            "heads": t["num_attention_heads"],
            "layers": t["num_hidden_layers"],
            "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
        },
    }


# HF per-block names -> open_clip per-block names (q, k, v are concatenated into in_proj)
HF_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def hf_block(src: dict, prefix: str, dst_prefix: str, in_proj: str, source: str) -> dict:
    """One HF-layout block (``prefix`` ends with '.') -> open_clip-layout tensors under ``dst_prefix``.

    Pops the tensors it uses from ``src``; a missing one is a ``WeightsError`` naming ``source``.
    in_proj: the packed projection's name on our side ("attn.in_proj_" for nn.MultiheadAttention,
    "attn.in_proj." for mugstan's Attention). Blocks without an MLP (STAN's temporal ones) have
    no mlp / layer_norm2 tensors: those names are taken only when present.
    """

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise WeightsError(f"{source}: missing tensor {key!r}")
        return src.pop(key)

    out = {}
    for part in ("weight", "bias"):
        out[f"{dst_prefix}{in_proj}{part}"] = torch.cat([take(f"{prefix}self_attn.{p}_proj.{part}") for p in "qkv"])
        for hf, oc in HF_BLOCK.items():
            key = f"{prefix}{hf}.{part}"
            if key in src or hf in ("layer_norm1", "self_attn.out_proj"):
                out[f"{dst_prefix}{oc}.{part}"] = take(key)
    return out


def _layers(tower: dict, root: str) -> list[int]:
    return sorted({int(k[len(root) :].split(".")[0]) for k in tower if k.startswith(root)})


def hf_to_open_clip(
    vision: dict, text: dict, visual_projection: torch.Tensor, text_projection: torch.Tensor, source: str
) -> dict:
    """HF ``CLIPVisionModel`` / ``CLIPTextModel`` tensors (keys relative to ``vision_model.`` and
    ``text_model.``) and the two projection Linears' weights -> open_clip CLIP keys (no logit scale).

    The one HF key map of mugstan (OpenAI-layout CLIPModel folders and the released STAN /
    Mug-STAN checkpoints). Strict: pops what it uses, a missing tensor is a ``WeightsError``
    naming ``source``; what is left in ``vision`` / ``text`` is the caller's to report.
    """

    def take(tower: dict, key: str) -> torch.Tensor:
        if key not in tower:
            raise WeightsError(f"{source}: missing tensor {key!r}")
        return tower.pop(key)

    sd = {
        "visual.class_embedding": take(vision, "embeddings.class_embedding"),
        "visual.conv1.weight": take(vision, "embeddings.patch_embedding.weight"),
        "visual.positional_embedding": take(vision, "embeddings.position_embedding.weight"),
        "visual.proj": visual_projection.t().contiguous(),
        "token_embedding.weight": take(text, "embeddings.token_embedding.weight"),
        "positional_embedding": take(text, "embeddings.position_embedding.weight"),
        "text_projection": text_projection.t().contiguous(),
    }
    for part in ("weight", "bias"):
        sd[f"visual.ln_pre.{part}"] = take(vision, f"pre_layrnorm.{part}")
        sd[f"visual.ln_post.{part}"] = take(vision, f"post_layernorm.{part}")
        sd[f"ln_final.{part}"] = take(text, f"final_layer_norm.{part}")
    for tower, dst in ((vision, "visual.transformer.resblocks."), (text, "transformer.resblocks.")):
        for i in _layers(tower, "encoder.layers."):
            sd.update(hf_block(tower, f"encoder.layers.{i}.", f"{dst}{i}.", "attn.in_proj_", source))
    return sd


def load_hf(folder: Union[str, Path]) -> ClipWeights:
    folder = Path(folder)
    cfg = read_hf_config(folder)
    v, t = cfg["vision_config"], cfg["text_config"]
    for name, sub in (("vision_config", v), ("text_config", t)):
        eps = sub["layer_norm_eps"]
        if abs(eps - 1e-5) > 1e-12:
            raise WeightsError(f"{folder / 'config.json'}: {name}.layer_norm_eps={eps}; open_clip CLIP uses 1e-5")
    acts = {v["hidden_act"], t["hidden_act"]}
    if len(acts) != 1 or acts - {"quick_gelu", "gelu"}:
        raise WeightsError(
            f"{folder / 'config.json'}: unsupported hidden_act {sorted(acts)} (need quick_gelu or gelu on both towers)"
        )
    files = [folder / "model.safetensors", folder / "pytorch_model.bin"]
    weights_file = next((f for f in files if f.is_file()), None)
    if weights_file is None:
        raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")
    hf, _ = _read_tensors(weights_file)
    hf = {k: v.float() for k, v in hf.items() if not k.endswith("position_ids")}
    vision = {k[len("vision_model.") :]: hf.pop(k) for k in list(hf) if k.startswith("vision_model.")}
    text = {k[len("text_model.") :]: hf.pop(k) for k in list(hf) if k.startswith("text_model.")}
    for key in ("visual_projection.weight", "text_projection.weight", "logit_scale"):
        if key not in hf:
            raise WeightsError(f"{weights_file}: missing tensor {key!r} (is this a CLIPModel?)")
    sd = hf_to_open_clip(
        vision, text, hf.pop("visual_projection.weight"), hf.pop("text_projection.weight"), str(weights_file)
    )
    sd["logit_scale"] = hf.pop("logit_scale")
    leftover = sorted(hf) + [f"vision_model.{k}" for k in vision] + [f"text_model.{k}" for k in text]
    if leftover:
        raise WeightsError(f"{weights_file}: unexpected tensors {leftover[:8]} (is this a plain CLIPModel?)")

    config = hf_open_clip_config(cfg)
    return ClipWeights(sd, config, str(folder), "hf")


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    if path.suffix == ".safetensors":
        return "open_clip"
    return "openai"


def load_clip_weights(path: Union[str, Path], format: str = "auto") -> ClipWeights:
    """Read CLIP weights from ``path`` in ``format`` (``auto`` detects it). See the module docstring."""
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise WeightsError(f"unknown weights format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or directory")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "hf":
        if not path.is_dir():
            raise WeightsError(f"{path}: --format hf expects a CLIPModel folder (config.json + weights)")
        return load_hf(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a directory; only HuggingFace CLIPModel folders are directories (--format hf)")
    return load_openai(path) if fmt == "openai" else load_open_clip(path)


# ---- writing -----------------------------------------------------------------------------
def save_safetensors(
    state_dict: dict[str, torch.Tensor], out: Union[str, Path], metadata: Optional[dict] = None
) -> None:
    """Write tensors atomically (``mugstan.files.atomic_file``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
