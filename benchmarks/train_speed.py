"""Training throughput of STAN on a GPU: clips/s, model FLOPs utilisation, and the loader's share.

    python benchmarks/train_speed.py                          # ViT-B-32 and ViT-B-16 on cuda
    python benchmarks/train_speed.py --backbones ViT-B-32 --steps 4 --device cpu --batch 2   # a smoke run

Random weights (nothing is downloaded), 12 frames at 224 px, bf16 autocast with fp32 weights,
AdamW; one step = forward of video and text, symmetric InfoNCE, backward, optimiser step.

For each backbone:
1. model alone: the batch is already on the device (uint8 clips, normalised there with
   ``mugstan.data.transforms.normalize``); clips/s, FLOPs per clip counted by
   ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward, and MFU against
   ``--peak`` (H200/H100 dense bf16: 989 TFLOP/s);
2. fed by the real loader: videos rendered here like MSR-VTT (320x240, 30 fps, 10-30 s, H.264
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
from mugstan.losses import build_loss
from mugstan.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from loader_speed import compress, make_videos, write_annotations  # noqa: E402


def build_stan(backbone: str) -> torch.nn.Module:
    """STAN (self-attention branch, mean head) on a randomly initialised CLIP ``backbone``, with its loss."""
    cfg = ModelConfig(backbone=backbone, branch="stan", head="mean")
    model = build_model(cfg)
    model.loss_fn = build_loss(cfg, model)
    return model


def train_step(model, optimizer, frames: torch.Tensor, frame_mask, ids, text_mask, device: torch.device) -> torch.Tensor:
    """frames uint8 [B, T, 3, S, S] (normalised here) or float [B, T, 3, S, S] (already normalised)."""
    if frames.dtype == torch.uint8:
        frames = normalize(frames)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = model.loss_fn(model(frames, frame_mask, ids, text_mask), {})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_alone(model, optimizer, batch: int, frames: int, size: int, steps: int, device: torch.device) -> dict:
    """Clips/s with the batch already on the device, and FLOPs per clip (forward + backward)."""
    g = torch.Generator(device=device).manual_seed(0)
    clips = torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, device=device, generator=g)
    fmask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    ids, tmask = model.tokenizer(["a person is cooking something in a kitchen"] * batch)
    ids, tmask = ids.to(device), tmask.to(device)
    for _ in range(2):
        train_step(model, optimizer, clips, fmask, ids, tmask, device)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model.loss_fn(model(normalize(clips), fmask, ids, tmask), {})
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, clips, fmask, ids, tmask, device)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"clips_s": batch / seconds, "step_s": seconds, "flops_per_clip": counter.get_total_flops() / batch}


def with_loader(model, optimizer, cfg: DataConfig, batch: int, workers: int, steps: int, uint8: bool, device: torch.device) -> dict:
    """Clips/s fed by the real DataLoader in its steady state and the share of the time spent
    waiting for batches. The batches queued while the workers start are taken untimed first (a
    run timed on them measures the GPU alone), then at least two batches per worker are timed."""
    dataset = build_dataset(cfg, "train", model.tokenizer, train=True, pairs=True, uint8=uint8)
    prefetch = 2
    drain = prefetch * max(1, workers)  # batches queued at start: built before the clock starts
    steps = max(steps, 2 * workers)  # each worker builds about two timed batches
    index = [i % len(dataset) for i in range(batch * (steps + drain + 2))]
    loader = DataLoader(torch.utils.data.Subset(dataset, index), batch_size=batch, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", prefetch_factor=prefetch if workers else None,
                        persistent_workers=False, drop_last=True)
    it = iter(loader)

    def next_batch():
        b = next(it)
        return (b["frames"].to(device, non_blocking=True), b["frame_mask"].to(device, non_blocking=True),
                b["ids"].to(device, non_blocking=True), b["text_mask"].to(device, non_blocking=True))

    for _ in range(2):  # warm-up: kernels chosen
        train_step(model, optimizer, *next_batch(), device)
    for _ in range(drain - 2):  # the rest of the batches queued at start, untimed
        next(it)
    sync(device)
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        data = next_batch()  # blocks only while no batch is ready; the copy is asynchronous
        wait += time.perf_counter() - t0
        train_step(model, optimizer, *data, device)
    sync(device)
    total = time.perf_counter() - start
    return {"clips_s": batch * steps / total, "step_s": total / steps, "wait_share": wait / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 64], help="clips per step, one per backbone")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (with a loader: at least 2 x workers)")
    parser.add_argument("--videos", type=int, default=48, help="videos rendered for the loader runs")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument("--peak", type=float, default=989e12, help="dense bf16 FLOP/s of the device (H100/H200 SXM: 989e12)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = dict(zip(args.backbones, args.batch + args.batch[-1:] * len(args.backbones)))
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "cores": len(os.sched_getaffinity(0)), "workers": args.workers, "rows": []}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        raw = tmp / "raw"
        make_videos(raw, (320, 240), args.videos, (10.0, 30.0), seed=7, workers=results["cores"])
        compress(raw, tmp / "intra", ["--fps", "3", "--short-side", "224", "--gop", "1", "--fast-decode"], results["cores"])
        print(f"rendered and compressed {args.videos} videos in {time.perf_counter() - t0:.0f} s", flush=True)
        cfgs = {}
        for folder in ("raw", "intra"):
            ann = write_annotations(tmp / folder, sorted((tmp / folder).glob("*.mp4")), tmp / f"{folder}.jsonl")
            cfgs[folder] = DataConfig(dataset="jsonl", root=str(tmp / folder), train_ann=str(ann), num_frames=args.frames, image_size=args.size)
        feeds = [("model alone (batch already on the device)", None, None),
                 ("loader: compressed (3 fps, all-intra, fast-decode), uint8 + GPU normalise", "intra", True),
                 ("loader: compressed (3 fps, all-intra, fast-decode), float as today", "intra", False),
                 ("loader: raw 320x240 30 fps, float as today", "raw", False)]
        for backbone in args.backbones:
            torch.manual_seed(0)
            model = build_stan(backbone).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.2)
            batch = batches[backbone]
            for label, folder, uint8 in feeds:
                if folder == "raw" and backbone != args.backbones[0]:
                    continue  # the raw files starve the first backbone already
                t0 = time.perf_counter()
                if folder is None:
                    while True:
                        try:
                            row = model_alone(model, optimizer, batch, args.frames, args.size, args.steps, device)
                            break
                        except torch.OutOfMemoryError:
                            optimizer.zero_grad(set_to_none=True)
                            torch.cuda.empty_cache()
                            print(f"{backbone}: batch {batch} does not fit, trying {batch // 2}", flush=True)
                            batch //= 2
                    flops = row["flops_per_clip"]
                else:
                    row = with_loader(model, optimizer, cfgs[folder], batch, args.workers, args.steps, uint8, device)
                row.update(backbone=backbone, feed=label, batch=batch, flops_per_clip=flops,
                           mfu=flops * row["clips_s"] / args.peak)
                results["rows"].append(row)
                print(f"{backbone} {label}: {row['clips_s']:.1f} clips/s, MFU {100 * row['mfu']:.1f}%, "
                      f"loader wait {100 * row.get('wait_share', 0):.0f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if device.type == "cuda":
        results["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    print(f"\nSTAN (self) training step, {args.frames} frames at {args.size} px, bf16 autocast, AdamW, random init; "
          f"{name}, torch {torch.__version__}, {results['cores']} cores, {args.workers} loader workers\n")
    print("| backbone | batch | feed | clips/s | GFLOP per clip (fwd+bwd) | MFU | blocked in next(loader) | throughput lost to the loader |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    alone = {r["backbone"]: r["clips_s"] for r in results["rows"] if "wait_share" not in r}
    for r in results["rows"]:
        wait = f"{100 * r['wait_share']:.0f}%" if "wait_share" in r else "-"
        lost = f"{100 * (1 - r['clips_s'] / alone[r['backbone']]):.0f}%" if "wait_share" in r else "-"
        print(f"| {r['backbone']} | {r['batch']} | {r['feed']} | {r['clips_s']:.1f} | {r['flops_per_clip'] / 1e9:.0f} | "
              f"{100 * r['mfu']:.1f}% | {wait} | {lost} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
