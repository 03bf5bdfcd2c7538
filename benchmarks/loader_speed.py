"""Clips per second per worker process of mugstan's real data loader, raw videos vs `data compress`.

    python benchmarks/loader_speed.py                # full run: 8 videos per shape, 10-30 s
    python benchmarks/loader_speed.py --quick        # a small run (2 short videos per shape)
    python benchmarks/loader_speed.py --workers 1 2 4 8 16

What is timed is exactly what training and evaluation run: ``build_dataset`` (PairDataset with
the CLIP tokenizer for training, ClipDataset for evaluation) in a ``torch.utils.data.DataLoader``
with ``collate``, ``num_workers`` worker processes, clips of 12 frames at 224 px:
open, probe, sample, decode, resize, random resized crop (training) or centre crop (evaluation),
normalise, collate, and the transfer of the batch to the main process. Worker start-up and the
batches queued at start (2 per worker) are not timed; a measurement lasts at most ``--seconds``. Batches are small
(4 clips) so that the slow layouts warm up quickly; the cost per clip does not depend on it.

``train_shards`` times the training stream from tar shards of the same files (``mugstan data
shard``, 4 samples per shard, ``ShardStream`` as ``data.dataset: webdataset`` builds it): reading
the tar, shuffle buffer, decoding from memory, the same transforms.

Videos are rendered here with PyAV, shaped like MSR-VTT: 320x240 and 1280x720 (separately),
30 fps, 10-30 s, H.264 as x264 writes it by default (keyframe every 250 frames, B-frames), with
a textured background panning under moving objects. Each is measured raw and after
``mugstan data compress`` with the layouts listed in ``LAYOUTS``.

It prints, per video shape and layout: the disk size, training and evaluation clips/s for each
number of workers, clips/s per worker, and the cores one GPU needs at ``--gpu-clips`` clips/s
(870: STAN ViT-B/32 on an H100 at 40% of bf16 peak, issue 20). Then a breakdown of one worker's
time per clip (open+probe+decode, crop+resize, normalise) for each layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from mugstan.backbones.clip import Tokenizer
from mugstan.config import DataConfig
from mugstan.data.datasets import build_dataset, collate
from mugstan.data.datasets.shards import ShardStream
from mugstan.data.shard_writer import source_samples, write_shards
from mugstan.data.transforms import ClipTransform, normalize
from mugstan.data.video import read_clip

SHAPES = {"320x240": (320, 240), "1280x720": (1280, 720)}
# name -> `mugstan data compress` options (None: the raw files)
LAYOUTS = {
    "raw": None,
    "3 fps, GOP 250": [
        "--fps",
        "3",
        "--short-side",
        "224",
        "--gop",
        "250",
        "--no-fast-decode",
    ],  # compress before issue 20
    "3 fps, all-intra": ["--fps", "3", "--short-side", "224", "--gop", "1", "--no-fast-decode"],
    "3 fps, all-intra, fast-decode": [
        "--fps",
        "3",
        "--short-side",
        "224",
        "--gop",
        "1",
        "--fast-decode",
    ],  # the defaults now
    "30 fps, GOP 8": ["--fps", "30", "--short-side", "224", "--gop", "8", "--no-fast-decode"],
    "30 fps, all-intra, fast-decode": ["--fps", "30", "--short-side", "224", "--gop", "1", "--fast-decode"],
}
MODES = {
    "train": "training loader as today (random frame per segment, random resized crop, normalised float out)",
    "train_uint8": "training loader with uint8 out (build_dataset(..., uint8=True); normalised on the GPU)",
    "eval": "evaluation loader (middle frame per segment, centre crop, normalised float out)",
    "train_shards": "training loader reading the same files from tar shards "
        "(data.dataset: webdataset; `mugstan data shard`)",
}
PREFETCH = 2  # batches queued per worker (DataLoader's prefetch_factor)
CAPTIONS = [
    "a man is talking about a car in a garage",
    "people dance on a stage while the crowd cheers",
    "a cartoon dog runs across a field",
    "a woman explains how to cook pasta in a kitchen",
]


def render_video(path: str, size: tuple[int, int], seconds: float, seed: int, fps: int = 30) -> str:
    """A deterministic 'camera' video: a smooth random texture panning, two moving blocks, mild noise.

    H.264 (libx264, preset veryfast, crf 23, x264's default GOP of 250 frames with scene cuts and
    B-frames): how a typical downloaded MP4 is laid out.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    texture = np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))  # blocky texture, then blurred by shifts
    texture = (
        (texture.astype(np.uint16) + np.roll(texture, 8, 0) + np.roll(texture, 8, 1) + np.roll(texture, 8, (0, 1))) // 4
    ).astype(np.uint8)
    texture = np.concatenate([texture, texture], axis=1)  # room to pan
    noise = rng.integers(0, 12, (8, h, w, 3), dtype=np.uint8)
    n = int(round(seconds * fps))
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(n):
            x0 = (i * 2) % (texture.shape[1] - w)
            img = texture[:h, x0 : x0 + w].copy()
            for k, (speed, colour) in enumerate(((3, (230, 40, 40)), (-5, (40, 60, 220)))):
                bx = int((w // 3 + speed * i) % (w - w // 6))
                by = int(h // 4 + k * h // 3 + (h // 10) * np.sin(i / (9 + k)))
                img[by : by + h // 6, bx : bx + w // 6] = colour
            img += noise[i % 8]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_videos(
    folder: Path, size: tuple[int, int], count: int, durations: tuple[float, float], seed: int, workers: int
) -> list[Path]:
    """``count`` videos with durations evenly spread over ``durations`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    secs = np.linspace(durations[0], durations[1], count)
    jobs = [(str(folder / f"video{i:03d}.mp4"), size, float(secs[i]), seed + i) for i in range(count)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(render_video, *zip(*jobs, strict=True)))
    return [Path(j[0]) for j in jobs]


def compress(src: Path, dst: Path, options: list[str], workers: int) -> None:
    """Run `mugstan data compress` as a user would."""
    cmd = [
        sys.executable,
        "-m",
        "mugstan.cli",
        "data",
        "compress",
        str(src),
        str(dst),
        "--workers",
        str(workers),
        *options,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_annotations(folder: Path, videos: list[Path], path: Path) -> Path:
    """JSONL annotations: each video with two captions (retrieval training pairs)."""
    with open(path, "w") as f:
        for i, v in enumerate(videos):
            f.write(json.dumps({"video": v.name, "caption": [CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]]}) + "\n")
    return path


def shard_folder(folder: Path, videos: list[Path], out: Path) -> str:
    """The folder's videos as tar shards of 4 samples (`mugstan data shard`, each video's first caption
    as VIDEO.txt beside it); returns the data.shards pattern."""
    for i, v in enumerate(videos):
        v.with_suffix(".txt").write_text(CAPTIONS[i % 4])
    manifest = write_shards(source_samples(str(folder), [], "train"), out, 4, progress=False)
    return str(out / f"{{00000..{len(manifest['shards']) - 1:05d}}}.tar")


def loader_rate(
    cfg: DataConfig,
    train: bool,
    workers: int,
    clips: int,
    batch_size: int,
    tokenizer,
    uint8: bool = False,
    seconds: float = 4.0,
    shards: str = "",
) -> float:
    """Clips/s of the DataLoader with ``workers`` processes, after each worker's first batch, over
    ``clips`` clips or ``seconds`` (whichever ends first). ``uint8``: the clips leave the workers
    cropped but not normalised (normalised on the GPU instead). ``shards``: the training stream
    of these shards (``ShardStream``, as `mugstan train` builds it; shuffle buffer of 8 samples)."""
    if shards:
        stream = ShardStream(
            replace(cfg, dataset="webdataset", shards=shards, epoch_samples=10**6, shuffle_buffer=8),
            tokenizer,
            batch_size=batch_size,
        )
        loader = stream.loader(workers)
    elif train:
        dataset = build_dataset(cfg, "train", tokenizer, train=True, pairs=True, uint8=uint8)
    else:
        dataset = build_dataset(cfg, "test", train=False, pairs=False, uint8=uint8)
    # Warm-up: every batch the workers were given at start (PREFETCH per worker) is taken before
    # the clock starts, so none of the timed batches was built while the workers started up or
    # while the queue was filling: the window sees the steady state only.
    if not shards:
        index = [i % len(dataset) for i in range(clips + batch_size * (PREFETCH * workers + 1))]
        loader = DataLoader(
            torch.utils.data.Subset(dataset, index),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate,
            prefetch_factor=PREFETCH if workers else None,
        )
    it = iter(loader)
    for _ in range(PREFETCH * max(1, workers)):
        next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += batch["frames"].shape[0]
        if n >= clips or time.perf_counter() - start > seconds:
            break
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def breakdown(cfg: DataConfig, paths: list[Path], repeats: int) -> dict[str, float]:
    """Milliseconds per training clip in one process: decode (open, probe, seek, decode, convert and
    resize to short side 224), random resized crop, normalise to float."""
    transform = ClipTransform(cfg.image_size, True, cfg.crop_scale)
    times = {"decode": 0.0, "crop+resize": 0.0, "normalise": 0.0}  # ms per clip
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    n = 0
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            frames = read_clip(p, cfg.num_frames, True, cfg.image_size, rng=rng)
            t1 = time.perf_counter()
            crop = transform.crop(frames, gen)
            t2 = time.perf_counter()
            normalize(crop)
            t3 = time.perf_counter()
            times["decode"] += t1 - t0
            times["crop+resize"] += t2 - t1
            times["normalise"] += t3 - t2
            n += 1
    return {k: 1000 * v / n for k, v in times.items()}


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.mp4")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 videos of 10-12 s per shape, fewer clips timed")
    parser.add_argument("--videos", type=int, default=8, help="videos per shape")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=None, help="worker counts (default 1, 2, 4, ... up to the cores)"
    )
    parser.add_argument(
        "--clips", type=int, default=None, help="clips timed per measurement at most (default 48 x workers, 16 quick)"
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="time per measurement at most, after the warm-up batches"
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="clips per batch (small, so that slow layouts warm up fast)"
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument(
        "--gpu-clips", type=float, default=870.0, help="clips/s one GPU consumes (issue 20: STAN B/32 on an H100)"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=list(MODES),
        help="loaders to time (train_shards: the same videos from tar shards)",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    modes = args.modes

    cores = len(os.sched_getaffinity(0))
    workers = args.workers or sorted({1, *[2**k for k in range(1, 8) if 2**k <= cores], cores})
    count, durations = (2, (10.0, 12.0)) if args.quick else (args.videos, (10.0, 30.0))
    torch.set_num_threads(1)  # the workers get one thread each (DataLoader does so too); the main process only collects
    tokenizer = Tokenizer(32)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for shape in args.shapes:
            t0 = time.perf_counter()
            make_videos(tmp / shape / "raw", SHAPES[shape], count, durations, seed=100, workers=cores)
            print(
                f"rendered {count} {shape} videos of {durations[0]:.0f}-{durations[1]:.0f} s "
                f"in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for name in args.layouts:
                folder = tmp / shape / "raw"
                if LAYOUTS[name] is not None:
                    folder = tmp / shape / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
                    compress(tmp / shape / "raw", folder, LAYOUTS[name], cores)
                videos = sorted(folder.glob("*.mp4"))
                ann = write_annotations(folder, videos, tmp / shape / f"{folder.name}.jsonl")
                cfg = DataConfig(
                    dataset="jsonl",
                    root=str(folder),
                    train_ann=str(ann),
                    test_ann=str(ann),
                    num_frames=12,
                    image_size=224,
                )
                row = {
                    "shape": shape,
                    "layout": name,
                    "mb": folder_mb(folder),
                    "videos": len(videos),
                    "ms": breakdown(cfg, videos, 1 if args.quick else 2),
                    **{mode: {} for mode in modes},
                }
                shards = (
                    shard_folder(folder, videos, tmp / shape / f"{folder.name}_shards")
                    if "train_shards" in modes
                    else ""
                )
                row["shard_mb"] = (
                    sum(p.stat().st_size for p in (tmp / shape / f"{folder.name}_shards").glob("*.tar")) / 1e6
                    if shards
                    else None
                )
                for w in workers:
                    clips = args.clips or (16 if args.quick else 48 * w)
                    for mode in modes:
                        row[mode][w] = loader_rate(
                            cfg,
                            mode != "eval",
                            w,
                            clips,
                            args.batch,
                            tokenizer,
                            mode == "train_uint8",
                            args.seconds,
                            shards if mode == "train_shards" else "",
                        )
                results.append(row)
                print(
                    f"  {shape} {name}: {row['mb']:.1f} MB; clips/s by workers: "
                    + "; ".join(
                        f"{mode} " + ", ".join(f"{w}w {r:.1f}" for w, r in row[mode].items()) for mode in modes
                    ),
                    flush=True,
                )
                if args.json:
                    write_json(args.json, cores, workers, count, durations, args.gpu_clips, results)
    print_tables(results, workers, cores, args.gpu_clips, count, durations, args.batch, modes)


def write_json(
    path: str, cores: int, workers: list[int], count: int, durations, gpu_clips: float, results: list[dict]
) -> None:
    Path(path).write_text(
        json.dumps(
            {
                "cores": cores,
                "workers": workers,
                "videos": count,
                "durations": durations,
                "gpu_clips": gpu_clips,
                "results": results,
            },
            indent=1,
        )
    )


def print_tables(
    results: list[dict],
    workers: list[int],
    cores: int,
    gpu_clips: float,
    count: int,
    durations,
    batch: int,
    modes: list[str],
) -> None:
    wmax = max(workers)
    print(
        f"\n{count} videos per shape, {durations[0]:.0f}-{durations[1]:.0f} s at 30 fps; "
        f"12 frames at 224 px, batches of {batch}; "
        f"{cores} cores present; per worker = clips/s / workers\n"
    )
    head = " | ".join(f"{w} w" for w in workers)
    for mode in modes:
        print(f"{MODES[mode]}: clips/s\n")
        print(
            f"| video | layout | MB on disk | {head} "
            f"| per worker at {wmax} w | cores per GPU at {gpu_clips:.0f} clips/s |"
        )
        print("|---|---|---:|" + "---:|" * len(workers) + "---:|---:|")
        for r in results:
            per = r[mode][wmax] / wmax
            print(
                f"| {r['shape']} | {r['layout']} | {r['mb']:.1f} | "
                + " | ".join(f"{r[mode][w]:.1f}" for w in workers)
                + f" | {per:.1f} | {gpu_clips / per:.0f} |"
            )
        print()
    print("one process, milliseconds per training clip\n")
    print(
        "| video | layout | decode (open, seek, decode, to RGB at short side 224) "
        "| random resized crop | normalise | clips/s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        ms = r["ms"]
        print(
            f"| {r['shape']} | {r['layout']} | {ms['decode']:.1f} | {ms['crop+resize']:.1f} "
            f"| {ms['normalise']:.1f} | {1000 / sum(ms.values()):.1f} |"
        )


if __name__ == "__main__":
    main()
