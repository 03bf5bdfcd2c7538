"""``mugstan embed``: video or text embeddings of a split, to a file readable without mugstan.

    mugstan embed CONFIG --checkpoint PATH --what videos --out test_videos.npz [--split test]
    mugstan embed CONFIG --checkpoint PATH --what texts  --out test_texts.npz

The ``.npz`` holds ``embeddings`` (float32 [N, E'], or [N, S, E] per frame / token for Mug models,
with ``mask`` [N, S]) and ``items`` (video paths or captions, in order). Videos that failed to decode
are left out and listed in ``dropped``.
"""

from __future__ import annotations

import argparse

import numpy as np


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="experiment YAML or packaged config name (its data section says which videos / captions)"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint folder, a `mugstan convert` .safetensors, or hf-hub:org/name"
    )
    parser.add_argument(
        "--what",
        choices=["videos", "texts"],
        default="videos",
        help="embed the split's videos or its captions (default: videos)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="which annotation file of the config: data.train_ann, val_ann or test_ann (default: test)",
    )
    parser.add_argument("--out", required=True, help="output .npz file (its folder must exist)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.root=/videos")


def main(args: argparse.Namespace) -> int:
    from mugstan.config import load_config
    from mugstan.data.datasets import load_annotations
    from mugstan.engine.checkpoint import load_model
    from mugstan.engine.distributed import setup
    from mugstan.engine.evaluate import embed_clips, embed_texts, stack_clips
    from mugstan.errors import UserError

    cfg = load_config(args.config, args.overrides)
    dist = setup()
    model, _ = load_model(args.checkpoint, dist.device)
    ann = load_annotations(cfg.data, args.split)
    dropped = []
    if args.what == "videos":
        outputs, dropped = embed_clips(model, cfg, ann, dist, args.split)
        kept = sorted(outputs)
        emb = stack_clips([outputs[i] for i in kept])
        items = [ann.clips[i].path for i in kept]
    else:
        if not ann.captions:
            raise UserError(
                f"--what texts: the {args.split} split ({ann.source}) has no captions (a recognition "
                "annotation file?); embed its videos with --what videos"
            )
        emb = embed_texts(model, ann.captions, dist.device)
        items = list(ann.captions)
    if dist.main:
        arrays = {"embeddings": emb.x.float().cpu().numpy(), "items": np.array(items)}
        if emb.mask is not None:
            arrays["mask"] = emb.mask.cpu().numpy()
        arrays["dropped"] = np.array([e for _, e in dropped], dtype=str)
        np.savez(args.out, **arrays)
        print(
            f"wrote {args.out}: {len(items)} {args.what}, embeddings {tuple(arrays['embeddings'].shape)}"
            + (f", {len(dropped)} videos dropped" if dropped else "")
        )
    return 0
