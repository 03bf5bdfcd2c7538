"""AdamW step time: PyTorch's per-parameter loop, ``foreach`` and ``fused``, on the parameter groups
of real models. ``mugstan.engine.optim.build_optimizer`` runs ``foreach`` on GPUs (PyTorch's
default there, bitwise the authors' optimizer) and ``fused`` on a CPU.

    python benchmarks/optimizer_speed.py [--iters 10]

Every parameter has a gradient (as after the text tower is unfrozen). Also prints how far each
kernel's weights are from the per-parameter loop's after 5 steps (0 = bitwise the same).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from mugstan.config import ModelConfig, STANConfig
from mugstan.engine.optim import param_groups
from mugstan.models import build_model

KERNELS = {"per-parameter loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def adamw(model, kernel: dict) -> torch.optim.AdamW:
    groups = [{"params": g["params"], "weight_decay": 0.05 if g["decay"] else 0.0} for g in param_groups(model)]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, **kernel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(
        "| model | parameters | " + " | ".join(f"{k} ms" for k in KERNELS) + " | foreach max diff | fused max diff |\n"
        "|---|---:|" + "---:|" * (len(KERNELS) + 2)
    )
    for name, backbone in (("mugstan-tiny + STAN (the demo)", "mugstan-tiny"), ("ViT-B/32 + STAN", "ViT-B-32")):
        torch.manual_seed(0)
        base = build_model(
            ModelConfig(backbone=backbone, branch="stan", head="mean", stan=STANConfig(depth=4, drop_path=0.0))
        )
        grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
        times, weights = {}, {}
        for kernel, options in KERNELS.items():
            model = copy.deepcopy(base)
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt = adamw(model, options)
            for _ in range(5):
                opt.step()
            weights[kernel] = [p.detach().clone() for p in model.parameters()]
            start = time.perf_counter()
            for _ in range(args.iters):
                opt.step()
            times[kernel] = (time.perf_counter() - start) / args.iters * 1000
        loop = weights["per-parameter loop"]
        diff = {
            k: max((a - b).abs().max().item() for a, b in zip(loop, weights[k], strict=True))
            for k in ("foreach", "fused")
        }
        n = sum(p.numel() for p in base.parameters())
        print(
            f"| {name} | {n / 1e6:.1f} M | "
            + " | ".join(f"{times[k]:.1f}" for k in KERNELS)
            + f" | {diff['foreach']:.0e} | {diff['fused']:.0e} |"
        )


if __name__ == "__main__":
    main()
