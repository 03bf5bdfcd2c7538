"""The engine end to end on tiny synthetic data: resume after SIGKILL, 2 processes vs 1, bad configs, eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import kill_training_at, write_config
from safetensors.torch import load_file

from mugstan.config import ConfigError, load_config
from mugstan.data.synthetic import SynthParams, generate

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthParams(videos=48, frames=8, size=32, seed=0), progress=False)
    return root


def run(args, **kw):
    return subprocess.run([sys.executable, "-m", "mugstan.cli", *args], env=ENV, capture_output=True, text=True, **kw)


def train_steps(data: Path, batch_size: int = 8) -> int:
    """Steps of one epoch: whole batches of the training captions (one item each; 24 for the 192 captions of the
    synthetic set's 48 videos)."""
    rows = map(json.loads, (data / "train.jsonl").read_text().splitlines())
    return sum(len(r["caption"]) for r in rows) // batch_size


def losses(out: Path) -> list[float]:
    return [
        r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data) -> Path:
    """One uninterrupted one-process run (batch 8, a checkpoint every step): the baseline of the
    SIGKILL resume and of the two-process run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = write_config(out / "full.yaml", data, out / "full", batch_size=8, save_every=1)
    done = run(["train", str(cfg), "--no-progress"])
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "full"


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, data, uninterrupted):
    full = uninterrupted
    cfg = write_config(tmp_path / "killed.yaml", data, tmp_path / "killed", batch_size=8, save_every=1)
    killed_at = kill_training_at(cfg, tmp_path / "killed" / "checkpoints" / "last" / "state.pt", 3, ENV, 120)["step"]
    total = len(losses(full))
    assert total == train_steps(data) and 3 <= killed_at < total, "the run must be killed mid-epoch"

    resumed = run(["train", str(cfg), "--resume", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(tmp_path / "killed") == losses(full)  # every step logged once, none repeated after the resume


def test_two_gloo_processes_follow_the_one_process_loss_curve(tmp_path, data, uninterrupted):
    two = write_config(tmp_path / "two.yaml", data, tmp_path / "two", batch_size=8)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mugstan.cli",
            "train",
            str(two),
            "--no-progress",
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    l1, l2 = losses(uninterrupted), losses(tmp_path / "two")
    assert len(l1) == len(l2) == train_steps(data)
    # same data, same seed, same global batch: the curves agree to 2e-7 (measured; the all-reduce
    # sums the two halves' gradients in another order than one process does)
    assert l1 == pytest.approx(l2, rel=2e-6)


def test_bad_configs_fail_before_training(tmp_path, data):
    good = write_config(tmp_path / "good.yaml", data, tmp_path / "out")
    cfg = yaml.safe_load(good.read_text())
    cfg["train"]["learning_rate"] = 1.0
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(tmp_path / "unknown.yaml")
    with pytest.raises(ConfigError, match="key 'train.epochs'.*could not be converted"):
        load_config(good, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="data.train_ann: /nowhere/train.jsonl does not exist"):
        load_config(good, ["data.train_ann=/nowhere/train.jsonl"])
    proc = run(["train", str(good), "model.branch=lstm"])
    assert (
        proc.returncode != 0
        and "model.branch" in proc.stderr
        and "lstm" in proc.stderr
        and "steps/epoch" not in proc.stdout
    )


def test_eval_command_on_a_trained_checkpoint(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", batch_size=8)
    text = yaml.safe_load(cfg.read_text())
    text["data"]["test_ann"] = str(data / "test.jsonl")
    cfg.write_text(yaml.safe_dump(text))
    assert run(["train", str(cfg), "--no-progress", "train.max_steps=2"]).returncode == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["protocol"] == "1:1" and results["test"]["counts"]["videos"] == 60
    out = run(
        [
            "eval",
            str(cfg),
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "best"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # the best checkpoint evaluated again: the numbers the training run reported for its test split
    assert (
        "t2v" in out.stdout
        and json.loads((tmp_path / "r.json").read_text())["retrieval"] == results["test"]["retrieval"]
    )
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000 and (tmp_path / "run" / "tb").is_dir()
    emb = run(
        [
            "embed",
            str(cfg),
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "best"),
            "--out",
            str(tmp_path / "v.npz"),
        ]
    )
    assert emb.returncode == 0, emb.stderr[-2000:]
    import numpy as np

    saved = np.load(tmp_path / "v.npz")
    assert saved["embeddings"].shape == (results["test"]["counts"]["videos"], 64) and saved["items"][0].endswith(".mp4")


def test_sampler_micro_batches_do_not_depend_on_the_number_of_processes():
    """With accumulation, micro-batch a of step s is the same set of clips on 1 and on 4 processes
    (each one contrastive batch), every clip of a step is used once, and resuming mid-epoch skips
    whole steps."""
    from mugstan.engine.distributed import TrainSampler

    one = list(TrainSampler(50, 24, world=1, rank=0, accum=3, seed=5))
    four = [list(TrainSampler(50, 24, world=4, rank=r, accum=3, seed=5)) for r in range(4)]
    assert len(one) == 2 * 3 and all(len(m) == 8 for m in one)
    for i, micro in enumerate(one):
        assert sorted(sum((ranks[i] for ranks in four), [])) == sorted(micro)
    assert len({i for m in one for i in m}) == 48
    resumed = TrainSampler(50, 24, world=1, rank=0, accum=3, seed=5)
    resumed.set_epoch(0, skip_steps=1)
    assert list(resumed) == one[3:]


def test_freeze_text_for_keeps_the_text_tower_for_its_steps_then_trains_it(tmp_path, data):
    """train.freeze_text_for=2 of 3 steps: after 2 steps the text tower is bit-identical to its
    start while the video side moved; one step later it has moved too. Out of range: an error."""
    from mugstan.engine.train import seed_everything, train
    from mugstan.models import build_model

    def text_and_video(out: Path) -> tuple[dict, dict]:
        state = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
        clip = {k: v for k, v in state.items() if k.startswith("backbone.clip.") and "logit_scale" not in k}
        return (
            {k: v for k, v in clip.items() if ".visual." not in k},
            {k: v for k, v in clip.items() if ".visual." in k},
        )

    cfg = load_config(write_config(tmp_path / "s.yaml", data, tmp_path / "s"))
    seed_everything(cfg.train.seed, True)  # as setup_run does: the same initial weights
    start = {f"backbone.clip.{k}": v for k, v in build_model(cfg.model).backbone.clip.state_dict().items()}
    moved = {}
    for steps in (2, 3):
        path = write_config(
            tmp_path / f"{steps}.yaml",
            data,
            tmp_path / str(steps),
            max_steps=steps,
            freeze_text_for=2,
            save_every=steps,
        )
        train(load_config(path), progress=False)
        text, video = text_and_video(tmp_path / str(steps))
        moved[steps] = (
            max((v - start[k]).abs().max().item() for k, v in text.items()),
            max((v - start[k]).abs().max().item() for k, v in video.items()),
        )
    # an AdamW step moves an element by about lr = 1e-4 (|m / sqrt(v)| <= 1 on a first step) plus weight decay:
    # measured 2.1e-4 for the video side after 2 steps, 1.1e-4 for the text tower after its one step
    assert moved[2][0] == 0.0 and moved[2][1] > 1e-4, moved
    assert moved[3][0] > 0.5e-4, moved
    with pytest.raises(ConfigError, match="train.freeze_text_for"):
        load_config(write_config(tmp_path / "neg.yaml", data, tmp_path / "neg", freeze_text_for=-1))
    with pytest.raises(ConfigError, match="model.freeze_text already"):
        load_config(
            write_config(tmp_path / "both.yaml", data, tmp_path / "both", freeze_text_for=2), ["model.freeze_text=true"]
        )


def test_auto_precision_on_a_cpu_follows_the_measured_bf16_speed(monkeypatch):
    """auto on a CPU is bf16 only where a transformer block of the model's width trains >= 1.25x
    faster in bf16 (CPU flags and large products do not tell: the 2-vCPU Xeon reporting AVX512-BF16
    ran bf16 at 0.5x, the Xeon with AMX ran a 1024-square product 3.8x faster and the demo's
    width-64 step at 0.59x); explicit precisions are taken as given."""
    from mugstan.engine import precision

    cpu = torch.device("cpu")
    speedup = precision.cpu_bf16_speedup(64)  # the real measurement, once per process
    assert 0 < speedup < float("inf")
    expected = "bf16" if speedup >= precision.CPU_BF16_MIN_SPEEDUP else "fp32"
    assert precision.resolve_precision("auto", cpu, width=64) == expected
    for measured, expected in ((2.0, "bf16"), (1.25, "bf16"), (1.1, "fp32"), (0.5, "fp32")):
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda width, measured=measured: measured)
        assert precision.resolve_precision("auto", cpu) == expected
        assert precision.resolve_precision("bf16", cpu) == "bf16" and precision.resolve_precision("fp32", cpu) == "fp32"
    # the decision is the model's: bf16 paying for wide blocks only, a narrow model runs in fp32
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda width: 2.0 if width >= 256 else 0.6)
    assert [precision.resolve_precision("auto", cpu, width=w) for w in (64, 768)] == ["fp32", "bf16"]


def test_bf16_probe_stops_after_a_warm_up_pair_where_bf16_is_emulated():
    """The probe's pairs: two warm-up pairs, then the median of five; a warm-up pair with bf16 at
    under a third of fp32's speed (emulated bf16, as on an AVX2-only CPU) ends it, with that ratio."""
    from mugstan.engine.precision import CPU_BF16_HOPELESS, median_speedup

    def steps(times):
        calls = []

        def step(bf16):
            calls.append(bf16)
            return times[len(calls) - 1]
        return step, calls

    # fp32 0.2 s, bf16 4.8 s (the AVX2 kernels at width 768): one pair, ratio 0.2 / 4.8
    step, calls = steps([0.2, 4.8])
    assert median_speedup(step) == pytest.approx(0.2 / 4.8) and calls == [False, True]
    # a paying CPU whose first bf16 step is slow (kernel selection): both warm-ups, then the median
    times = [0.2, 0.19, 0.2, 0.12] + [0.2, 0.1, 0.2, 0.11, 0.2, 0.125, 0.2, 0.105, 0.2, 0.2]
    step, calls = steps(times)
    assert median_speedup(step) == pytest.approx(0.2 / 0.11) and calls == [False, True] * 7
    # just above the cut on a warm-up pair: measured in full
    step, calls = steps([0.1, 0.1 / (CPU_BF16_HOPELESS + 0.01)] + [0.1, 0.2] * 6)
    assert median_speedup(step) == pytest.approx(0.5) and len(calls) == 14


def test_linear_width_is_where_the_model_does_its_work():
    """768 for a ViT-B/32 CLIP (its text tower is 512 wide), 64 for the demo's mugstan-tiny STAN."""
    import open_clip

    from mugstan.config import ModelConfig, STANConfig
    from mugstan.engine.precision import linear_width
    from mugstan.models import build_model

    assert linear_width(open_clip.create_model("ViT-B-32")) == 768
    tiny = ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", context_length=16, stan=STANConfig(depth=2))
    assert linear_width(build_model(tiny)) == 64
    assert linear_width(torch.nn.Conv1d(3, 3, 1)) == 1024  # no linear layer: the default probe
