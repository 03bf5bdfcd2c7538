"""Clips per second of each branch x head on ViT-B/32 (random weights), fp32 vs bf16 autocast.

    python benchmarks/model_speed.py [--frames 12 --size 224 --batch 2 --iters 3 --device cpu] [--coca coca_ViT-B-32]

Inference (encode_video under no_grad). The backbone-only row is CLIP applied to every frame,
the cost that all branches and heads share. The CoCa rows (``--coca``, ``none`` to skip) are the
same for a CoCa backbone of the same trunk size: CoCa per frame (trunk + attentional pooler) and
STAN-self on CoCa (the branch's class token fused before the pooler).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from mugstan.backbones.build import build_clip
from mugstan.config import ModelConfig, STANConfig
from mugstan.heads.base import LogitScale
from mugstan.models import VideoTextModel, build_branch, build_head

MODULES = [
    ("meanP", "none", "meanP", {}),
    ("seqTransf", "none", "seqTransf", {}),
    ("TDB+TAB", "none", "tdb_tab", {}),
    ("STAN-self", "stan", "mean", {"time_module": "self"}),
    ("STAN-conv", "stan", "mean", {"time_module": "conv"}),
]


def clips_per_second(fn, batch: int, iters: int) -> tuple[float, float]:
    """(clips per wall-clock second, CPU seconds of this process per clip). The second is what a
    shared, overloaded CPU distorts least: waiting for a core costs wall time, not CPU time."""
    fn()  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - start), (time.process_time() - cpu) / (batch * iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--coca", default="coca_ViT-B-32", help="CoCa backbone for the CoCa rows, or none")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_start = os.getloadavg()[0]  # other jobs on the machine: wall-clock figures are only as good as this is low
    torch.manual_seed(0)
    frames = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    mask = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)
    precisions = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast(device.type, dtype=torch.bfloat16)}

    def measure(label: str, fn) -> list:
        row = [label]
        for autocast in precisions.values():
            with autocast():
                row.append(clips_per_second(fn, args.batch, args.iters))
        return row  # [label, (fp32 clips/s, fp32 CPU s/clip), (bf16 ...)]

    def measure_backbone(name: str, modules: list, prefix: str = "") -> list:
        backbone = build_clip(name).to(device).eval()
        kind = "CoCa" if prefix else "CLIP"
        rows = [
            measure(f"{prefix}backbone only ({kind} per frame)", lambda: backbone.encode_frames(frames.flatten(0, 1)))
        ]
        for label, branch, head, stan in modules:
            cfg = ModelConfig(backbone=name, branch=branch, head=head, stan=STANConfig(**stan))
            model = (
                VideoTextModel(
                    backbone,
                    build_branch(cfg, backbone),
                    build_head(cfg, backbone),
                    LogitScale(backbone.logit_scale),
                    cfg.context_length,
                )
                .to(device)
                .eval()
            )
            rows.append(measure(prefix + label, lambda model=model: model.encode_video(frames, mask)))
        return rows

    with torch.no_grad():
        rows = measure_backbone(args.backbone, MODULES)
        if args.coca != "none":
            rows += measure_backbone(args.coca, [m for m in MODULES if m[0] == "STAN-self"], prefix=f"{args.coca}: ")

    print(
        f"{args.backbone}, {args.frames} frames at {args.size} px, batch {args.batch}, {args.iters} iterations, "
        f"device {device.type} ({torch.get_num_threads()} threads), torch {torch.__version__}\n"
    )
    print(
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| model | fp32 clips/s | bf16 clips/s | bf16 speed-up | fp32 CPU s / clip | bf16 CPU s / clip |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (fp32, fp32_cpu), (bf16, bf16_cpu) in rows:
        print(f"| {label} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.1f}x | {fp32_cpu:.2f} | {bf16_cpu:.2f} |")


if __name__ == "__main__":
    main()
