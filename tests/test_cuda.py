"""CUDA-only code paths (marker ``cuda``: skipped without a GPU; benchmarks/gpu_check.sh runs them).

Gradient caching's replay of the CUDA generator, the CUDA generator in a checkpoint's RNG state,
train.precision's choice on a GPU, the fused AdamW switch, train.compile with inductor, and
torchcodec decoding with NVDEC into the GPU crop.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mugstan.config import ModelConfig, STANConfig, TrainConfig
from mugstan.engine import checkpoint as ckpt
from mugstan.engine.gradcache import RandomState, gradcache_backward
from mugstan.engine.optim import build_optimizer
from mugstan.engine.precision import autocast_for, resolve_precision
from mugstan.losses import build_loss
from mugstan.models import build_model, model_inputs

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def tiny(drop_path: float = 0.0, **model) -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="mugstan-tiny", branch="stan", head="mean", stan=STANConfig(depth=2, drop_path=drop_path), **model
    )
    return build_model(cfg).to(CUDA), cfg


def batch(n: int = 6) -> dict:
    from mugstan.backbones.clip import Tokenizer

    g = torch.Generator().manual_seed(0)
    ids, text_mask = Tokenizer(32)([f"caption number {i}" for i in range(n)])
    return {
        "frames": torch.randn(n, 4, 3, 32, 32, generator=g),
        "frame_mask": torch.ones(n, 4, dtype=torch.bool),
        "ids": ids,
        "text_mask": text_mask,
    }


def test_random_state_replays_the_cuda_generator():
    state = RandomState()
    first = torch.rand(4, device=CUDA)
    here = torch.cuda.get_rng_state()
    following = torch.rand(4, device=CUDA)
    torch.cuda.set_rng_state(here)
    with state.replay():
        torch.testing.assert_close(torch.rand(4, device=CUDA), first, atol=0, rtol=0)
    torch.testing.assert_close(
        torch.rand(4, device=CUDA), following, atol=0, rtol=0
    )  # the stream goes on after the replay


def test_gradcache_with_cuda_dropout_equals_the_whole_batch():
    """Drop-path draws from the CUDA generator: the chunks' second pass must replay the first's draws."""
    model, cfg = tiny(drop_path=0.5)
    loss_fn = build_loss(cfg, model)
    b = batch()
    torch.cuda.manual_seed(1)
    loss_fn(model(**model_inputs(model, b, CUDA)), b).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.cuda.manual_seed(1)
    gradcache_backward(model, loss_fn, b, chunk_size=6, device=CUDA)  # one chunk: the same draws as the whole batch
    for n, g in whole.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, atol=1e-5, rtol=1e-4, msg=n)
    model.zero_grad(set_to_none=True)
    gradcache_backward(model, loss_fn, b, chunk_size=2, device=CUDA)  # three chunks, each replayed: finite, all present
    assert all(model.get_parameter(n).grad is not None and model.get_parameter(n).grad.isfinite().all() for n in whole)


def test_checkpoint_rng_state_restores_the_cuda_generator():
    torch.cuda.manual_seed(7)
    state = ckpt.rng_state()
    assert "cuda" in state
    expected = torch.rand(5, device=CUDA)
    torch.rand(100, device=CUDA)
    ckpt.set_rng_state(state)
    torch.testing.assert_close(torch.rand(5, device=CUDA), expected, atol=0, rtol=0)


def test_precision_auto_is_bf16_on_a_bf16_gpu():
    assert resolve_precision("auto", CUDA) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    with autocast_for(CUDA, "auto"):
        y = torch.randn(4, 4, device=CUDA) @ torch.randn(4, 4, device=CUDA)
    assert y.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_fused_adamw_switch():
    model, _ = tiny()
    assert build_optimizer(model, TrainConfig()).defaults["foreach"]
    fused = build_optimizer(model, TrainConfig(fused_adamw=True))
    assert fused.defaults["fused"]


def test_inductor_compiled_step_equals_eager():
    from mugstan.engine.compile import compile_model

    model, cfg = tiny()
    compiled = compile_model(copy.deepcopy(model))
    loss_fn = build_loss(cfg, model)
    b = batch()
    grads = []
    for m in (model, compiled):
        loss_fn(m(**model_inputs(m, b, CUDA)), b).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3, msg=n)


def test_torchcodec_decodes_on_the_gpu_into_the_crop(tmp_path):
    pytest.importorskip("torchcodec")
    from data_fixtures import write_video

    from mugstan.data.transforms import ClipTransform
    from mugstan.data.video import read_clip

    path = write_video(tmp_path / "v.mp4", frames=40, size=(64, 48), fps=8, gop=6)
    gpu = read_clip(path, 8, False, 32, decoder="torchcodec", device="cuda")
    cpu = read_clip(path, 8, False, 32, decoder="pyav")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    assert (gpu.cpu().float() - cpu.float()).abs().mean() < 4.0
    out = ClipTransform(32, train=True, uint8=True).crop(gpu, torch.Generator().manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (8, 3, 32, 32)
    assert np.isfinite(out.float().mean().item())
