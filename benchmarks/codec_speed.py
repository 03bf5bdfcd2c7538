"""PyAV vs torchcodec (issue 29): ms per 12-frame clip, pixel difference, and the loader on a GPU.

    python benchmarks/codec_speed.py                    # CPU: decode per clip, raw and compressed
    python benchmarks/codec_speed.py --loader           # CUDA: + PyAV CPU workers vs torchcodec on the GPU

Videos rendered here like MSR-VTT (``loader_speed.render_video``: 320x240, 30 fps, 10-30 s, H.264
with x264's default GOP), raw and after ``mugstan data compress`` (3 fps, short side 224,
all-intra, fast-decode: the defaults).

1. Decode, one process: ``read_clip`` of a training clip (12 frames, random frame per segment,
   short side 224) with ``decoder="pyav"`` and ``decoder="torchcodec"`` on the CPU (and on the GPU
   when there is one: NVDEC, frames left in GPU memory), the same sampled frames for both, ms per
   clip over the same clip sequence. And the mean / max absolute pixel difference between the
   PyAV and torchcodec frames (0-255 levels).
2. ``--loader`` (CUDA): training batches on the GPU, cropped and normalised, clips/s: PyAV in
   ``--workers`` DataLoader processes (uint8 crops, pinned, copied, normalised on the GPU) vs
   torchcodec decoding on the GPU in the training process (``data.decode_device: cuda``: crop and
   normalisation on the GPU, no host round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mugstan.backbones.clip import Tokenizer
from mugstan.config import DataConfig
from mugstan.data.datasets import build_dataset, collate
from mugstan.data.transforms import normalize
from mugstan.data.video import read_clip

sys.path.insert(0, str(Path(__file__).parent))
from loader_speed import compress, make_videos, write_annotations


def decode_rate(paths: list[Path], clips: int, decoder: str, device: str, frames: int, short: int) -> float:
    """ms per clip of read_clip over ``clips`` training clips (seeded draws, the same for every decoder)."""
    read_clip(paths[0], frames, True, short, rng=np.random.default_rng(0), decoder=decoder, device=device)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(clips):
        read_clip(
            paths[i % len(paths)], frames, True, short, rng=np.random.default_rng(i), decoder=decoder, device=device
        )
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / clips


def pixel_difference(paths: list[Path], frames: int, short: int) -> tuple[float, float]:
    """Mean and max |PyAV - torchcodec| over one clip per video, in 0-255 levels."""
    diffs = []
    for i, path in enumerate(paths):
        a = read_clip(path, frames, True, short, rng=np.random.default_rng(i), decoder="pyav")
        b = read_clip(path, frames, True, short, rng=np.random.default_rng(i), decoder="torchcodec")
        diffs.append((a.float() - b.float()).abs())
    d = torch.stack(diffs)
    return float(d.mean()), float(d.max())


def loader_rate(cfg: DataConfig, workers: int, batch: int, steps: int) -> float:
    """Clips/s of normalised training batches on the GPU (after the batches queued at start)."""
    dataset = build_dataset(cfg, "train", Tokenizer(32), train=True, pairs=True, uint8=True)
    queued = 2 * max(1, workers)
    index = [i % len(dataset) for i in range(batch * (steps + queued))]
    on_gpu = cfg.decode_device == "cuda"
    loader = DataLoader(
        torch.utils.data.Subset(dataset, index),
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=not on_gpu,
        prefetch_factor=2 if workers else None,
    )
    it = iter(loader)
    for _ in range(queued):
        normalize(next(it)["frames"].to("cuda", non_blocking=True))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        normalize(next(it)["frames"].to("cuda", non_blocking=True))
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--clips", type=int, default=24, help="clips timed per decoder and layout")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--loader", action="store_true", help="CUDA: PyAV DataLoader workers vs torchcodec on the GPU")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0))
    results = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cores": cores,
        "torch": torch.__version__,
        "decode": [],
        "loader": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_videos(tmp / "raw", (320, 240), args.videos, (10.0, 30.0), seed=7, workers=cores)
        compress(
            tmp / "raw", tmp / "intra", ["--fps", "3", "--short-side", "224", "--gop", "1", "--fast-decode"], cores
        )
        layouts = {
            "raw 320x240, 30 fps, x264 default GOP": tmp / "raw",
            "compressed: 3 fps, all-intra, fast-decode": tmp / "intra",
        }
        for label, folder in layouts.items():
            paths = sorted(folder.glob("*.mp4"))
            row = {
                "layout": label,
                "pyav_ms": decode_rate(paths, args.clips, "pyav", "cpu", args.frames, args.short_side),
                "torchcodec_cpu_ms": decode_rate(paths, args.clips, "torchcodec", "cpu", args.frames, args.short_side),
            }
            if cuda:
                row["torchcodec_cuda_ms"] = decode_rate(
                    paths, args.clips, "torchcodec", "cuda", args.frames, args.short_side
                )
            row["mean_abs_diff"], row["max_abs_diff"] = pixel_difference(paths, args.frames, args.short_side)
            results["decode"].append(row)
            print(row, flush=True)
        if args.loader and cuda:
            for label, folder in layouts.items():
                ann = write_annotations(folder, sorted(folder.glob("*.mp4")), tmp / "ann.jsonl")
                base = dict(
                    dataset="jsonl", root=str(folder), train_ann=str(ann), num_frames=args.frames, image_size=224
                )
                for feed, cfg, workers in (
                    (f"PyAV, {args.workers} CPU workers", DataConfig(**base, num_workers=args.workers), args.workers),
                    (
                        "torchcodec on the GPU, training process",
                        DataConfig(**base, decoder="torchcodec", decode_device="cuda", num_workers=0),
                        0,
                    ),
                ):
                    rate = loader_rate(cfg, workers, args.batch, args.steps)
                    results["loader"].append({"layout": label, "feed": feed, "clips_s": rate})
                    print(label, feed, f"{rate:.1f} clips/s", flush=True)

    print(
        f"\n{args.frames}-frame training clips, short side {args.short_side}; {results['device']}, "
        f"{cores} cores, torch {torch.__version__}\n"
    )
    gpu = "| torchcodec GPU (ms) " if cuda else ""
    print(f"| layout | PyAV (ms/clip) | torchcodec CPU (ms/clip) {gpu}| mean / max pixel difference |")
    print("|---|---:|---:|" + ("---:|" if cuda else "") + "---:|")
    for r in results["decode"]:
        g = f"| {r['torchcodec_cuda_ms']:.1f} " if cuda else ""
        print(
            f"| {r['layout']} | {r['pyav_ms']:.1f} | {r['torchcodec_cpu_ms']:.1f} {g}"
            f"| {r['mean_abs_diff']:.2f} / {r['max_abs_diff']:.0f} |"
        )
    if results["loader"]:
        print("\n| layout | feed | normalised clips/s on the GPU |\n|---|---|---:|")
        for r in results["loader"]:
            print(f"| {r['layout']} | {r['feed']} | {r['clips_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
