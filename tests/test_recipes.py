"""The knobs the authors' recipes need: mmengine / BertAdam schedules, the fps sampler, the test
resize, selection on the test split, the EOT-losing tokenizer, and `data check` overrides."""

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

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

REPO_CONFIGS = Path(__file__).parent.parent / "src" / "mugstan" / "configs"  # the packaged configs


# ---- schedules --------------------------------------------------------------------------------
def mmengine_chain(
    total: int, per_epoch: int, start: float, warm_end: float, t_max: float, begin: float, end: float
) -> list[float]:
    """The factors mmengine's chained (recursive) LinearLR + CosineAnnealingLR give per iteration,
    written from their update rules (each multiplies the current value), not from a closed form."""
    w, b, e, t = int(warm_end * per_epoch), int(begin * per_epoch), int(end * per_epoch), t_max * per_epoch
    lr, out = 1.0, []
    for step in range(total):
        if (
            step < w
        ):  # LinearLR: lr_0 = start; lr_i = lr_{i-1} * (1 + (1 - start) / (w * start + (i - 1) * (1 - start)))
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


@pytest.mark.parametrize(
    "recipe",
    [
        dict(epochs=20, start=0.05, warm=4, t_max=17, begin=4, end=20),  # DiDeMo (STAN / Mug-STAN)
        dict(
            epochs=30, start=0.05, warm=5, t_max=4.5, begin=10, end=100
        ),  # Mug-STAN LSMDC: a gap, then a periodic cosine
        dict(epochs=4, start=0.05, warm=0.5, t_max=4.5, begin=0.5, end=4),  # post-pretraining
    ],
)
def test_linear_then_cosine_follows_mmengine_chained_schedulers(recipe):
    per_epoch = 8
    total = recipe["epochs"] * per_epoch
    ours = linear_then_cosine(
        per_epoch, recipe["start"], recipe["warm"], recipe["t_max"], recipe["begin"], recipe["end"]
    )
    ref = mmengine_chain(
        total, per_epoch, recipe["start"], recipe["warm"], recipe["t_max"], recipe["begin"], recipe["end"]
    )
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
    assert f(0) == pytest.approx(0.05) and f(500) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(999) == pytest.approx(0.05 + 0.95 * 0.999)  # the last step of the linear rise (was > 0.99)
    # past T_max the chained cosine rises again (period 2 T_max), as mmengine's does
    g = linear_then_cosine(10, 0.05, 0, 4.5, 0, 100)
    assert g(45) == pytest.approx(0.0, abs=1e-12) and g(90) == pytest.approx(1.0)


def test_warmup_cosine_default_schedule_by_hand():
    """The default schedule (train.schedule=warmup_cosine): 10 steps, warmup 0.2 -> 2 steps. Warmup
    (s + 1) / 2; then 0.5 (1 + cos(pi (s - 2) / 8)), reaching 0 at step 10."""
    f = warmup_cosine(10, 0.2)
    hand = [
        0.5,
        1.0,
        1.0,
        0.5 * (1 + math.cos(math.pi / 8)),
        0.5 * (1 + math.cos(math.pi / 4)),
        0.5 * (1 + math.cos(3 * math.pi / 8)),
        0.5,
        0.5 * (1 - math.cos(3 * math.pi / 8)),
        0.5 * (1 - math.cos(math.pi / 4)),
        0.5 * (1 - math.cos(math.pi / 8)),
        0.0,
    ]
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
    with pytest.raises(ConfigError, match="train.no_decay_new: bias_typo not among"):
        load_config(cfg, ["train.no_decay_new=[bias_typo]"])
    with pytest.raises(ConfigError, match="train.gather_grad_world=0 must be at least 1"):
        load_config(cfg, ["train.gather_grad_world=0"])
    with pytest.raises(ConfigError, match="gathers nothing: remove train.gather_grad_world"):
        load_config(cfg, ["train.gather_grad_world=8", "model.task=recognition"])
    with pytest.raises(ConfigError, match="data.interpolation"):
        load_config(cfg, ["data.interpolation=lanczos"])


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


