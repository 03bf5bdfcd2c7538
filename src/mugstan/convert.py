"""``mugstan convert SRC OUT.safetensors [--format ...]``: weights from other layouts into mugstan's.

- CLIP weights (``--format auto|openai|hf|open_clip``, ``mugstan.backbones.convert``) -> an
  open_clip-layout ``.safetensors`` with the architecture in its metadata, usable as ``model.weights``.
- Released whole models (``--format stan``: STAN / Mug-STAN mmengine checkpoints; ``--format
  clip2video``: CLIP4Clip / CLIP2Video ``pytorch_model.bin.N``, ``mugstan.released``) -> a mugstan
  model file whose metadata holds the model config, usable as ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mugstan import released
from mugstan.backbones.convert import FORMATS, WeightsError, load_clip_weights, save_safetensors
from mugstan.errors import ArgumentError
from mugstan.hub import resolve_weights


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="checkpoint file, HuggingFace CLIPModel folder, or hf-hub:org/name / local-dir:PATH"
    )
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument(
        "--format",
        default="auto",
        choices=[*FORMATS, "stan", "clip2video"],
        help="source layout: CLIP weights (auto|openai|hf|open_clip) -> open_clip-layout CLIP weights; "
        "released whole models (stan: STAN / Mug-STAN mmengine; clip2video: CLIP4Clip / CLIP2Video "
        "pytorch_model.bin.N) -> a mugstan model checkpoint",
    )
    parser.add_argument(
        "--clip-config",
        help="with --format stan: the HuggingFace CLIPModel config (folder or config.json) the checkpoint "
        "was trained from; it fixes the attention head counts. Needed unless the CLIP has the shapes of a released "
        "OpenAI one (ViT-B/32, B/16, L/14, L/14-336: heads of width 64)",
    )


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ArgumentError(f"output must be a .safetensors file, got {out}")
    if out.is_dir():
        raise ArgumentError(f"{out} is a folder; name the .safetensors file to write")
    if args.format in ("stan", "clip2video"):
        state_dict, model_config = (
            released.convert_stan(args.src, clip_config=args.clip_config)
            if args.format == "stan"
            else released.convert_clip2video(args.src)
        )
        save_safetensors(state_dict, out, {"format": "mugstan", "model_config": json.dumps(model_config)})
        desc = f"mugstan model (branch {model_config['branch']}, head {model_config['head']})"
    else:
        weights = load_clip_weights(resolve_weights(args.src), args.format)
        if weights.config is None:  # the file written must record the architecture: never a guessed one
            raise WeightsError(
                f"{weights.unknown}; mugstan convert writes only files that record their architecture: load this "
                "one with model.backbone (the name of its architecture) or model.backbone_config"
            )
        state_dict = weights.state_dict
        save_safetensors(state_dict, out, {"format": "open_clip", "config": json.dumps(weights.config)})
        v, t = weights.config["vision_cfg"], weights.config["text_cfg"]
        kind = "CoCa" if "multimodal_cfg" in weights.config else "CLIP"
        desc = (
            f"{kind} ViT patch {v['patch_size']} @ {v['image_size']} px, vision {v['layers']}x{v['width']}, "
            f"text {t['layers']}x{t['width']}, E={weights.config['embed_dim']} (from {weights.format})"
        )
    n_params = sum(v.numel() for v in state_dict.values())
    print(f"wrote {out}: {len(state_dict)} tensors, {n_params / 1e6:.1f} M parameters, {desc}")
    return 0
