"""Gradient caching gives the full-batch gradient and the full-batch loss curve.

Gradients (float64): meanP, STAN and Mug in one process and in two gloo processes, seqTransf and
CLIP2Video's TDB+TAB (on STAN too) and a recognition classifier in one; drop-path replayed under
activation checkpointing; fp16 loss scaling.
Training (fp32, deterministic, ``mugstan.engine.train.train``): the loss curve with
``train.chunk_size`` equals the full-batch curve in one process and in two gloo processes under
torchrun, and with accumulation equals plain DDP's.
"""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from data_fixtures import write_config as tiny_run_config

from mugstan.config import ConfigError, ModelConfig, STANConfig, load_config
from mugstan.data.synthetic import SynthParams, generate
from mugstan.engine.gradcache import RandomState, average_gradients, gradcache_backward
from mugstan.heads.base import Embeddings
from mugstan.losses import build_loss
from mugstan.models import build_model

CASES = {"meanP": dict(head="meanP"), "stan": dict(branch="stan", head="mean"), "mug": dict(branch="stan", head="mug")}
MORE_CASES = {"seqTransf": dict(head="seqTransf", seq_layers=2), "tdb_tab": dict(head="tdb_tab", seq_layers=2),
              "stan_tdb_tab": dict(branch="stan", head="tdb_tab", seq_layers=2),
              "recognition": dict(branch="stan", head="mean", task="recognition", classifier="linear", num_classes=3)}
N = 8
CPU = torch.device("cpu")


def model_config(case: str, drop_path: float = 0.0, grad_checkpointing: bool = False) -> ModelConfig:
    return ModelConfig(backbone="mugstan-tiny", stan=STANConfig(depth=2, drop_path=drop_path), context_length=12,
                       grad_checkpointing=grad_checkpointing, **{**CASES, **MORE_CASES}[case])


def make_model(case: str, drop_path: float = 0.0, grad_checkpointing: bool = False):
    torch.manual_seed(0)
    model = (
        build_model(model_config(case, drop_path, grad_checkpointing)).train().double()
    )  # float64: the algorithm, not fp32 summation order
    if case == "recognition":
        model.classifier.dropout.p = 0.0  # dropout draws differ between a whole batch and its chunks
    with torch.no_grad():  # STAN's zero-initialised projections would hide the temporal path
        for name, p in model.named_parameters():
            if "temporal_fc" in name:
                p.normal_(0, 0.05)
    return model


def make_batch():
    g = torch.Generator().manual_seed(1)
    from mugstan.backbones.clip import Tokenizer

    ids, mask = Tokenizer(12)(
        [f"a {c} shape moves {d}" for c in ("red", "blue", "green", "white") for d in ("left", "up")]
    )
    frame_mask = torch.ones(N, 4, dtype=torch.bool)
    frame_mask[3, 3:] = False
    return {
        "frames": torch.randn(N, 4, 3, 32, 32, generator=g, dtype=torch.float64),
        "frame_mask": frame_mask,
        "ids": ids,
        "text_mask": mask,
        "label": torch.arange(N) % 3,
    }


def loss_fn(case: str, model):
    return build_loss(model_config(case), model)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def full_batch_grads(case):
    model, batch = make_model(case), make_batch()
    inputs = {k: batch[k] for k in model.input_names}
    loss = loss_fn(case, model)(model(**inputs), batch)
    loss.backward()
    return loss.detach(), grads(model)


def assert_close_relative(a: dict, b: dict, tol: float = 1e-12, label: str = ""):
    """||a - b|| / ||a|| below tol for every parameter's gradient (summation order aside: the float64 models agree to
    5.4e-14 measured, one process or two, every case)."""
    assert a.keys() == b.keys()
    for name in a:
        err = (a[name] - b[name]).norm() / a[name].norm().clamp(min=1e-20)
        assert err < tol, f"{label} {name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", [*CASES, *MORE_CASES])