# ---- interpolation (data.interpolation) ------------------------------------------------------------
def _frames(seed=0, shape=(2, 3, 61, 83)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("size", [40, 100])  # down and up
def test_bilinear_is_opencvs_and_bicubic_is_pils(size):
    """data.interpolation bilinear = cv2.resize INTER_LINEAR at mmcv's Resize(scale=(-1, size)) size
    (the STAN fork); bicubic = torchvision's Resize(size, BICUBIC) on a PIL image (CLIP4Clip,
    CLIP2Video): every pixel within one grey level (fixed-point rounding); the two differ from each other."""
    cv2 = pytest.importorskip("cv2")
    import torchvision.transforms as T
    from PIL import Image

    from mugstan.data.transforms import resize_short

    x = _frames()
    h, w = x.shape[-2:]
    opencv = torch.stack(
        [
            torch.from_numpy(
                cv2.resize(f.permute(1, 2, 0).numpy(), (int(w * size / h + 0.5), size), interpolation=cv2.INTER_LINEAR)
            ).permute(2, 0, 1)
            for f in x
        ]
    )
    pil = torch.stack(
        [
            T.functional.pil_to_tensor(
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(f.permute(1, 2, 0).numpy()))
            )
            for f in x
        ]
    )
    bilinear, bicubic = resize_short(x, size, "bilinear"), resize_short(x, size, "bicubic")
    assert bilinear.shape == opencv.shape and bicubic.shape == pil.shape
    assert (bilinear.int() - opencv.int()).abs().max() <= 1 and (bicubic.int() - pil.int()).abs().max() <= 1
    assert (bilinear.int() - bicubic.int()).abs().float().mean() > 5  # the choice matters


def test_clip_reader_decodes_full_frames_and_resizes_as_the_recipe(tmp_path):
    """With data.interpolation: bilinear a test clip is the STAN pipeline on the full decoded frames
    (cv2 Resize(-1, 32) + CenterCrop(32)); "fast" lets the decoder scale and differs."""
    cv2 = pytest.importorskip("cv2")
    from mugstan.data.video import decode_frames, probe, segment_indices

    video = write_video(tmp_path / "v.mp4", frames=8, size=(96, 64))
    cfg = DataConfig(num_frames=2, image_size=32, resize_short=48, test_resize_short=40, interpolation="bilinear")
    reader = ClipDataset(Annotations([Clip(str(video))]), cfg, train=False, uint8=True).reader
    got = reader(Clip(str(video)), 0)
    info = probe(video)
    full = decode_frames(video, segment_indices(0, info.num_frames, 2, train=False))
    want = torch.stack(
        [
            torch.from_numpy(cv2.resize(f.permute(1, 2, 0).numpy(), (60, 40), interpolation=cv2.INTER_LINEAR)).permute(
                2, 0, 1
            )
            for f in full
        ]
    )[..., 4:36, 14:46]
    assert got.shape == want.shape == (2, 3, 32, 32)
    assert (got.int() - want.int()).abs().max() <= 1
    fast = ClipDataset(
        Annotations([Clip(str(video))]), replace(cfg, interpolation="fast"), train=False, uint8=True
    ).reader
    assert (fast(Clip(str(video)), 0).int() - want.int()).abs().max() > 1


def test_interpolation_is_set_per_recipe():
    def value(config):
        return str(load_config(REPO_CONFIGS / config, check_files=False).data.interpolation)

    assert value("msrvtt/stan_vitb32.yaml") == value("didemo/mugstan_vitb32.yaml") == "bilinear"
    assert value("msrvtt/clip4clip_meanP_vitb32.yaml") == value("vatex/clip2video_vitb32.yaml") == "bicubic"


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


