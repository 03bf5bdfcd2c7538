"""What the engine does differently on a GPU, run on a CPU through the same device-agnostic code:
the accelerators' random generators saved and replayed (gradient caching, checkpoints), the GPU
settings of training (uint8 clips, pinned memory, DDP device ids), and the automatic precision.
The ``cuda`` tests run the real CUDA paths (benchmarks/gpu_check.sh runs them where a GPU is)."""

import numpy as np
import pytest
import torch

from mugstan.engine.checkpoint import rng_state, set_rng_state
from mugstan.engine.distributed import device_generators, device_settings
from mugstan.engine.gradcache import RandomState
from mugstan.engine.precision import resolve_precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def draws(generators) -> list[torch.Tensor]:
    device = lambda g: g.device if g.device.type != "cpu" else "cpu"  # noqa: E731
    return [torch.rand(4, generator=g, device=device(g)).cpu() for g in generators]


def test_gradcache_replays_every_device_generator():
    """RandomState snapshots the CPU stream and each device generator; replay gives the chunk's
    first-pass numbers again, and afterwards every stream goes on where the first pass left it."""
    generators = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))  # two devices' generators
    state = RandomState(generators)
    first = [torch.rand(3), *draws(generators)]  # the first pass (no grad) draws its dropout masks
    after = [g.get_state() for g in generators], torch.get_rng_state()
    with state.replay():  # the second pass draws the same masks
        again = [torch.rand(3), *draws(generators)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, after[0], strict=True)) and torch.equal(
        torch.get_rng_state(), after[1]
    )


def test_checkpoint_restores_the_device_generators(tmp_path):
    """rng_state stores the device generators under "cuda" (as tensors that weights_only loading
    reads); set_rng_state puts them back, as many as this machine has."""
    generators = (torch.Generator().manual_seed(3), torch.Generator().manual_seed(4))
    state = rng_state(generators)
    assert len(state["cuda"]) == 2
    torch.save(state, tmp_path / "state.pt")
    expected = [torch.rand(2), np.random.rand(), *draws(generators)]
    set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True), generators)
    got = [torch.rand(2), np.random.rand(), *draws(generators)]
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    assert all(torch.equal(a, b) for a, b in zip(got[2:], expected[2:], strict=True))
    one = (torch.Generator().manual_seed(9),)  # a state saved with two GPUs, resumed with one
    set_rng_state(state, one)
    assert torch.equal(one[0].get_state(), state["cuda"][0])
    assert "cuda" not in rng_state(())  # a CPU-only machine stores no device state


def test_gpu_training_settings():
    assert device_settings(torch.device("cpu")) == device_settings(torch.device("cpu", 0))
    cpu, gpu = device_settings(torch.device("cpu")), device_settings(torch.device("cuda", 3))
    assert (cpu.uint8_clips, cpu.pin_memory, cpu.ddp_device_ids) == (False, False, None)
    assert (gpu.uint8_clips, gpu.pin_memory, gpu.ddp_device_ids) == (True, True, [3])


def test_automatic_precision_by_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [resolve_precision("auto", gpu, bf16_pays=b) for b in (True, False)] == [
        "bf16",
        "fp16",
    ]  # fp16 with loss scaling
    assert [resolve_precision("auto", cpu, bf16_pays=b) for b in (True, False)] == ["bf16", "fp32"]
    assert [resolve_precision(p, gpu, bf16_pays=False) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


# ---- on a GPU ---------------------------------------------------------------------------------
def test_device_generators_are_cudas_defaults():
    expected = tuple(torch.cuda.default_generators) if torch.cuda.is_available() else ()
    assert device_generators() == expected


@pytest.mark.cuda
@needs_cuda
def test_cuda_dropout_replays_on_the_gpu():
    state = RandomState()
    x = torch.ones(1000, device="cuda")
    first = torch.nn.functional.dropout(x, 0.5)
    with state.replay():
        again = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(first, again)
    assert not torch.equal(torch.nn.functional.dropout(x, 0.5), first)  # the stream went on


@pytest.mark.cuda
@needs_cuda
def test_cuda_generator_state_survives_a_checkpoint():
    state = rng_state()
    expected = torch.rand(8, device="cuda")
    torch.rand(8, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda"), expected)


@pytest.mark.cuda
@needs_cuda
def test_cuda_automatic_precision_is_bf16_where_supported():
    from mugstan.engine.precision import fast_bf16

    gpu = torch.device("cuda", 0)
    assert fast_bf16(gpu) == torch.cuda.is_bf16_supported()
    assert resolve_precision("auto", gpu) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
