"""Numeric precision: ``train.precision`` (auto | fp32 | bf16 | fp16) resolved for a device, and its
autocast context. Weights stay fp32 throughout (autocast computes in the lower precision).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from typing import Optional

import torch

# auto picks bf16 on a CPU only when a training step of a transformer block of the model's width
# runs at least this much faster in bf16 than in fp32
CPU_BF16_MIN_SPEEDUP = 1.25
# a warm-up pair in which bf16 ran at under this fraction of fp32's speed ends the probe: bf16 is
# emulated there (AVX2 kernels: 0.19-0.25x at width 64 and 0.04-0.05x at 768, where the full probe
# took 34 s), and no CPU that pays was seen below 0.63x in its first pair (the Xeon with AMX)
CPU_BF16_HOPELESS = 1 / 3


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(width: int = 1024, repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of one training step (forward and backward) of a pre-norm
    transformer block of ``width`` (heads of 64, MLP 4x) on sequences of 50 tokens, on one thread
    of this CPU: the median over ``repeats`` back-to-back pairs after two warm-up pairs (measured
    once per process and width; 0.8 s at width 64 and 5 s at 768 on a loaded 2-core machine).

    Neither CPU flags nor a large matrix product say it. On an AVX2-only CPU emulated bf16 ran
    10-100x slower than fp32; on a 2-vCPU Xeon that reports AVX512-BF16 a 2048-square bf16
    product took 2x as long as fp32; on a 2-vCPU Xeon with AMX a 1024-square bf16 product ran
    3.8x faster than fp32 while the demo's width-64 STAN step ran at 0.60x, and this block
    measured 0.8-1.1x at width 64 and 1.6-2.0x at 768 (ViT-B/32's image tower: 1.68x;
    ``benchmarks/precision_speed.py``). Autocast's casts, norms and attention decide a narrow
    model's step, which is what this times. One thread and the median of pairs, because on a
    loaded 2-core machine two-thread timings of a few milliseconds stalled at random: the best
    of five gave 0.9 to 4.7 at width 64 there, the median of one-thread pairs 1.0-1.2.
    """
    block = torch.nn.TransformerEncoderLayer(
        width, max(1, width // 64), 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    x = torch.randn(max(8, round(2**23 / (50 * width * width))), 50, width, requires_grad=True)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = block(x)
        y.float().sum().backward()
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # callers may be inside no_grad (evaluation)
            return median_speedup(step, repeats)
    finally:
        torch.set_num_threads(threads)


def median_speedup(step, repeats: int = 5) -> float:
    """fp32 time / bf16 time from ``step(bf16: bool) -> seconds``: two warm-up pairs (kernel
    selection; fp32 settled after 3-4 steps), then the median of ``repeats`` back-to-back pairs. A
    warm-up pair under ``CPU_BF16_HOPELESS`` is returned at once: bf16 is emulated and far slower
    (on an AVX2-only CPU the probe then takes one pair, 5 s at width 768, instead of 34 s)."""
    for _ in range(2):
        warm = step(False) / step(True)
        if warm < CPU_BF16_HOPELESS:
            return warm
    return statistics.median(step(False) / step(True) for _ in range(repeats))


def linear_width(model: torch.nn.Module) -> int:
    """The input width of the linear layers that hold most of ``model``'s linear weights (768 for
    a ViT-B CLIP, 64 for mugstan-tiny): the width at which it does most of its work. 1024 for a
    model without linear layers."""
    totals: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            totals[module.in_features] = totals.get(module.in_features, 0) + module.weight.numel()
    return max(totals, key=totals.__getitem__) if totals else 1024


def fast_bf16(device: torch.device, width: int = 1024) -> bool:
    """Whether bf16 pays on ``device`` for a model of ``width`` (``linear_width``): a CUDA GPU that
    supports it, or a CPU where a transformer block of that width trains at least
    ``CPU_BF16_MIN_SPEEDUP`` x faster in bf16 (``cpu_bf16_speedup``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_speedup(width) >= CPU_BF16_MIN_SPEEDUP
    return False


def resolve_precision(
    precision: str, device: torch.device, bf16_pays: Optional[bool] = None, width: int = 1024
) -> str:
    """train.precision -> what runs: "auto" is bf16 where it pays (bf16_pays, measured by
    ``fast_bf16(device, width)`` unless given; ``width``: the model's ``linear_width``), else fp16
    on CUDA (with loss scaling) and fp32 on a CPU; "fp32", "bf16" and "fp16" are taken as given."""
    if precision != "auto":
        return str(precision)
    if fast_bf16(device, width) if bf16_pays is None else bf16_pays:
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast_for(device: torch.device, precision: str, width: int = 1024):
    """The autocast context of ``train.precision`` (resolved for ``device`` and a model of ``width``,
    its ``linear_width``); fp32 weights throughout."""
    precision = resolve_precision(precision, device, width=width)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
