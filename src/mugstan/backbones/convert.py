"""Load CLIP weights from OpenAI, HuggingFace and open_clip files, and ``mugstan convert``.

Every loader returns a ``ClipWeights``: a state dict with the keys of ``open_clip.CLIP.state_dict()``
and the open_clip model config that fits it, so ``open_clip.CLIP(**w.config)`` followed by
``w.load_into(model)`` rebuilds the model with nothing left at random initialisation.

Sources (methods.md section 7):

- ``openai``: an OpenAI CLIP ``.pt``, either a TorchScript archive or a plain state dict. The
  key layout is open_clip's; ``input_resolution``, ``context_length`` and ``vocab_size`` are
  dropped, and the architecture is inferred from the tensor shapes (heads = width / 64, as in
  OpenAI's ``build_model``).
- ``hf``: a HuggingFace ``CLIPModel`` directory (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``). q, k and v projections are concatenated into ``in_proj``; the Linear
  projections are transposed. ``transformers`` is not needed to read it.
- ``open_clip``: a ``.safetensors`` or ``.pt`` in open_clip's layout, e.g. what ``mugstan
  convert`` writes (its architecture is stored in the safetensors metadata).

``mugstan convert SRC OUT.safetensors --format stan|clip2video`` converts the released STAN /
Mug-STAN and CLIP4Clip / CLIP2Video whole-model checkpoints (see ``mugstan.backbones.released``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
FORMATS = ("auto", "openai", "hf", "open_clip")


class WeightsError(ValueError):
    """A weights file that cannot be loaded; the message names the file and the problem."""


@dataclass
class ClipWeights:
    """CLIP weights in open_clip layout.

    state_dict: {open_clip key: tensor}
    config: open_clip model config ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})
    source: the file or folder it came from; format: "openai" | "hf" | "open_clip"
    """

    state_dict: dict[str, torch.Tensor]
    config: dict
    source: str
    format: str

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
def config_from_state_dict(sd: dict[str, torch.Tensor], source: str, quick_gelu: bool = True) -> dict:
    """Infer the open_clip config of a CLIP ViT from its open_clip/OpenAI-layout tensors."""
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
            "image_size": grid * patch, "layers": v_layers, "width": width,
            "head_width": 64, "patch_size": patch, "mlp_ratio": v_mlp / width,
        },
        "text_cfg": {
            "context_length": context_length, "vocab_size": vocab_size, "width": t_width,
            "heads": max(t_width // 64, 1), "layers": t_layers, "mlp_ratio": t_mlp / t_width,
        },
    }


# ---- loaders -------------------------------------------------------------------------------
def _torch_load(path: Path) -> dict:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                is_script = any(name.endswith("constants.pkl") for name in archive.namelist())
            if is_script:
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err})") from None
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
            raise WeightsError(f"{path}: cannot be read as safetensors ({type(err).__name__}: {err})") from None
    return _torch_load(path), {}


def load_openai(path: Union[str, Path]) -> ClipWeights:
    path = Path(path)
    sd = {k: v for k, v in _torch_load(path).items() if k not in OPENAI_EXTRA_KEYS}
    sd = {k: v.float() for k, v in sd.items()}  # released OpenAI weights are fp16
    return ClipWeights(sd, config_from_state_dict(sd, str(path)), str(path), "openai")


def load_open_clip(path: Union[str, Path]) -> ClipWeights:
    path = Path(path)
    sd, meta = _read_tensors(path)
    if "config" in meta:
        config = json.loads(meta["config"])
    else:
        config = config_from_state_dict(sd, str(path))
    return ClipWeights({k: v.float() for k, v in sd.items()}, config, str(path), "open_clip")


def _hf_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{folder}: a HuggingFace CLIPModel folder needs config.json (not found)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{cfg_path}: invalid JSON ({err})") from None
    if "vision_config" not in cfg or "text_config" not in cfg:
        raise WeightsError(f"{cfg_path}: not a CLIPModel config (needs vision_config and text_config)")
    return cfg


def load_hf(folder: Union[str, Path]) -> ClipWeights:
    folder = Path(folder)
    cfg = _hf_config(folder)
    v, t = cfg["vision_config"], cfg["text_config"]
    for name, sub in (("vision_config", v), ("text_config", t)):
        eps = sub.get("layer_norm_eps", 1e-5)
        if abs(eps - 1e-5) > 1e-12:
            raise WeightsError(f"{folder / 'config.json'}: {name}.layer_norm_eps={eps}; open_clip CLIP uses 1e-5")
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or acts - {"quick_gelu", "gelu"}:
        raise WeightsError(f"{folder / 'config.json'}: unsupported hidden_act {sorted(acts)} (need quick_gelu or gelu on both towers)")
    files = [folder / "model.safetensors", folder / "pytorch_model.bin"]
    weights_file = next((f for f in files if f.is_file()), None)
    if weights_file is None:
        raise WeightsError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")
    hf, _ = _read_tensors(weights_file)
    hf = {k: v.float() for k, v in hf.items()}

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise WeightsError(f"{weights_file}: missing tensor {key!r} (is this a CLIPModel?)")
        return hf.pop(key)

    sd: dict[str, torch.Tensor] = {}

    def blocks(hf_root: str, oc_root: str, layers: int) -> None:
        for i in range(layers):
            src, dst = f"{hf_root}.encoder.layers.{i}", f"{oc_root}.resblocks.{i}"
            for part in ("weight", "bias"):
                sd[f"{dst}.attn.in_proj_{part}"] = torch.cat(
                    [take(f"{src}.self_attn.{p}_proj.{part}") for p in ("q", "k", "v")]
                )
                sd[f"{dst}.attn.out_proj.{part}"] = take(f"{src}.self_attn.out_proj.{part}")
                sd[f"{dst}.ln_1.{part}"] = take(f"{src}.layer_norm1.{part}")
                sd[f"{dst}.ln_2.{part}"] = take(f"{src}.layer_norm2.{part}")
                sd[f"{dst}.mlp.c_fc.{part}"] = take(f"{src}.mlp.fc1.{part}")
                sd[f"{dst}.mlp.c_proj.{part}"] = take(f"{src}.mlp.fc2.{part}")

    sd["visual.class_embedding"] = take("vision_model.embeddings.class_embedding")
    sd["visual.conv1.weight"] = take("vision_model.embeddings.patch_embedding.weight")
    sd["visual.positional_embedding"] = take("vision_model.embeddings.position_embedding.weight")
    for part in ("weight", "bias"):
        sd[f"visual.ln_pre.{part}"] = take(f"vision_model.pre_layrnorm.{part}")
        sd[f"visual.ln_post.{part}"] = take(f"vision_model.post_layernorm.{part}")
        sd[f"ln_final.{part}"] = take(f"text_model.final_layer_norm.{part}")
    blocks("vision_model", "visual.transformer", v["num_hidden_layers"])
    sd["visual.proj"] = take("visual_projection.weight").t().contiguous()
    sd["token_embedding.weight"] = take("text_model.embeddings.token_embedding.weight")
    sd["positional_embedding"] = take("text_model.embeddings.position_embedding.weight")
    blocks("text_model", "transformer", t["num_hidden_layers"])
    sd["text_projection"] = take("text_projection.weight").t().contiguous()
    sd["logit_scale"] = take("logit_scale")
    leftover = [k for k in hf if not k.endswith("position_ids")]
    if leftover:
        raise WeightsError(f"{weights_file}: unexpected tensors {leftover[:8]} (is this a plain CLIPModel?)")

    config = {
        "embed_dim": cfg.get("projection_dim", sd["text_projection"].shape[1]),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "image_size": v["image_size"], "layers": v["num_hidden_layers"], "width": v["hidden_size"],
            "head_width": v["hidden_size"] // v["num_attention_heads"], "patch_size": v["patch_size"],
            "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
        },
        "text_cfg": {
            "context_length": t["max_position_embeddings"], "vocab_size": t["vocab_size"],
            "width": t["hidden_size"], "heads": t["num_attention_heads"], "layers": t["num_hidden_layers"],
            "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
        },
    }
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
def save_safetensors(state_dict: dict[str, torch.Tensor], out: Union[str, Path], metadata: Optional[dict] = None) -> None:
    """Write tensors atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint file or HuggingFace CLIPModel folder")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument(
        "--format", default="auto", choices=[*FORMATS, "stan", "clip2video"],
        help="source layout: CLIP weights (auto|openai|hf|open_clip) -> open_clip-layout CLIP weights; "
        "released whole models (stan: STAN / Mug-STAN mmengine; clip2video: CLIP4Clip / CLIP2Video "
        "pytorch_model.bin.N) -> a mugstan model checkpoint",
    )


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise SystemExit(f"error: output must be a .safetensors file, got {out}")
    try:
        if args.format in ("stan", "clip2video"):
            from mugstan.backbones import released

            convert = released.convert_stan if args.format == "stan" else released.convert_clip2video
            state_dict, model_config = convert(args.src)
            save_safetensors(state_dict, out, {"format": "mugstan", "model_config": json.dumps(model_config)})
            desc = f"mugstan model ({model_config.get('temporal')}, {model_config.get('head')})"
        else:
            weights = load_clip_weights(args.src, args.format)
            state_dict = weights.state_dict
            save_safetensors(state_dict, out, {"format": "open_clip", "config": json.dumps(weights.config)})
            v, t = weights.config["vision_cfg"], weights.config["text_cfg"]
            desc = (f"CLIP ViT patch {v['patch_size']} @ {v['image_size']} px, vision {v['layers']}x{v['width']}, "
                    f"text {t['layers']}x{t['width']}, E={weights.config['embed_dim']} (from {weights.format})")
    except WeightsError as err:
        raise SystemExit(f"error: {err}") from None
    n_params = sum(v.numel() for v in state_dict.values())
    print(f"wrote {out}: {len(state_dict)} tensors, {n_params / 1e6:.1f} M parameters, {desc}")
    return 0
