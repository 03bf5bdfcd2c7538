"""Clips per second of each branch x head on ViT-B/32 (random weights), fp32 vs bf16 autocast.

    python benchmarks/model_speed.py [--frames 12 --size 224 --batch 2 --iters 3 --device cpu]

Inference (encode_video under no_grad). The backbone-only row is CLIP applied to every frame,
the cost that all branches and heads share.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from mugstan.backbones.clip import build_clip
from mugstan.config import ModelConfig, STANConfig
from mugstan.heads.base import LogitScale
from mugstan.models import VideoTextModel, build_branch, build_head

MODULES = [("meanP", "none", "meanP", {}), ("seqTransf", "none", "seqTransf", {}), ("TDB+TAB", "none", "tdb_tab", {}),
           ("STAN-self", "stan", "mean", {"time_module": "self"}), ("STAN-conv", "stan", "mean", {"time_module": "conv"})]


def clips_per_second(fn, batch: int, iters: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = build_clip(args.backbone).to(device).eval()
    frames = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    mask = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)
    precisions = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast(device.type, dtype=torch.bfloat16)}

    rows = []
    with torch.no_grad():
        row = ["backbone only (CLIP per frame)"]
        for autocast in precisions.values():
            with autocast():
                row.append(clips_per_second(lambda: backbone.encode_frames(frames.flatten(0, 1)), args.batch, args.iters))
        rows.append(row)
        for label, branch, head, stan in MODULES:
            cfg = ModelConfig(backbone=args.backbone, branch=branch, head=head, stan=STANConfig(**stan))
            model = VideoTextModel(backbone, build_branch(cfg, backbone), build_head(cfg, backbone),
                                   LogitScale(backbone.logit_scale), cfg.context_length).to(device).eval()
            row = [label]
            for autocast in precisions.values():
                with autocast():
                    row.append(clips_per_second(lambda: model.encode_video(frames, mask), args.batch, args.iters))
            rows.append(row)

    print(f"{args.backbone}, {args.frames} frames at {args.size} px, batch {args.batch}, {args.iters} iterations, "
          f"device {device.type} ({torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| model | fp32 clips/s | bf16 clips/s | bf16 speed-up |")
    print("|---|---:|---:|---:|")
    for label, fp32, bf16 in rows:
        print(f"| {label} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.1f}x |")


if __name__ == "__main__":
    main()
