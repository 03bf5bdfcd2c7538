"""The knobs the authors' recipes need: mmengine / BertAdam schedules, the fps sampler, the test
resize, selection on the test split, the EOT-losing tokenizer, and `data check` overrides."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml

from data_fixtures import write_config, write_video
from mugstan.backbones.clip import EOT_TOKEN, SOT_TOKEN, Tokenizer
from mugstan.config import ConfigError, DataConfig, TrainConfig, load_config
from mugstan.data.datasets import Annotations, Clip, ClipDataset
from mugstan.data.synthetic import SynthParams, generate
from mugstan.data.video import fps_indices, probe, read_clip
from mugstan.engine.optim import bert_warmup_cosine, build_scheduler, linear_then_cosine, warmup_cosine


# ---- schedules --------------------------------------------------------------------------------
def mmengine_chain(total: int, per_epoch: int, start: float, warm_end: float, t_max: float, begin: float, end: float) -> list[float]:
    """The factors mmengine's chained (recursive) LinearLR + CosineAnnealingLR give per iteration,
    written from their update rules (each multiplies the current value), not from a closed form."""
    w, b, e, t = int(warm_end * per_epoch), int(begin * per_epoch), int(end * per_epoch), t_max * per_epoch
    lr, out = 1.0, []
    for step in range(total):
        if step < w:  # LinearLR: lr_0 = start; lr_i = lr_{i-1} * (1 + (1 - start) / (w * start + (i - 1) * (1 - start)))
            lr = start if step == 0 else lr * (1 + (1 - start) / (w * start + (step - 1) * (1 - start)))
        elif b <= step < e:
            i = step - b  # CosineAnnealingLR (eta_min 0), chained form, periodic past T_max
            if i == 0:
                pass
            elif (i - 1 - t) % (2 * t) == 0:
                lr = lr + (1 - math.cos(math.pi / t)) / 2
            else:
                lr = (1 + math.cos(math.pi * i / t)) / (1 + math.cos(math.pi * (i - 1) / t)) * lr
        out.append(lr)
    return out


@pytest.mark.parametrize("recipe", [
    dict(epochs=20, start=0.05, warm=4, t_max=17, begin=4, end=20),     # DiDeMo (STAN / Mug-STAN)
    dict(epochs=30, start=0.05, warm=5, t_max=4.5, begin=10, end=100),  # Mug-STAN LSMDC: a gap, then a periodic cosine
    dict(epochs=4, start=0.05, warm=0.5, t_max=4.5, begin=0.5, end=4),  # post-pretraining
])
def test_linear_then_cosine_follows_mmengine_chained_schedulers(recipe):
    per_epoch = 8
    total = recipe["epochs"] * per_epoch
    ours = linear_then_cosine(per_epoch, recipe["start"], recipe["warm"], recipe["t_max"], recipe["begin"], recipe["end"])
    ref = mmengine_chain(total, per_epoch, recipe["start"], recipe["warm"], recipe["t_max"], recipe["begin"], recipe["end"])
    ours = np.array([ours(s) for s in range(total)])
    assert ours[0] == pytest.approx(recipe["start"])
    # The warmup is the same (measured: 2e-16). mmengine's warmup ends one step short of 1, at
    # c = start + (1 - start)(W - 1)/W, and its cosine multiplies from there: until the periodic
    # cosine's first restart (step B + T + 1, an additive step) mmengine's factor is c times the
    # closed form's, and after it the two are equal again (measured: 4e-16 everywhere).
    w = int(recipe["warm"] * per_epoch)
    c = recipe["start"] + (1 - recipe["start"]) * (w - 1) / w
    restart = int(recipe["begin"] * per_epoch + recipe["t_max"] * per_epoch) + 1
    np.testing.assert_allclose(ours[:w], ref[:w], rtol=0, atol=1e-12)
    np.testing.assert_allclose(c * ours[w:restart], ref[w:restart], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[restart:], ref[restart:], rtol=0, atol=1e-12)


def test_stan_msrvtt_schedule_is_a_warmup_over_the_whole_run():
    # warmup end 10 = max_epochs 10: the cosine (begin 10) never runs; the lr rises from 0.05x to ~1x.
    f = linear_then_cosine(100, 0.05, 10, 4.5, 10, 100)
    assert f(0) == pytest.approx(0.05) and f(500) == pytest.approx(0.05 + 0.95 * 0.5) and f(999) > 0.99
    # past T_max the chained cosine rises again (period 2 T_max), as mmengine's does
    g = linear_then_cosine(10, 0.05, 0, 4.5, 0, 100)
    assert g(45) == pytest.approx(0.0, abs=1e-12) and g(90) == pytest.approx(1.0)


def test_warmup_cosine_default_schedule_by_hand():
    """The default schedule (train.schedule=warmup_cosine): 10 steps, warmup 0.2 -> 2 steps. Warmup
    (s + 1) / 2; then 0.5 (1 + cos(pi (s - 2) / 8)), reaching 0 at step 10."""
    f = warmup_cosine(10, 0.2)
    hand = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 8)), 0.5 * (1 + math.cos(math.pi / 4)), 0.5 * (1 + math.cos(3 * math.pi / 8)),
            0.5, 0.5 * (1 - math.cos(3 * math.pi / 8)), 0.5 * (1 - math.cos(math.pi / 4)), 0.5 * (1 - math.cos(math.pi / 8)), 0.0]
    assert [f(s) for s in range(11)] == pytest.approx(hand, abs=1e-15)
    assert warmup_cosine(10, 3)(2) == 1.0 and warmup_cosine(10, 3)(0) == pytest.approx(1 / 3)  # warmup as steps
    assert warmup_cosine(1, 0.5)(0) == 1.0  # a one-step run: no warmup left, the cosine starts at 1

    # the optimizer's learning rates under the default schedule, as train builds it
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = build_scheduler(opt, 10, 0.2, TrainConfig(lr=1e-4, warmup=0.2), steps_per_epoch=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-4 * h for h in hand[:10]], rel=1e-12)


def test_bert_warmup_cosine_is_clip4clips_schedule():
    f = bert_warmup_cosine(100, 0.1)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5)
    # after warmup the cosine is of the global progress: 0.976 at the end of warmup, not 1
    assert f(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert f(50) == pytest.approx(0.5) and f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_build_scheduler_applies_the_configured_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-6)
    cfg = TrainConfig(schedule="linear_then_cosine", start_factor=0.05, warmup_epochs=4, cosine_t_max=17, lr=2e-6)
    sched = build_scheduler(opt, 200, cfg.warmup, cfg, steps_per_epoch=10)
    seen = []
    for _ in range(60):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-7) and seen[40] == pytest.approx(2e-6)
    assert seen[59] == pytest.approx(2e-6 * 0.5 * (1 + math.cos(math.pi * 19 / 170)))


def test_schedule_keys_are_validated(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "out")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ConfigError, match="train.start_factor"):
        load_config(cfg, ["train.schedule=linear_then_cosine", "train.start_factor=0"])
    with pytest.raises(ConfigError, match="cosine_begin"):
        load_config(cfg, ["train.schedule=linear_then_cosine", "train.warmup_epochs=5", "train.cosine_begin=2"])
    with pytest.raises(ConfigError, match="select_on=test"):
        load_config(cfg, ["eval.select_on=test"])
    with pytest.raises(ConfigError, match="data.sample_fps"):
        load_config(cfg, ["data.sample_fps=0"])


# ---- fps sampler ------------------------------------------------------------------------------
def test_fps_indices_one_frame_per_second_then_uniform():
    assert fps_indices(0, 300, 30.0, 1.0, 12).tolist() == list(range(0, 300, 30))  # 10 s: 10 frames, one a second
    long = fps_indices(0, 900, 30.0, 1.0, 12)  # 30 s: 30 candidates, 12 chosen by linspace incl. first and last
    assert long.tolist() == [30 * int(i) for i in np.linspace(0, 29, 12).astype(int)]
    assert fps_indices(0, 100, 25.0, 2.5, 12).tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert fps_indices(40, 41, 25.0, 1.0, 12).tolist() == [40]  # a one-frame window still has its frame


def test_fps_sampler_pads_short_videos_and_masks_the_padding(tmp_path):
    short = write_video(tmp_path / "short.mp4", frames=24, fps=8)  # 3 s -> 3 frames at 1 fps
    frames, mask = read_clip(short, 6, sampler="fps", sample_fps=1.0, return_mask=True)
    assert frames.shape[0] == 6 and mask.tolist() == [True] * 3 + [False] * 3
    assert torch.equal(frames[3], frames[2])  # padding repeats the last real frame, never black
    assert probe(short).num_frames == 24
    cfg = DataConfig(dataset="jsonl", root=str(tmp_path), num_frames=6, image_size=32, sampler="fps", sample_fps=1.0)
    item = ClipDataset(Annotations([Clip(str(short))]), cfg, train=True)[0]
    assert item["frame_mask"].tolist() == [True] * 3 + [False] * 3 and item["frames"].shape == (6, 3, 32, 32)
    segment = ClipDataset(Annotations([Clip(str(short))]), DataConfig(num_frames=6, image_size=32), train=False)[0]
    assert segment["frame_mask"].all()


def test_test_resize_short_applies_to_testing_only(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=8, size=(96, 64))
    cfg = DataConfig(num_frames=2, image_size=32, resize_short=64, test_resize_short=32, crop_scale=[1.0, 1.0])
    test = ClipDataset(Annotations([Clip(str(video))]), cfg, train=False).reader
    train = ClipDataset(Annotations([Clip(str(video))]), cfg, train=True).reader
    assert test.short == 32 and train.short == 64
    # centre crop 32 of short side 32 keeps the whole height; of short side 64, only the middle half
    raw = read_clip(video, 2, short_side=32)
    assert test(Clip(str(video)), 0).shape == (2, 3, 32, 32) and raw.shape[-2:] == (32, 48)


# ---- tokenizer --------------------------------------------------------------------------------
def test_eot_compat_loses_the_eot_of_long_captions_as_the_authors_tokenizer():
    long = " ".join(["dog"] * 20)
    kept, _ = Tokenizer(8)(long)
    lost, _ = Tokenizer(8, keep_eot=False)(long)
    assert kept[0, 0] == SOT_TOKEN and kept[0, -1] == EOT_TOKEN
    assert lost[0, 0] == SOT_TOKEN and EOT_TOKEN not in lost[0].tolist()
    short_kept, short_lost = Tokenizer(8)("a dog"), Tokenizer(8, keep_eot=False)("a dog")
    assert torch.equal(short_kept[0], short_lost[0])


# ---- selection on the test split ----------------------------------------------------------------
def test_select_on_test_chooses_on_the_test_split_and_says_so(tmp_path):
    from mugstan.engine.train import train

    data = tmp_path / "synth"
    generate(data, SynthParams(videos=16, frames=4, size=32, seed=0), progress=False)
    path = write_config(tmp_path / "c.yaml", data, tmp_path / "run", batch_size=8, epochs=2, warmup=0)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["test_ann"] = str(data / "test.jsonl")
    raw["eval"]["select_on"] = "test"
    path.write_text(yaml.safe_dump(raw))
    results = train(load_config(path), progress=False)
    assert results["best"]["selected_on"] == "test" and "TEST split" in results["selection"]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["split"] for e in events if e.get("event") == "validation"] == ["test", "test"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["selection"] == results["selection"]


# ---- data check takes overrides -------------------------------------------------------------------
def test_data_check_takes_overrides(tmp_path, capsys):
    from mugstan.cli import main

    root = tmp_path / "dataset"
    write_video(root / "videos" / "a.mp4", frames=8)
    (root / "ann.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a clip"}) + "\n"
                                    + json.dumps({"video": "missing.mp4", "caption": "gone"}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "jsonl", "root": "nowhere", "videos": "videos", "test_ann": "ann.jsonl"}}))
    assert main(["data", "check", str(cfg), f"data.root={root}"]) == 1  # found the dataset, reported the missing video
    out = capsys.readouterr().out
    assert "test: 2 videos, 1 with problems" in out and "missing.mp4" in out


# ---- weight decay exemptions ----------------------------------------------------------------------
def test_no_decay_kinds_follow_each_recipe():
    from mugstan.config import ModelConfig
    from mugstan.engine.optim import build_optimizer, param_groups
    from mugstan.models import build_model

    model = build_model(ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean"))
    names = {id(p): n for n, p in model.named_parameters()}

    def exempt(no_decay):
        return {names[id(p)] for g in param_groups(model, no_decay) if not g["decay"] for p in g["params"]}

    default, stan, clip4clip = exempt(["norm", "bias", "embedding", "logit_scale"]), exempt(["norm", "bias"]), exempt(["bias"])
    assert "backbone.clip.visual.positional_embedding" in default and "backbone.clip.visual.positional_embedding" not in stan
    assert "branch.time_embed.weight" not in stan and "backbone.clip.visual.ln_post.weight" in stan
    assert "backbone.clip.visual.ln_post.weight" not in clip4clip and "branch.spatial.0.attn.in_proj_bias" in clip4clip
    assert all(n.endswith("bias") for n in clip4clip)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.05, no_decay=["norm", "bias"]))
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "branch.time_embed.weight" in decayed and "backbone.clip.visual.ln_post.weight" not in decayed


# ---- BertAdam ------------------------------------------------------------------------------------------
def test_bertadam_is_adam_without_bias_correction_and_clips_each_parameter():
    from mugstan.engine.optim import BertAdam

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    q = torch.nn.Parameter(torch.tensor([0.5]))
    opt = BertAdam([{"params": [p], "weight_decay": 0.2}, {"params": [q], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.98), eps=1e-6,
                   max_grad_norm=1.0)
    grads = [(torch.tensor([3.0, 4.0]), torch.tensor([0.5])), (torch.tensor([0.3, -0.4]), torch.tensor([-0.25]))]
    m_p, v_p, m_q, v_q = torch.zeros(2), torch.zeros(2), torch.zeros(1), torch.zeros(1)
    want_p, want_q = p.detach().clone(), q.detach().clone()
    for gp, gq in grads:
        p.grad, q.grad = gp.clone(), gq.clone()
        opt.step()
        gp = gp * min(1.0, 1.0 / (gp.norm().item() + 1e-6))  # |(3, 4)| = 5: clipped to norm 1 on its own
        m_p, v_p = 0.9 * m_p + 0.1 * gp, 0.98 * v_p + 0.02 * gp**2
        m_q, v_q = 0.9 * m_q + 0.1 * gq, 0.98 * v_q + 0.02 * gq**2
        want_p = want_p - 0.1 * (m_p / (v_p.sqrt() + 1e-6) + 0.2 * want_p)
        want_q = want_q - 0.1 * (m_q / (v_q.sqrt() + 1e-6))
        torch.testing.assert_close(p.detach(), want_p)
        torch.testing.assert_close(q.detach(), want_q)
    # the first step is not bias-corrected: 0.1 g / sqrt(0.02 g^2) = 0.707 of Adam's unit step
    r = torch.nn.Parameter(torch.tensor([1.0]))
    r.grad = torch.tensor([0.5])
    BertAdam([r], lr=1.0, betas=(0.9, 0.98), eps=0.0, max_grad_norm=-1).step()
    assert r.item() == pytest.approx(1.0 - 0.1 / math.sqrt(0.02))


def test_build_optimizer_picks_bertadam():
    from mugstan.engine.optim import BertAdam, build_optimizer

    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, TrainConfig(optimizer="bertadam", grad_clip=1.0, lr=1e-7, new_module_lr_mult=1000.0))
    assert isinstance(opt, BertAdam) and all(g["max_grad_norm"] == 1.0 for g in opt.param_groups)
    assert all(g["lr"] == pytest.approx(1e-4) for g in opt.param_groups)  # a plain Linear is all "new module"
    assert isinstance(build_optimizer(model, TrainConfig()), torch.optim.AdamW)


def test_adamw_is_fused_on_a_cpu_and_follows_pytorchs_loop():
    """CPU parameters get the fused kernel (one pass per tensor); it follows the per-parameter loop
    to float precision, with the recipe's groups (decayed and not) and betas."""
    from mugstan.engine.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    ref = copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] and not opt.defaults["foreach"]
    twin = {id(p): q for p, q in zip(model.parameters(), ref.parameters())}
    loop = torch.optim.AdamW([{"params": [twin[id(p)] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                              for g in opt.param_groups], betas=cfg.betas, eps=cfg.eps, foreach=False)
    assert {g["weight_decay"] for g in loop.param_groups} == {0.0, 0.1}
    for _ in range(5):
        for p, q in zip(model.parameters(), ref.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        loop.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_the_search_index_masks_fps_padding_as_evaluation_does(tmp_path):
    from mugstan.config import ExperimentConfig, ModelConfig
    from mugstan.models import build_model
    from mugstan.search.index import WindowEmbedder

    video = write_video(tmp_path / "short.mp4", frames=24, fps=8)  # 3 s: 3 real frames of 6 at 1 fps
    model = build_model(ModelConfig(backbone="mugstan-tiny", head="meanP")).eval()
    cfg = ExperimentConfig(data=DataConfig(num_frames=6, image_size=32, sampler="fps", sample_fps=1.0))
    embedder = WindowEmbedder(model, cfg, frames=6, batch_size=4, device=torch.device("cpu"))
    embedder.add("short", video, None, None)
    embedder.flush()
    (indexed, _), = embedder.results["short"]
    frames, mask = ClipDataset(Annotations([Clip(str(video))]), cfg.data, train=False).reader.read(Clip(str(video)), 0)
    with torch.no_grad():
        real_only = model.encode_video(frames[None, :3], torch.ones(1, 3, dtype=torch.bool)).x[0]
    assert mask.tolist() == [True] * 3 + [False] * 3
    np.testing.assert_allclose(indexed, real_only.numpy(), atol=1e-5)
