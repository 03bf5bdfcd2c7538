"""Numeric precision: ``train.precision`` (auto | fp32 | bf16 | fp16) resolved for a device, and its
autocast context. Weights stay fp32 throughout (autocast computes in the lower precision).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Optional

import torch

# auto picks bf16 on a CPU only when its bf16 matrix product is at least this much faster than fp32
CPU_BF16_MIN_SPEEDUP = 1.25


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(size: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a ``size``-square matrix product on this CPU (best of ``repeats``;
    about 0.1 s, measured once per process).

    CPU flags do not say it: on an AVX2-only CPU emulated bf16 ran 10-100x slower than fp32, and
    on a 2-vCPU Xeon that reports AVX512-BF16 a 2048-square bf16 product took 2x as long as fp32
    and a ViT-B/32 training step 1.8x (``benchmarks/precision_speed.py``).
    """
    a = torch.randn(size, size)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        torch.mm(x, x)  # warm-up: kernel selection
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(x, x)
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 pays on ``device``: a CUDA GPU that supports it, or a CPU whose bf16 matrix
    product measures at least ``CPU_BF16_MIN_SPEEDUP`` x faster than fp32 (``cpu_bf16_speedup``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP
    return False


def resolve_precision(precision: str, device: torch.device, bf16_pays: Optional[bool] = None) -> str:
    """train.precision -> what runs: "auto" is bf16 where it pays (bf16_pays, measured by
    ``fast_bf16(device)`` unless given), else fp16 on CUDA (with loss scaling) and fp32 on a CPU;
    "fp32", "bf16" and "fp16" are taken as given."""
    if precision != "auto":
        return str(precision)
    if fast_bf16(device) if bf16_pays is None else bf16_pays:
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``train.precision`` (resolved for ``device``); fp32 weights throughout."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