def test_a_validation_file_that_is_the_test_file_selects_nothing(tmp_path):
    """Kinetics-400 / SSv2 report on their validation file: with data.val_ann == data.test_ann and
    eval.select_on=val no epoch is chosen on it, the last is kept, and results.json says so."""
    from mugstan.engine.train import train

    data = tmp_path / "synth"
    generate(data, SynthParams(videos=16, frames=4, size=32, seed=0), progress=False)
    path = write_config(tmp_path / "c.yaml", data, tmp_path / "run", batch_size=8, epochs=1, warmup=0)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val_ann"] = str(data / "test.jsonl")
    raw["data"]["test_ann"] = str(data / ".." / "synth" / "test.jsonl")  # the same file, written another way
    path.write_text(yaml.safe_dump(raw))
    results = train(load_config(path), progress=False)
    assert results["best"]["selected_on"] == "last" and results["best"]["epoch"] == 1
    assert "data.val_ann is the test file" in results["selection"] and "test" in results
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("event") == "validation"]


# ---- data check takes overrides -------------------------------------------------------------------
def test_data_check_takes_overrides(tmp_path, capsys):
    from mugstan.cli import main

    root = tmp_path / "dataset"
    write_video(root / "videos" / "a.mp4", frames=8)
    (root / "ann.jsonl").write_text(
        json.dumps({"video": "a.mp4", "caption": "a clip"})
        + "\n"
        + json.dumps({"video": "missing.mp4", "caption": "gone"})
        + "\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"data": {"dataset": "jsonl", "root": "nowhere", "videos": "videos", "test_ann": "ann.jsonl"}})
    )
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

    default, stan, clip4clip = (
        exempt(["norm", "bias", "embedding", "logit_scale"]),
        exempt(["norm", "bias"]),
        exempt(["bias"]),
    )
    assert (
        "backbone.clip.visual.positional_embedding" in default
        and "backbone.clip.visual.positional_embedding" not in stan
    )
    assert "branch.time_embed.weight" not in stan and "backbone.clip.visual.ln_post.weight" in stan
    assert "backbone.clip.visual.ln_post.weight" not in clip4clip and "branch.spatial.0.attn.in_proj_bias" in clip4clip
    assert all(n.endswith("bias") for n in clip4clip)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.05, no_decay=["norm", "bias"]))
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "branch.time_embed.weight" in decayed and "backbone.clip.visual.ln_post.weight" not in decayed


# The STAN authors' parameter groups, derived by hand from `configs/exp/stan/stan_msrvtt_b32_hf.py` /
# `mugstan_msrvt_b32_hf.py` (paramwise_cfg: norm_decay_mult=0, bias_decay_mult=0, custom_keys={'STAN':
# lr_mult=10}) and their model (HF CLIPModel parts + VITCLIPPretrained_STAN). mmengine's
# DefaultOptimWrapperConstructor.add_params: a parameter whose name contains a custom key gets
# lr x lr_mult and weight decay x decay_mult (default 1) and no other rule; else a parameter of a
# LayerNorm gets norm_decay_mult, else one named `bias` gets bias_decay_mult, else the base values.
# mugstan name (open_clip layout) -> (lr multiplier, decays), with the authors' parameter it plays.
AUTHORS_GROUPS = [
    (r"backbone\.clip\.visual\.class_embedding", 1, True),  # vision embeddings.class_embedding: a bare Parameter
    (r"backbone\.clip\.visual\.positional_embedding", 1, True),  # position_embedding: nn.Embedding weight
    (r"backbone\.clip\.visual\.conv1\.weight", 1, True),  # patch_embedding: Conv2d, bias=False
    (r"backbone\.clip\.visual\.proj", 1, True),  # visual_projection: Linear, bias=False
    (r"backbone\.clip\.visual\.ln_(pre|post)\.(weight|bias)", 1, False),  # pre_layrnorm / post_layernorm: LayerNorm
    (r"backbone\.clip\.(visual\.)?transformer\.resblocks\.\d+\.ln_[12]\.(weight|bias)", 1, False),  # layer_norm1/2
    (r"backbone\.clip\.(visual\.)?transformer\.resblocks\.\d+\.attn\.in_proj_weight", 1, True),  # q/k/v_proj.weight
    (r"backbone\.clip\.(visual\.)?transformer\.resblocks\.\d+\.attn\.in_proj_bias", 1, False),  # q/k/v_proj.bias
    (
        r"backbone\.clip\.(visual\.)?transformer\.resblocks\.\d+\.(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.weight",
        1,
        True,
    ),
    (r"backbone\.clip\.(visual\.)?transformer\.resblocks\.\d+\.(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.bias", 1, False),
    (r"backbone\.clip\.token_embedding\.weight", 1, True),  # text token_embedding: nn.Embedding
    (r"backbone\.clip\.positional_embedding", 1, True),  # text position_embedding: nn.Embedding
    (r"backbone\.clip\.ln_final\.(weight|bias)", 1, False),  # final_layer_norm: LayerNorm
    (r"backbone\.clip\.text_projection", 1, True),  # text_projection: Linear, bias=False
    (
        r"branch\..+",
        10,
        True,
    ),  # STAN_S_layers / STAN_T_layers / STAN_time_embed: custom key 'STAN', norms and biases too
]


