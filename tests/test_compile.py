"""train.compile: compiled models equal eager ones, and recompile a bounded number of times.

The compiled models use torch.compile's "aot_eager" backend: Dynamo captures the same graphs,
AOTAutograd traces their backward, no kernels are generated (inductor's C++ build takes minutes
on the 2-core test machine). One compiled model per kind, shared by the tests (module fixture).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from mugstan.backbones.clip import Tokenizer
from mugstan.config import ConfigError, ExperimentConfig, ModelConfig, STANConfig, validate_config
from mugstan.engine.compile import compile_model, resolve_compile
from mugstan.engine.gradcache import gradcache_backward
from mugstan.losses import build_loss
from mugstan.models import build_model

pytestmark = pytest.mark.slow

KINDS = {
    "stan": dict(branch="stan", head="mean"),
    "mug": dict(branch="stan", head="mug", mug_mode="full"),
    "tdb_tab": dict(head="tdb_tab", seq_layers=1),
    "seqTransf": dict(head="seqTransf", seq_layers=1),
    "recognition": dict(branch="stan", head="mean", task="recognition", classifier="linear", num_classes=3),
}
CAPTIONS = ["a cat", "a dog jumps over a fence", "x y z", "red", "two birds"]


def model_cfg(kind: str) -> ModelConfig:
    # drop-path 0: compiled and eager code draw their random numbers differently
    return ModelConfig(backbone="mugstan-tiny", stan=STANConfig(depth=2, drop_path=0.0), **KINDS[kind])


@pytest.fixture(scope="module")
def models():
    """{kind: (eager model, compiled copy, loss_fn)}, built once for the module."""
    built = {}
    for kind in KINDS:
        torch.manual_seed(0)
        cfg = model_cfg(kind)
        eager = build_model(cfg)
        built[kind] = (eager, compile_model(copy.deepcopy(eager), backend="aot_eager"), build_loss(cfg, eager))
    return built


def make_batch(n: int, frames: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, frames, dtype=torch.bool)
    mask[-1, frames // 2:] = False  # a padded clip
    ids, text_mask = Tokenizer(32)(CAPTIONS[:n])
    return {
        "frames": torch.randn(n, frames, 3, 32, 32, generator=g),
        "frame_mask": mask,
        "ids": ids,
        "text_mask": text_mask,
        "label": torch.arange(n) % 3,
    }


def step(model, loss_fn, batch: dict) -> tuple[torch.Tensor, dict]:
    """Forward + loss + backward; returns the loss and every gradient (then cleared)."""
    torch.manual_seed(0)  # the classifier's dropout (eager in both) draws the same mask
    out = model(**{k: batch[k] for k in model.input_names})
    loss = F.cross_entropy(out["logits"], batch["label"]) if "logits" in out else loss_fn(out, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("kind", list(KINDS))
def test_compiled_forward_and_backward_equal_eager(models, kind):
    eager, compiled, loss_fn = models[kind]
    batch = make_batch(3)
    loss_e, grads_e = step(eager, loss_fn, batch)
    loss_c, grads_c = step(compiled, loss_fn, batch)
    assert grads_e.keys() == grads_c.keys() and len(grads_e) > 10
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=0)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], atol=1e-5, rtol=1e-5, msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_recompilation_is_bounded(models):
    """A training epoch with a last partial batch, gradient caching in chunks, evaluation after
    training and recognition's multi-view evaluation: the second round of all of it compiles nothing."""
    _, stan, loss_fn = models["stan"]
    _, recognition, _ = models["recognition"]

    def round_of_everything():
        stan.train()
        for n in (5, 5, 3):  # an epoch whose last batch is partial
            step(stan, loss_fn, make_batch(n, seed=n))
        gradcache_backward(stan, loss_fn, make_batch(5), chunk_size=2, device=torch.device("cpu"))  # chunks 2, 2, 1
        stan.zero_grad(set_to_none=True)
        stan.eval()
        with torch.no_grad():
            for n in (4, 2):
                b = make_batch(n)
                stan.encode_video(b["frames"], b["frame_mask"])
                stan.encode_text(b["ids"], b["text_mask"])
        recognition.eval()
        with torch.no_grad():
            for n in (4, 2):  # clips x views flattened, as evaluate.embed_clips does
                b = make_batch(n)
                recognition(b["frames"].repeat_interleave(3, 0), b["frame_mask"].repeat_interleave(3, 0))

    round_of_everything()
    first = graphs()
    round_of_everything()
    round_of_everything()
    assert graphs() == first
    assert not counters["graph_break"]  # one graph per compiled function: the frame checks run eagerly


def test_compiled_encoder_still_checks_frames(models):
    _, stan, _ = models["stan"]
    b = make_batch(2)
    b["frame_mask"][0] = False
    with pytest.raises(ValueError, match="at least one real frame"):
        stan.encode_video(b["frames"], b["frame_mask"])


def test_compile_default_is_on_for_cuda_only():
    cfg = ExperimentConfig()
    assert cfg.train.compile is None
    assert resolve_compile(None, torch.device("cuda")) and not resolve_compile(None, torch.device("cpu"))
    assert resolve_compile(True, torch.device("cpu")) and not resolve_compile(False, torch.device("cuda"))
    cfg.train.compile, cfg.model.task = True, "detection"
    with pytest.raises(ConfigError, match="train.compile=true covers retrieval and recognition"):
        validate_config(cfg, check_files=False)
