"""Video tokens per video and seconds per answer of the video chat model (tiny random LLaVA, CPU or GPU).

    python benchmarks/chat_speed.py [--frames 8 --new-tokens 16 --iters 5 --device cpu --out benchmarks/results/chat.md]

Writes a tiny LLaVA offline (``mugstan.chat.tiny``: CLIP ViT width 64 on 32-px frames, P = 16; 2-layer
Llama width 64), renders one synthetic clip, and times, per token scheme: decoding the video file
(PyAV, T frames), encoding it into video tokens (tower + branch + projector) and a whole greedy answer of at
most ``--new-tokens`` tokens (prompt prefill included; the random model may stop earlier at </s>: the tokens it
generated are counted and the per-token time divides by them). Median of ``--iters``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mugstan.chat.cli import read_video
from mugstan.chat.tiny import make_tiny_llava
from mugstan.config import ChatConfig, ExperimentConfig, ModelConfig
from mugstan.data.synthetic import SynthParams, render_clip, write_video
from mugstan.models import build_model

SCHEMES = [("CLIP frames, T + P tokens (Video-ChatGPT pooling)", "none", "temporal_spatial"),
           ("STAN, T + P tokens", "stan", "temporal_spatial"),
           ("CLIP frame mean, P tokens (order-blind)", "none", "frame_mean")]


def median_seconds(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llava = make_tiny_llava(tmp / "llava", ["USER: ASSISTANT: which way does the red circle move? left right"])
        clip, _ = render_clip(
            "red", "circle", ("left", "right"), SynthParams(videos=2, frames=16, size=64), np.random.default_rng(0)
        )
        write_video(tmp / "clip.mp4", clip)
        rows = []
        for title, branch, tokens in SCHEMES:
            cfg = ExperimentConfig(
                model=ModelConfig(task="chat", branch=branch, chat=ChatConfig(llava=str(llava), video_tokens=tokens))
            )
            cfg.model.stan.depth = 2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(cfg.model).to(device).eval()
            frames, mask = read_video(model, cfg, str(tmp / "clip.mp4"), args.frames)
            frames, mask = frames.to(device), mask.to(device)
            turns = [[("which way does the red circle move?", None)]]
            decode = median_seconds(
                lambda model=model, cfg=cfg: read_video(model, cfg, str(tmp / "clip.mp4"), args.frames), args.iters
            )
            with torch.no_grad():
                encode = median_seconds(
                    lambda model=model, frames=frames, mask=mask: model.projector(model.video_tokens(frames, mask)[0]),
                    args.iters,
                )
            answer = median_seconds(
                lambda model=model, frames=frames, mask=mask, turns=turns: model.answer(
                    frames, mask, turns, max_new_tokens=args.new_tokens
                ),
                args.iters,
            )
            text = model.answer(frames, mask, turns, max_new_tokens=args.new_tokens)[0]
            generated = (
                len(model.tokenizer.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
            )  # + </s> when it stopped early
            generated = min(generated, args.new_tokens)
            prompt = len(model.tokenizer.prompt_ids(turns[0], args.frames))
            rows.append((title, model.num_video_tokens(args.frames), prompt, decode, encode, answer, generated))
    where = (
        f"{cpu_name()}, {torch.get_num_threads()} threads"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device)
    )
    lines = [
        f"Tiny random LLaVA (ViT width 64, 32-px frames, P = 16; Llama 2 x 64), {args.frames} frames, "
        f"greedy answers of at most {args.new_tokens} tokens, fp32 on {device.type} ({where}); median of {args.iters}.",
        "",
        "| video tokens from | tokens per video | prompt tokens | decode video (s) | encode video (s) "
        "| whole answer (s) | tokens generated | per generated token (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, n, prompt, decode, encode, answer, generated in rows:
        lines.append(
            f"| {title} | {n} | {prompt} | {decode:.3f} | {encode:.4f} "
            f"| {answer:.3f} | {generated} | {1000 * answer / generated:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
