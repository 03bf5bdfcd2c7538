"""AdamW step time: PyTorch's per-parameter loop (its CPU default) vs ``foreach`` (what
``mugstan.engine.optim.build_optimizer`` uses), on the parameter groups of real models.

    python benchmarks/optimizer_speed.py [--iters 10]

Every parameter has a gradient (as after the text tower is unfrozen). Also checks that both give
bitwise the same weights after 5 steps.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from mugstan.config import ModelConfig, STANConfig
from mugstan.engine.optim import param_groups
from mugstan.models import build_model


def adamw(model, foreach: bool) -> torch.optim.AdamW:
    groups = [{"params": g["params"], "weight_decay": 0.05 if g["decay"] else 0.0} for g in param_groups(model)]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=foreach)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | parameters | per-parameter loop ms | foreach ms | speed-up | bitwise equal |\n|---|---:|---:|---:|---:|---|")
    for name, backbone in (("mugstan-tiny + STAN (the demo)", "mugstan-tiny"), ("ViT-B/32 + STAN", "ViT-B-32")):
        torch.manual_seed(0)
        base = build_model(ModelConfig(backbone=backbone, branch="stan", head="mean", stan=STANConfig(depth=4, drop_path=0.0)))
        grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
        times, weights = {}, {}
        for foreach in (False, True):
            model = copy.deepcopy(base)
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt = adamw(model, foreach)
            for _ in range(5):
                opt.step()
            weights[foreach] = [p.detach().clone() for p in model.parameters()]
            start = time.perf_counter()
            for _ in range(args.iters):
                opt.step()
            times[foreach] = (time.perf_counter() - start) / args.iters * 1000
        same = all(torch.equal(a, b) for a, b in zip(weights[False], weights[True]))
        n = sum(p.numel() for p in base.parameters())
        print(f"| {name} | {n / 1e6:.1f} M | {times[False]:.1f} | {times[True]:.1f} | {times[False] / times[True]:.1f}x | {same} |")


if __name__ == "__main__":
    main()