@pytest.mark.parametrize("config", ["msrvtt/stan_vitb32.yaml", "msrvtt/mugstan_vitb32.yaml"])
def test_stan_parameter_groups_are_mmengines(config):
    """Every trainable parameter's (lr, weight decay) equals the authors' mmengine grouping; the
    mugstan default for new modules (train.no_decay_new=null) would exempt the branch's norms."""
    import re

    from mugstan.engine.optim import build_optimizer
    from mugstan.models import build_model

    cfg = load_config(
        REPO_CONFIGS / config, ["model.backbone=mugstan-tiny", "model.pretrained=null"], check_files=False
    )  # ViT-B/32's names
    model = build_model(cfg.model)
    t = cfg.train

    def groups(train_cfg):
        got = {}
        for g in build_optimizer(model, train_cfg).param_groups:
            for p in g["params"]:
                got[id(p)] = (round(g["lr"] / t.lr, 6), g["weight_decay"])
        return got

    got = groups(t)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(got) == len(trainable)
    for name, p in trainable:
        rows = [(mult, decays) for pattern, mult, decays in AUTHORS_GROUPS if re.fullmatch(pattern, name)]
        assert len(rows) == 1, f"{name}: matched by {len(rows)} rows of the authors' table"
        mult, decays = rows[0]
        assert got[id(p)] == (mult, t.weight_decay if decays else 0.0), (
            f"{name}: {got[id(p)]}, authors {(mult, decays)}"
        )
    assert any(n.startswith("branch.") and n.endswith("ln_1.weight") for n, _ in trainable)
    exempt = groups(replace(t, no_decay_new=None))
    branch_norm = dict(trainable)["branch.spatial.0.ln_1.weight"]
    assert exempt[id(branch_norm)] == (10.0, 0.0) and got[id(branch_norm)] == (10.0, t.weight_decay)


# ---- BertAdam ------------------------------------------------------------------------------------------
def test_bertadam_is_adam_without_bias_correction_and_clips_each_parameter():
    from mugstan.engine.optim import BertAdam

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    q = torch.nn.Parameter(torch.tensor([0.5]))
    opt = BertAdam(
        [{"params": [p], "weight_decay": 0.2}, {"params": [q], "weight_decay": 0.0}],
        lr=0.1,
        betas=(0.9, 0.98),
        eps=1e-6,
        max_grad_norm=1.0,
    )
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
    twin = {id(p): q for p, q in zip(model.parameters(), ref.parameters(), strict=True)}
    loop = torch.optim.AdamW(
        [
            {"params": [twin[id(p)] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
            for g in opt.param_groups
        ],
        betas=cfg.betas,
        eps=cfg.eps,
        foreach=False,
    )
    assert {g["weight_decay"] for g in loop.param_groups} == {0.0, 0.1}
    for _ in range(5):
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        loop.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
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
    ((indexed, _),) = embedder.results["short"]
    frames, mask = ClipDataset(Annotations([Clip(str(video))]), cfg.data, train=False).reader.read(Clip(str(video)), 0)
    with torch.no_grad():
        real_only = model.encode_video(frames[None, :3], torch.ones(1, 3, dtype=torch.bool)).x[0]
    assert mask.tolist() == [True] * 3 + [False] * 3
    np.testing.assert_allclose(indexed, real_only.numpy(), atol=1e-5)
