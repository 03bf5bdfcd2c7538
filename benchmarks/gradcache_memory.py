"""Peak memory and clips/s of one contrastive training step: plain, accumulation, gradient caching.

    python benchmarks/gradcache_memory.py [--backbone ViT-B-32 --frames 12 --batch 128 --micro 8
        --chunks 8 16 32 --steps 1 --warmup 0 --device cpu|cuda --threads N --grad-checkpointing]
    python benchmarks/gradcache_memory.py --backbone mugstan-tiny --batch 16 --frames 4 --micro 4 --chunks 2 4 8

Model: STAN (self-attention temporal module, K=4) on ``--backbone`` with random weights (no
download) at the backbone's image size (224 px for ViT-B-32), 32 text tokens, AdamW with the
trainer's parameter groups, ``--precision`` as ``train.precision`` (auto: fp32 on CPUs without
native bf16, bf16 or fp16 on GPUs). One optimiser step over a global batch of ``--batch`` clips,
done as

- plain training: the whole batch forward and backward at once (the loss sees ``--batch`` clips);
- accumulation: ``--batch / --micro`` micro-batches of ``--micro`` clips (the loss sees ``--micro``);
- gradient caching, for each of ``--chunks``: the loss sees ``--batch`` clips, a chunk carries a graph.

Each configuration runs in a fresh process. Peak memory is that process's maximum resident set on
a CPU (everything: Python, weights, AdamW state, the batch) and ``torch.cuda.max_memory_allocated``
on a GPU. Nothing runs that is predicted not to fit: plain training at the two small ``--probe``
batches gives a linear model of the peak in the clips that carry a graph (plus the input frames
of the other clips held, on a CPU); configurations run from the smallest prediction up, each
measurement refining the model, and one predicted above ``--max-gib`` (default: 80% of the memory
available at the start, CPU MemAvailable or free GPU memory; 0 prints predictions only) is
reported as "does not fit" with its predicted peak. clips/s: ``--batch * --steps`` over the wall
time of ``--steps`` timed steps after ``--warmup`` untimed ones (a CPU shared with other jobs
makes them noisy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

GIB = 2 ** 30


def build(args: argparse.Namespace, device: torch.device):
    """Model, optimiser, and a batch factory (seeded random frames and real tokenised captions)."""
    from mugstan.config import ModelConfig, STANConfig, TrainConfig
    from mugstan.engine.optim import build_optimizer
    from mugstan.losses import build_loss
    from mugstan.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=args.backbone, pretrained=None, branch="stan", head="mean", context_length=32,
                      stan=STANConfig(depth=args.stan_depth, time_module="self", drop_path=0.1),
                      grad_checkpointing=args.grad_checkpointing)
    model = build_model(cfg).to(device).train()
    loss_fn = build_loss(cfg, model)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-6))
    size = model.backbone.image_size

    def batch(n: int, seed: int) -> dict:
        """frames [n, T, 3, S, S] float32, frame_mask [n, T], ids / text_mask [n, 32] (CPU, as the loader gives)."""
        g = torch.Generator().manual_seed(seed)
        ids, mask = model.tokenize([f"video {seed} clip {i} shows something happening" for i in range(n)])
        return {"frames": torch.randn(n, args.frames, 3, size, size, generator=g),
                "frame_mask": torch.ones(n, args.frames, dtype=torch.bool), "ids": ids, "text_mask": mask}

    return model, loss_fn, optimizer, batch


def measure(args: argparse.Namespace) -> dict:
    """Child process: ``args.run`` = "plain" | "accum" | "chunk:C"; returns peak memory and step times."""
    from mugstan.engine.gradcache import gradcache_backward
    from mugstan.engine.precision import autocast_for, resolve_precision
    from mugstan.models import model_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, loss_fn, optimizer, make_batch = build(args, device)
    precision = resolve_precision(args.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def forward_backward(batch: dict, scale: float) -> None:
        with autocast_for(device, precision):
            loss = loss_fn(model(**model_inputs(model, batch, device)), batch) * scale
        (scaler.scale(loss) if scaler else loss).backward()
    kind, _, chunk = args.run.partition(":")

    def timed(fn) -> float:
        """Seconds of ``fn()``, the device synchronised on both sides."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = []  # per optimiser step, making the random inputs (the loader's work) excluded
    for step in range(args.warmup + args.steps):
        seconds = 0.0
        if kind == "accum":  # the loader holds one micro-batch at a time
            for m in range(args.batch // args.micro):
                micro = make_batch(args.micro, 1000 * step + m)
                seconds += timed(lambda micro=micro: forward_backward(micro, args.micro / args.batch))
        elif kind == "plain":
            batch = make_batch(args.batch, 1000 * step)
            seconds += timed(lambda batch=batch: forward_backward(batch, 1.0))
        else:
            batch = make_batch(args.batch, 1000 * step)
            seconds += timed(lambda batch=batch: gradcache_backward(model, loss_fn, batch, int(chunk), device,
                                                        lambda: autocast_for(device, precision), 1.0, scaler))
        seconds += timed(lambda: (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step())
        optimizer.zero_grad(set_to_none=True)
        times.append(seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    one = make_batch(1, 0)
    return {
        "peak_bytes": peak,
        "timed_s": sum(times[args.warmup :]),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "image_size": one["frames"].shape[-1],
        "clip_bytes": sum(v.numel() * v.element_size() for v in one.values()),
    }


def child(args: argparse.Namespace, run: str, batch: int, steps: int, warmup: int) -> dict:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--backbone",
        args.backbone,
        "--frames",
        str(args.frames),
        "--batch",
        str(batch),
        "--micro",
        str(args.micro),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--stan-depth",
        str(args.stan_depth),
        "--threads",
        str(args.threads),
        "--run",
        run,
    ]
    if args.grad_checkpointing:
        argv.append("--grad-checkpointing")
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{run} (batch {batch}) failed with exit code {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_bytes(device: torch.device) -> int:
    """Memory a new process can take now: MemAvailable (CPU) or free GPU memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo: pass --max-gib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32", help="open_clip ViT name or mugstan-tiny (random weights)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=128, help="global (= contrastive) batch of one optimiser step")
    parser.add_argument("--micro", type=int, default=8, help="micro-batch of the accumulation row")
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32], help="gradient-caching chunk sizes")
    parser.add_argument("--steps", type=int, default=1, help="timed optimiser steps per configuration")
    parser.add_argument("--warmup", type=int, default=0, help="untimed optimiser steps before them")
    parser.add_argument(
        "--probe",
        type=int,
        nargs=2,
        default=[2, 4],
        metavar=("B1", "B2"),
        help="small plain batches whose peaks predict the others",
    )
    parser.add_argument(
        "--max-gib",
        type=float,
        default=None,
        help="largest predicted peak to run (default: 80%% of what is available; 0: predictions only)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", help="train.precision: auto | fp32 | bf16 | fp16")
    parser.add_argument("--stan-depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default, every core)")
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="model.grad_checkpointing in every configuration"
    )
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(args)))
        return
    if args.batch % args.micro:
        parser.error(f"--batch {args.batch} is not divisible by --micro {args.micro}")
    device = torch.device(args.device)
    limit = args.max_gib * GIB if args.max_gib is not None else 0.8 * available_bytes(device)

    # Memory model: peak = base + per_clip * clips with a graph + input_clip * other clips held,
    # fitted on the two largest distinct graph sizes measured so far: first the --probe batches
    # (plain training, two steps each, so AdamW's state exists), then every configuration run.
    b1, b2 = args.probe
    if not 0 < b1 < b2:
        parser.error("--probe needs two batch sizes, the smaller first")
    probe = child(args, "plain", b1, steps=2, warmup=0)
    input_clip = 0 if device.type == "cuda" else probe["clip_bytes"]  # the batch waits in host memory
    graph_peaks = {b1: probe["peak_bytes"], b2: child(args, "plain", b2, steps=2, warmup=0)["peak_bytes"]}

    def predict(graph: int, held: int) -> float:
        (n1, y1), (n2, y2) = sorted(graph_peaks.items())[-2:]
        per_clip = max(y2 - y1, 0) / (n2 - n1)
        return y2 + per_clip * (graph - n2) + input_clip * (held - graph)

    configs = [
        ("plain training", args.batch, args.batch, args.batch, "plain"),
        (f"accumulation, {args.batch // args.micro} x {args.micro}", args.micro, args.micro, args.micro, "accum"),
    ]
    configs += [(f"gradient caching, chunk {c}", args.batch, c, args.batch, f"chunk:{c}") for c in args.chunks]
    configs.sort(key=lambda c: predict(c[2], c[3]))  # smallest first: each prediction extrapolates from nearby

    print(
        f"STAN (self, K={args.stan_depth}) on {args.backbone} (random weights), "
        f"{args.frames} frames at {probe['image_size']} px, "
        f"global batch {args.batch}, device {device.type}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"torch {torch.__version__}, "
        f"{probe['precision']}, {probe['threads']} thread(s)"
        f"{', activation checkpointing' if args.grad_checkpointing else ''}; "
        f"{args.steps} timed step(s) after {args.warmup} warm-up"
    )
    print(
        f"plain-training peaks of batches {b1} and {b2}: "
        f"{graph_peaks[b1] / GIB:.2f} and {graph_peaks[b2] / GIB:.2f} GiB; "
        f"configurations predicted above {limit / GIB:.1f} GiB are not run\n",
        flush=True,
    )
    print(
        "| configuration | negatives per loss | clips with graph | peak memory (GiB) "
        "| predicted before the run (GiB) | clips/s |"
    )
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for label, negatives, graph, held, run in configs:
        predicted = predict(graph, held)
        if predicted > limit:
            verdict = "not run (--max-gib 0)" if limit == 0 else "does not fit (predicted)"
            print(f"| {label} | {negatives} | {graph} | {verdict} | {predicted / GIB:.2f} | - |", flush=True)
            continue
        r = child(args, run, args.batch, args.steps, args.warmup)
        graph_peaks[graph] = max(graph_peaks.get(graph, 0), r["peak_bytes"] - input_clip * (held - graph))
        rate = args.batch * args.steps / r["timed_s"]
        print(
            f"| {label} | {negatives} | {graph} | {r['peak_bytes'] / GIB:.2f} | {predicted / GIB:.2f} | {rate:.2f} |",
            flush=True,
        )
    print("\nCPU peaks: whole-process maximum resident set; GPU peaks: torch.cuda.max_memory_allocated")


if __name__ == "__main__":
    main()
