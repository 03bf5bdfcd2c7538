"""Numeric precision: ``train.precision`` (auto | fp32 | bf16 | fp16) resolved for a device, and its
autocast context. Weights stay fp32 throughout (autocast computes in the lower precision).
"""

from __future__ import annotations

import contextlib

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16
    or AMX. Elsewhere bf16 matrix products are emulated, and on a plain AVX2 CPU they run 10-100x
    slower than fp32 (measured on this project's development machines)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision -> what runs: "auto" is bf16 where the device has it natively, else fp16 on
    CUDA (with loss scaling) and fp32 on a CPU; "fp32", "bf16" and "fp16" are taken as given."""
    if precision != "auto":
        return str(precision)
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``train.precision`` (resolved for ``device``); fp32 weights throughout."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
