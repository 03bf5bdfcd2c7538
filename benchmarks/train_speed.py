"""Training throughput of STAN on a GPU: clips/s, model FLOPs utilisation and peak memory per
lever (issue 29), and the loader's share.

    python benchmarks/train_speed.py                          # ViT-B-32 and ViT-B-16 on cuda, every lever
    python benchmarks/train_speed.py --levers eager compiled  # some of them
    python benchmarks/train_speed.py --backbones mugstan-tiny --size 32 --frames 4 --batch 4 \\
        --device cpu --steps 3                                # a CPU smoke run

Random weights (nothing is downloaded), 12 frames at 224 px, AdamW; one step = forward of video
and text, symmetric InfoNCE, backward, optimiser step.

For each backbone:
1. model alone, per lever (``LEVERS``, each adding to the eager bf16-autocast step as trained
   today): the batch is already on the device (uint8 clips, normalised there with
   ``mugstan.data.transforms.normalize``); clips/s, FLOPs per clip counted by
   ``torch.utils.flop_counter.FlopCounterMode`` over one eager forward + backward (the same model
   FLOPs for every lever: checkpointing's recomputation is not counted as useful work), MFU
   against ``--peak`` (H200/H100 dense bf16: 989 TFLOP/s), and the peak GPU memory. A lever that
   runs out of memory halves its batch and says so;
2. with ``--loader``, fed by the real loader: videos rendered here like MSR-VTT (320x240, 30 fps, 10-30 s, H.264
   with x264's default GOP), raw and after ``mugstan data compress --gop 1 --fast-decode``,
   through ``build_dataset`` + ``DataLoader`` (``--workers`` processes, pinned memory), either
   as today (normalised float clips) or as uint8 clips normalised on the GPU. Reported: clips/s,
   the time blocked in ``next(loader)`` as a share of the run, and the loader's cost as the
   throughput lost against the model alone (1 - fed / alone), which also counts what the loader
   takes from the main process (unpickling, pinning, copies).

The model is built in one place, ``build_stan``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from mugstan.config import DataConfig, ModelConfig
from mugstan.data.datasets import build_dataset, collate
from mugstan.data.transforms import normalize
from mugstan.engine.compile import compile_model
from mugstan.losses import build_loss
from mugstan.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from loader_speed import compress, make_videos, write_annotations  # noqa: E402

# name -> what it changes against "eager": bf16 autocast over fp32 weights, foreach AdamW (as trained today)
LEVERS = {
    "eager": {},
    "compiled": {"compile": True},  # train.compile: torch.compile of the video encoder and the text tower
    "compiled + fused AdamW": {"compile": True, "fused": True},  # train.fused_adamw
    "compiled + fused AdamW + bf16 weights": {"compile": True, "fused": True, "bf16_weights": True},  # fp32 master copy
    "compiled + fused AdamW + checkpointing, 2x batch": {
        "compile": True,
        "fused": True,
        "checkpointing": True,
        "batch_mult": 2,
    },
    "compiled + fused AdamW, 2x batch": {"compile": True, "fused": True, "batch_mult": 2},
}


def build_stan(backbone: str, checkpointing: bool = False) -> torch.nn.Module:
    """STAN (self-attention branch, mean head) on a randomly initialised CLIP ``backbone``, with its loss."""
    cfg = ModelConfig(backbone=backbone, branch="stan", head="mean", grad_checkpointing=checkpointing)
    model = build_model(cfg)
    model.loss_fn = build_loss(cfg, model)
    return model


class Trainer:
    """The model and its optimiser under one lever: optionally compiled, fused AdamW, bf16 weights
    with an fp32 master copy that the optimiser updates (no autocast then)."""

    def __init__(
        self,
        backbone: str,
        device: torch.device,
        compile: bool = False,
        fused: bool = False,
        bf16_weights: bool = False,
        checkpointing: bool = False,
    ):
        torch.manual_seed(0)
        self.model = build_stan(backbone, checkpointing).to(device)
        self.device, self.bf16_weights = device, bf16_weights
        kernel = {"fused": True} if fused or device.type == "cpu" else {"foreach": True}
        if bf16_weights:
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.master = [p.detach().clone().float().requires_grad_() for p in self.params]
            self.model.to(torch.bfloat16)
            self.optimizer = torch.optim.AdamW(self.master, lr=1e-6, weight_decay=0.2, **kernel)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6, weight_decay=0.2, **kernel)
        if compile:
            compile_model(self.model)

    def loss(self, frames, frame_mask, ids, text_mask) -> torch.Tensor:
        if self.bf16_weights:
            return self.model.loss_fn(self.model(frames.to(torch.bfloat16), frame_mask, ids, text_mask), {})
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.model.loss_fn(self.model(frames, frame_mask, ids, text_mask), {})

    def step(self, frames: torch.Tensor, frame_mask, ids, text_mask) -> torch.Tensor:
        """frames uint8 [B, T, 3, S, S] (normalised here) or float [B, T, 3, S, S] (already normalised)."""
        if frames.dtype == torch.uint8:
            frames = normalize(frames)
        loss = self.loss(frames, frame_mask, ids, text_mask)
        loss.backward()
        if self.bf16_weights:
            for p, m in zip(self.params, self.master, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        if self.bf16_weights:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.master)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_alone(trainer: Trainer, batch: int, frames: int, size: int, steps: int, device: torch.device) -> dict:
    """Clips/s with the batch already on the device, FLOPs per clip (forward + backward, eager)
    and the peak memory of the timed steps."""
    model = trainer.model
    g = torch.Generator(device=device).manual_seed(0)
    clips = torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, device=device, generator=g)
    fmask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    ids, tmask = model.tokenizer(["a person is cooking something in a kitchen"] * batch)
    ids, tmask = ids.to(device), tmask.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up: kernels chosen, graphs compiled
        trainer.step(clips, fmask, ids, tmask)
    sync(device)
    warmup = time.perf_counter() - t0
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(clips, fmask, ids, tmask)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    row = {
        "clips_s": batch / seconds,
        "step_s": seconds,
        "warmup_s": warmup,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return row


def flops_per_clip(backbone: str, batch: int, frames: int, size: int, device: torch.device) -> float:
    """Model FLOPs of one eager forward + backward per clip (FlopCounterMode), bf16 autocast."""
    trainer = Trainer(backbone, device)
    model = trainer.model
    clips = normalize(torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, device=device))
    ids, tmask = model.tokenizer(["a person is cooking something in a kitchen"] * batch)
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.loss(
            clips, torch.ones(batch, frames, dtype=torch.bool, device=device), ids.to(device), tmask.to(device)
        ).backward()
    return counter.get_total_flops() / batch


def with_loader(
    trainer: Trainer, cfg: DataConfig, batch: int, workers: int, steps: int, uint8: bool, device: torch.device
) -> dict:
    """Clips/s fed by the real DataLoader in its steady state and the share of the time spent
    waiting for batches. The batches queued while the workers start are taken untimed first (a
    run timed on them measures the GPU alone), then at least two batches per worker are timed."""
    dataset = build_dataset(cfg, "train", trainer.model.tokenizer, train=True, pairs=True, uint8=uint8)
    prefetch = 2
    drain = prefetch * max(1, workers)  # batches queued at start: built before the clock starts
    steps = max(steps, 2 * workers)  # each worker builds about two timed batches
    index = [i % len(dataset) for i in range(batch * (steps + drain + 2))]
    loader = DataLoader(
        torch.utils.data.Subset(dataset, index),
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
        drop_last=True,
    )
    it = iter(loader)

    def next_batch():
        b = next(it)
        return (
            b["frames"].to(device, non_blocking=True),
            b["frame_mask"].to(device, non_blocking=True),
            b["ids"].to(device, non_blocking=True),
            b["text_mask"].to(device, non_blocking=True),
        )

    for _ in range(2):  # warm-up: kernels chosen
        trainer.step(*next_batch())
    for _ in range(drain - 2):  # the rest of the batches queued at start, untimed
        next(it)
    sync(device)
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        data = next_batch()  # blocks only while no batch is ready; the copy is asynchronous
        wait += time.perf_counter() - t0
        trainer.step(*data)
    sync(device)
    total = time.perf_counter() - start
    return {"clips_s": batch * steps / total, "step_s": total / steps, "wait_share": wait / total}


def measure_levers(args, results: dict, backbone: str, batch: int, device: torch.device, flops: float) -> None:
    """One row per lever in ``args.levers`` added to ``results`` (and to ``--json`` at once, so a run cut
    short keeps what it measured): the model alone, the batch on the device."""
    for lever in args.levers:
        opts = dict(LEVERS[lever])
        b = batch * opts.pop("batch_mult", 1)
        t0 = time.perf_counter()
        while True:
            trainer = Trainer(backbone, device, **opts)
            try:
                row = model_alone(trainer, b, args.frames, args.size, args.steps, device)
                break
            except torch.OutOfMemoryError:
                del trainer
                torch.cuda.empty_cache()
                print(f"{backbone} {lever}: batch {b} does not fit, trying {b // 2}", flush=True)
                b //= 2
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row.update(backbone=backbone, feed=lever, batch=b, flops_per_clip=flops, mfu=flops * row["clips_s"] / args.peak)
        results["rows"].append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        peak = f", peak {row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else ""
        print(
            f"{backbone} {lever}: {row['clips_s']:.1f} clips/s, MFU {100 * row['mfu']:.1f}%{peak} "
            f"(warm-up {row['warmup_s']:.0f} s, {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def measure_loader(args, results: dict, batches: dict, device: torch.device) -> None:
    """The eager model fed by the real DataLoader from rendered videos, raw and compressed."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        raw = tmp / "raw"
        make_videos(raw, (320, 240), args.videos, (10.0, 30.0), seed=7, workers=results["cores"])
        compress(
            raw, tmp / "intra", ["--fps", "3", "--short-side", "224", "--gop", "1", "--fast-decode"], results["cores"]
        )
        print(f"rendered and compressed {args.videos} videos in {time.perf_counter() - t0:.0f} s", flush=True)
        cfgs = {}
        for folder in ("raw", "intra"):
            ann = write_annotations(tmp / folder, sorted((tmp / folder).glob("*.mp4")), tmp / f"{folder}.jsonl")
            cfgs[folder] = DataConfig(
                dataset="jsonl",
                root=str(tmp / folder),
                train_ann=str(ann),
                num_frames=args.frames,
                image_size=args.size,
            )
        feeds = [
            ("loader: compressed (3 fps, all-intra, fast-decode), uint8 + GPU normalise", "intra", True),
            ("loader: compressed (3 fps, all-intra, fast-decode), float as today", "intra", False),
            ("loader: raw 320x240 30 fps, float as today", "raw", False),
        ]
        for backbone in args.backbones:
            trainer = Trainer(backbone, device)
            flops = next(r["flops_per_clip"] for r in results["rows"] if r["backbone"] == backbone)
            for label, folder, uint8 in feeds:
                if folder == "raw" and backbone != args.backbones[0]:
                    continue  # the raw files starve the first backbone already
                row = with_loader(trainer, cfgs[folder], batches[backbone], args.workers, args.steps, uint8, device)
                row.update(
                    backbone=backbone,
                    feed=label,
                    batch=batches[backbone],
                    flops_per_clip=flops,
                    mfu=flops * row["clips_s"] / args.peak,
                    peak_gib=None,
                )
                results["rows"].append(row)
                print(
                    f"{backbone} {label}: {row['clips_s']:.1f} clips/s, loader wait {100 * row['wait_share']:.0f}%",
                    flush=True,
                )
            del trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 64], help="clips per step, one per backbone")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--steps", type=int, default=10, help="timed steps per measurement (with a loader: at least 2 x workers)"
    )
    parser.add_argument("--loader", action="store_true", help="also time the eager model fed by the DataLoader")
    parser.add_argument("--videos", type=int, default=48, help="videos rendered for the loader runs")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument(
        "--peak", type=float, default=989e12, help="dense bf16 FLOP/s of the device (H100/H200 SXM: 989e12)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = dict(zip(args.backbones, args.batch + args.batch[-1:] * len(args.backbones), strict=False))
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {
        "device": name,
        "torch": torch.__version__,
        "cores": len(os.sched_getaffinity(0)),
        "workers": args.workers,
        "rows": [],
    }

    for backbone in args.backbones:
        flops = flops_per_clip(backbone, min(batches[backbone], 4), args.frames, args.size, device)
        measure_levers(args, results, backbone, batches[backbone], device, flops)
    if args.loader:
        measure_loader(args, results, batches, device)

    print(
        f"\nSTAN (self) training step, {args.frames} frames at {args.size} px, AdamW, random init; "
        f"{name}, torch {torch.__version__}, {results['cores']} cores"
        + (f", {args.workers} loader workers" if args.loader else "")
        + "\n"
    )
    print(
        "| backbone | batch | lever / feed | clips/s | GFLOP per clip (fwd+bwd) | MFU "
        "| peak GiB | warm-up s | blocked in next(loader) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        wait = f"{100 * r['wait_share']:.0f}%" if "wait_share" in r else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        warm = f"{r['warmup_s']:.0f}" if "warmup_s" in r else "-"
        print(
            f"| {r['backbone']} | {r['batch']} | {r['feed']} | {r['clips_s']:.1f} | {r['flops_per_clip'] / 1e9:.1f} | "
            f"{100 * r['mfu']:.1f}% | {peak} | {warm} | {wait} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
