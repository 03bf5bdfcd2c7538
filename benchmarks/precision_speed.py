"""What ``train.precision: auto`` should pick on this machine: fp32 vs bf16 autocast, side by side.

    python benchmarks/precision_speed.py [--device cpu] [--iters 3]

Rows: a 2048-square matrix product; one training step (forward + backward) of the synthetic
demo's STAN-self (mugstan-tiny, 32 clips x 8 frames of 32 px) and of ViT-B/32's image tower on 16
images of 224 px. Then what ``auto`` resolves to here for each of the two models, from the probe it
measures at the model's width (``mugstan.engine.precision``). Prints the CPU model, since the answer
depends on it.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mugstan.engine.precision import CPU_BF16_MIN_SPEEDUP, cpu_bf16_speedup, linear_width, resolve_precision


def best_time(fn, iters: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def under(dtype, fn):
    def run():
        with torch.autocast(
            "cpu" if DEVICE.type == "cpu" else DEVICE.type, dtype=torch.bfloat16, enabled=dtype == "bf16"
        ):
            out = fn()
        if out is not None:
            out.float().sum().backward()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    return run


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    import open_clip

    from mugstan.config import ModelConfig, STANConfig
    from mugstan.models import build_model

    a = torch.randn(2048, 2048, device=DEVICE)
    stan = (
        build_model(
            ModelConfig(
                backbone="mugstan-tiny",
                branch="stan",
                head="mean",
                context_length=16,
                stan=STANConfig(depth=2, drop_path=0.0),
            )
        )
        .to(DEVICE)
        .train()
    )
    frames = torch.randn(32, 8, 3, 32, 32, device=DEVICE)
    mask = torch.ones(32, 8, dtype=torch.bool, device=DEVICE)
    ids, text_mask = (t.to(DEVICE) for t in stan.tokenize(["a red circle moves left"] * 32))
    vit = open_clip.create_model("ViT-B-32").visual.to(DEVICE).train()
    images = torch.randn(16, 3, 224, 224, device=DEVICE)

    def stan_step():
        out = stan(frames, mask, ids, text_mask)
        return (out["text"].x @ out["video"].x.T).float()

    rows = [
        (
            "2048-square matrix product",
            lambda dt: (
                lambda: torch.mm(
                    a.to(torch.bfloat16 if dt == "bf16" else torch.float32),
                    a.to(torch.bfloat16 if dt == "bf16" else torch.float32),
                )
            ),
        ),
        ("STAN-self step, mugstan-tiny, 32 x 8 frames of 32 px", lambda dt: under(dt, stan_step)),
        ("ViT-B/32 image-tower step, 16 images of 224 px", lambda dt: under(dt, lambda: vit(images))),
    ]
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {DEVICE}\n")
    print("| work | fp32 ms | bf16 ms | bf16 speed-up |\n|---|---:|---:|---:|")
    for name, make in rows:
        fp32, bf16 = (best_time(make(dt), args.iters) * 1000 for dt in ("fp32", "bf16"))
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |")
    if DEVICE.type == "cpu":
        for label, model in (("mugstan-tiny STAN", stan), ("ViT-B/32", vit)):
            width = linear_width(model)
            print(
                f"\ntrain.precision auto for {label} -> {resolve_precision('auto', DEVICE, width=width)} "
                f"(a transformer block of its width {width}: bf16 speed-up {cpu_bf16_speedup(width):.2f}x; "
                f"bf16 needs >= {CPU_BF16_MIN_SPEEDUP}x)"
            )
    else:
        print(f"\ntrain.precision auto -> {resolve_precision('auto', DEVICE)}")

if __name__ == "__main__":
    main()
