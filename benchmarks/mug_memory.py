"""Peak memory and time of Mug similarity for many texts x videos, chunked, in both modes.

    python benchmarks/mug_memory.py [--texts 1000 --videos 1000 --words 32 --frames 12 --dim 512 --chunk 128]

Each measurement runs in a fresh process; the peak is the growth of the process's maximum
resident set (CPU) or torch.cuda.max_memory_allocated (GPU) over the inputs already in memory.
A dense [texts, videos, words, frames] fp32 tensor, as the reference builds, is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def measure(args: argparse.Namespace) -> dict:
    from mugstan.heads.mug import mug_similarity

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(args.texts, args.words, args.dim, generator=g), dim=-1).to(device)
    v = F.normalize(torch.randn(args.videos, args.frames, args.dim, generator=g), dim=-1).to(device)
    tm = (torch.arange(args.words) < torch.randint(4, args.words + 1, (args.texts, 1), generator=g)).to(device)
    vm = torch.ones(args.videos, args.frames, dtype=torch.bool, device=device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    scores = mug_similarity(t, tm, v, vm, mode=args.mode, chunk=args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"mode": args.mode, "seconds": time.perf_counter() - start, "peak_bytes": peak, "shape": list(scores.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    dense = args.texts * args.videos * args.words * args.frames * 4
    print(f"Mug similarity, {args.texts} texts x {args.videos} videos, L={args.words}, T={args.frames}, "
          f"E={args.dim}, chunk {args.chunk}, device {args.device}\n")
    print("| mode | time (s) | peak extra memory (MiB) | under 1 GiB |")
    print("|---|---:|---:|---|")
    for mode in ("simple", "full"):
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True, capture_output=True, text=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {r['seconds']:.1f} | {r['peak_bytes'] / 2**20:.0f} "
            f"| {'yes' if r['peak_bytes'] < 2**30 else 'NO'} |"
        )
    print(
        f"| dense reference, one [A, B, L, T] fp32 tensor | - | {dense / 2**20:.0f} "
        f"| {'yes' if dense < 2**30 else 'NO'} |"
    )


if __name__ == "__main__":
    main()
