"""How idle OpenMP threads should wait on a small CPU, side by side: training steps per second of
the synthetic demo's STAN-self (mugstan-tiny, 32 clips x 8 frames of 32 px, forward + backward +
AdamW) in a fresh process per setting, once alone and once with two such processes sharing the
cores (as beside another job).

    python benchmarks/openmp_wait.py [--steps 40]

Settings: OMP_WAIT_POLICY=PASSIVE (threads sleep at once), GOMP_SPINCOUNT=4000 (a spin bounded to
some microseconds, what the ``mugstan`` command sets), GOMP_SPINCOUNT=20000, and libgomp's default
(no variable: 300000 spins). The variables are read when PyTorch's OpenMP runtime loads, so each
setting needs its own process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SETTINGS = {
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=4000": {"GOMP_SPINCOUNT": "4000"},
    "GOMP_SPINCOUNT=20000": {"GOMP_SPINCOUNT": "20000"},
    "libgomp default": {},
}

CHILD = """
import sys, time, torch
from mugstan.config import ModelConfig, STANConfig
from mugstan.losses import build_loss
from mugstan.models import build_model
torch.manual_seed(0)
torch.set_flush_denormal(True)
cfg = ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", \
stan=STANConfig(depth=2, drop_path=0.0), context_length=16)
model = build_model(cfg).train()
loss_fn = build_loss(cfg, model)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
frames, ids = torch.randn(32, 8, 3, 32, 32), torch.randint(1, 400, (32, 16))
def step():
    out = model(frames, torch.ones(32, 8, dtype=torch.bool), ids, torch.ones_like(ids, dtype=torch.bool))
    loss_fn(out, {}).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(5):
    step()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print(int(sys.argv[1]) / (time.perf_counter() - start))
"""


def run(setting: dict, steps: int, copies: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | setting
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(steps)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; steps/s of one training process (two at once: each of the two)\n")
    print("| setting | alone | two at once |\n|---|---:|---:|")
    for name, setting in SETTINGS.items():
        alone = run(setting, args.steps, 1)[0]
        both = run(setting, args.steps, 2)
        print(f"| {name} | {alone:.2f} | {' / '.join(f'{x:.2f}' for x in both)} |", flush=True)


if __name__ == "__main__":
    main()
