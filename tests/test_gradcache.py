"""Gradient caching gives the full-batch gradient: meanP, STAN and Mug, 1 and 2 gloo processes."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mugstan.config import ModelConfig, STANConfig
from mugstan.engine.gradcache import RandomState, average_gradients, gradcache_backward
from mugstan.models import build_model

CASES = {"meanP": dict(temporal="meanP"), "stan": dict(temporal="stan"), "mug": dict(temporal="stan", head="mug")}
N = 8


def make_model(case: str, drop_path: float = 0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="mugstan-tiny", stan=STANConfig(depth=2, drop_path=drop_path), context_length=12, **CASES[case])
    model = build_model(cfg).train().double()  # float64: compare the algorithm, not fp32 summation order
    with torch.no_grad():  # STAN's zero-initialised projections would hide the temporal path
        for name, p in model.named_parameters():
            if "temporal_fc" in name:
                p.normal_(0, 0.05)
    return model


def make_batch():
    g = torch.Generator().manual_seed(1)
    from mugstan.backbones.clip import Tokenizer

    ids, mask = Tokenizer(12)([f"a {c} shape moves {d}" for c in ("red", "blue", "green", "white") for d in ("left", "up")])
    frame_mask = torch.ones(N, 4, dtype=torch.bool)
    frame_mask[3, 3:] = False
    return {"frames": torch.randn(N, 4, 3, 32, 32, generator=g, dtype=torch.float64), "frame_mask": frame_mask, "ids": ids, "text_mask": mask}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def full_batch_grads(case):
    model, batch = make_model(case), make_batch()
    loss = model(batch["frames"], batch["frame_mask"], batch["ids"], batch["text_mask"])
    loss.backward()
    return loss.detach(), grads(model)


def assert_close_relative(a: dict, b: dict, tol: float = 1e-5):
    """||a - b|| / ||a|| below tol for every parameter's gradient (fp32 summation order aside)."""
    assert a.keys() == b.keys()
    for name in a:
        err = (a[name] - b[name]).norm() / a[name].norm().clamp(min=1e-20)
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_one_process_matches_full_batch(case):
    loss, ref = full_batch_grads(case)
    model, batch = make_model(case), make_batch()
    cached = gradcache_backward(model, batch, chunk_size=3, device=torch.device("cpu"))
    assert torch.allclose(cached, loss, rtol=1e-6)
    assert_close_relative(ref, grads(model))
    assert model.logit_scale.log_scale.grad is not None


def _worker(rank, case, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model, batch = make_model(case), make_batch()
    half = {k: v[rank * N // 2:(rank + 1) * N // 2] for k, v in batch.items()}
    loss = gradcache_backward(model, half, chunk_size=3, device=torch.device("cpu"))
    average_gradients(model)
    torch.save((loss, grads(model)), os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_match_full_batch(tmp_path, case):
    mp.spawn(_worker, args=(case, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    loss, ref = full_batch_grads(case)
    for rank in range(2):
        r_loss, r_grads = torch.load(tmp_path / f"{rank}.pt")
        assert torch.allclose(r_loss, loss, rtol=1e-6)
        assert_close_relative(ref, r_grads)


def test_random_state_replays_drop_path():
    model, batch = make_model("stan", drop_path=0.5), make_batch()
    state = RandomState()
    first = model.encode_video(batch["frames"], batch["frame_mask"]).x
    with state.replay():
        again = model.encode_video(batch["frames"], batch["frame_mask"]).x
    other = model.encode_video(batch["frames"], batch["frame_mask"]).x
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_unsupported_combinations():
    cfg = ModelConfig(backbone="mugstan-tiny", task="recognition", class_names=["a", "b"], classifier="linear")
    with pytest.raises(ValueError, match="contrastive video-text models"):
        gradcache_backward(build_model(cfg), make_batch(), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        gradcache_backward(make_model("meanP"), make_batch(), 0, torch.device("cpu"))