def test_one_process_matches_full_batch(case):
    loss, ref = full_batch_grads(case)
    model, batch = make_model(case), make_batch()
    cached = gradcache_backward(model, loss_fn(case, model), batch, chunk_size=3, device=CPU)
    assert torch.allclose(cached, loss, rtol=1e-12, atol=0)  # float64: measured 2.1e-16
    assert_close_relative(ref, grads(model))
    assert case == "recognition" or "logit_scale.log_scale" in ref  # the comparison covered the logit scale


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    for case in CASES:
        model, batch = make_model(case), make_batch()
        half = {k: v[rank * N // 2 : (rank + 1) * N // 2] for k, v in batch.items()}
        loss = gradcache_backward(model, loss_fn(case, model), half, chunk_size=3, device=CPU)
        average_gradients(model)
        torch.save((loss, grads(model)), os.path.join(out_dir, f"{case}-{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_processes_match_full_batch(tmp_path):
    """Each process holds half the batch in chunks of 3 (3 + 1 rows): one spawn for all three models."""
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for case in CASES:
        loss, ref = full_batch_grads(case)
        for rank in range(2):
            r_loss, r_grads = torch.load(tmp_path / f"{case}-{rank}.pt")
            assert torch.allclose(r_loss, loss, rtol=1e-12, atol=0), case
            assert_close_relative(ref, r_grads, label=f"{case} rank {rank}")


def test_random_state_replays_drop_path():
    model, batch = make_model("stan", drop_path=0.5), make_batch()
    state = RandomState()
    first = model.encode_video(batch["frames"], batch["frame_mask"]).x
    with state.replay():
        again = model.encode_video(batch["frames"], batch["frame_mask"]).x
    other = model.encode_video(batch["frames"], batch["frame_mask"]).x
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_drop_path_is_replayed_under_activation_checkpointing():
    """drop_path 0.5 and model.grad_checkpointing: the re-encoding pass and the checkpoints'
    recomputation must draw the first pass's masks. Reference: the same chunks encoded one after
    the other with the graph, from the same seed, and one loss over all of them."""
    chunks = [slice(0, 3), slice(3, 6), slice(6, 8)]
    model, batch = make_model("stan", drop_path=0.5), make_batch()
    torch.manual_seed(7)
    texts = [model.encode_text(batch["ids"][rows], batch["text_mask"][rows]).x for rows in chunks]
    videos = [model.encode_video(batch["frames"][rows], batch["frame_mask"][rows]).x for rows in chunks]
    outputs = {
        "text": Embeddings(torch.cat(texts)),
        "video": Embeddings(torch.cat(videos)),
        "logit_scale": model.logit_scale(),
    }
    loss_fn("stan", model)(outputs, batch).backward()
    reference = grads(model)

    with torch.no_grad():  # the masks matter: two draws give two embeddings
        assert not torch.equal(*(model.encode_video(batch["frames"][:3], batch["frame_mask"][:3]).x for _ in range(2)))

    model = make_model("stan", drop_path=0.5, grad_checkpointing=True)
    assert model.branch.grad_checkpointing and model.backbone.grad_checkpointing
    torch.manual_seed(7)
    gradcache_backward(model, loss_fn("stan", model), batch, chunk_size=3, device=CPU)
    assert_close_relative(reference, grads(model))


def test_fp16_autocast_with_loss_scaling():
    """fp16 autocast + GradScaler: the cached embedding gradients carry the loss scale once."""
    _, ref = full_batch_grads("stan")
    model, batch = make_model("stan").float(), make_batch()
    batch["frames"] = batch["frames"].float()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    gradcache_backward(
        model, loss_fn("stan", model), batch, 3, CPU, lambda: torch.autocast("cpu", dtype=torch.float16), scaler=scaler
    )
    unscaled = {n: g.double() / scaler.get_scale() for n, g in grads(model).items()}
    assert_close_relative(ref, unscaled, tol=2e-2)  # fp16 arithmetic (measured 9.5e-3); a wrong scale is off by 2^12


def test_bad_chunk_size():
    model = make_model("meanP")
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        gradcache_backward(model, loss_fn("meanP", model), make_batch(), 0, CPU)


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {backbone: mugstan-tiny}\ntrain: {batch_size: 128, accum_steps: 4}\n")
    with pytest.raises(
        ConfigError, match=r"train.contrastive_batch=128 but .* = 32 clips.*train.batch_size=512.*train.chunk_size"
    ):
        load_config(path, ["train.contrastive_batch=128"], check_files=False)
    with pytest.raises(ConfigError, match="train.chunk_size=0 must be at least 1"):
        load_config(path, ["train.chunk_size=0"], check_files=False)
    with pytest.raises(ConfigError, match="train.chunk_size .*model.task=retrieval.*remove train.chunk_size"):
        load_config(path, ["model.task=recognition", "train.chunk_size=8"], check_files=False)
    cfg = load_config(
        path, ["train.accum_steps=1", "train.contrastive_batch=128", "train.chunk_size=16"], check_files=False
    )
    assert (cfg.train.contrastive_batch, cfg.train.chunk_size) == (128, 16)

    from mugstan.engine.train import train

    cfg.train.output_dir = str(tmp_path / "never")
    cfg.train.contrastive_batch = 64  # a config built in Python fails before anything is built or written
    with pytest.raises(ConfigError, match="train.contrastive_batch=64"):
        train(cfg)
    assert not (tmp_path / "never").exists()


# ---- training runs -------------------------------------------------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
STEPS = 4
TRAIN_SEVERAL = """import logging
import sys
from mugstan.config import load_config
from mugstan.engine.train import train

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the lines the CLI shows

for path in sys.argv[1:]:  # one process group, several runs: torchrun starts once
    train(load_config(path), progress=False)
"""


def write_config(path: Path, data: Path, out: Path, **train) -> Path:
    """The engine tests' tiny run, STEPS steps of 8 clips."""
    return tiny_run_config(path, data, out, **{"max_steps": STEPS, "batch_size": 8, **train})


def losses(out: Path) -> list[float]:
    return [
        r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


def train_here(path: Path) -> tuple[list[float], str]:
    """Train in this process; returns the loss curve and what it logged (what `mugstan train` shows)."""
    from mugstan.engine.train import train

    determinism = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cfg, printed = load_config(path), io.StringIO()
    log, handler = logging.getLogger("mugstan"), logging.StreamHandler(printed)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        train(cfg, progress=False)
    finally:  # train.deterministic switches deterministic algorithms on for the whole process
        torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])
        log.removeHandler(handler)
        log.setLevel(level)
    return losses(Path(cfg.train.output_dir)), printed.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthParams(videos=16, frames=8, size=32, seed=0), progress=False)  # 48 caption pairs
    return root


@pytest.fixture(scope="module")
def full_batch_curve(tmp_path_factory, data):
    """One process, batch 8 trained at once: train.chunk_size=8 is not below the 8 clips of a
    micro-batch, so the trainer takes the plain path (and says so)."""
    tmp = tmp_path_factory.mktemp("full")
    curve, printed = train_here(write_config(tmp / "full.yaml", data, tmp / "out", chunk_size=8))
    assert "without gradient caching" in printed and len(curve) == STEPS
    # The curves below are compared with this one, so it must come from a run that updated its
    # weights (losses of different batches cannot show that): STAN's temporal_fc starts at exactly
    # zero, and only optimizer steps move it.
    from safetensors.torch import load_file

    weights = load_file(str(tmp / "out" / "checkpoints" / "last" / "model.safetensors"))
    assert all(weights[f"branch.temporal.{k}.temporal_fc.weight"].abs().max() > 0 for k in range(2))
    return curve


def test_training_loss_curve_matches_full_batch(tmp_path, data, full_batch_curve):
    cached, printed = train_here(
        write_config(tmp_path / "gc.yaml", data, tmp_path / "gc", contrastive_batch=8, chunk_size=3)
    )
    assert "without gradient caching" not in printed
    assert cached == pytest.approx(full_batch_curve, rel=1e-6)  # fp32 summation order only (measured 1.2e-7)


def test_two_gloo_processes_follow_the_full_batch_curve(tmp_path, data, full_batch_curve):
    """torchrun, 2 processes: no DDP wrapper, weights broadcast from rank 0, gradients averaged
    once per step. (a) batch 8, 4 clips per process in chunks of 3 -> the one-process full-batch
    curve. (b) with train.accum_steps=2 (2 clips per process and micro-batch, chunks of 1) -> plain
    DDP with the same accumulation (the same contrastive batches: the sampler's micro-batches do not
    depend on the number of processes)."""
    runs = {"gc": dict(chunk_size=3), "gc_accum": dict(accum_steps=2, chunk_size=1), "ddp_accum": dict(accum_steps=2)}
    configs = [write_config(tmp_path / f"{name}.yaml", data, tmp_path / name, **kw) for name, kw in runs.items()]
    script = tmp_path / "train_several.py"
    script.write_text(TRAIN_SEVERAL)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            *map(str, configs),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("on 2 process(es)") == 3 and "without gradient caching" not in proc.stdout
    curves = {name: losses(tmp_path / name) for name in runs}
    assert curves["gc"] == pytest.approx(full_batch_curve, rel=1e-6)  # measured 1.2e-7
    assert len(curves["ddp_accum"]) == STEPS
    assert curves["gc_accum"] == pytest.approx(curves["ddp_accum"], rel=1e-6)  # measured 8.8e-8
