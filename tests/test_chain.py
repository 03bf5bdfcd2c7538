"""Checkpoint chains: post-pretraining on a video-text + image-text mix, fine-tuning initialised from
its checkpoint, evaluation; a converted Mug-STAN checkpoint scored with the Mug head from the
command line; zero-shot evaluation with no checkpoint at all."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import write_config
from PIL import Image

from mugstan.cli import main as cli
from mugstan.config import load_config, mix_data_config
from mugstan.data.datasets import build_train_dataset
from mugstan.data.synthetic import SynthParams, generate
from mugstan.engine.checkpoint import init_from, load_model
from mugstan.engine.train import train
from mugstan.models import build_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    generate(root / "synth", SynthParams(videos=24, frames=8, size=32, seed=1), progress=False)
    images = root / "cc3m"  # CC3M's layout: caption<TAB>path of JPEG files
    (images / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, color in enumerate(["red", "green", "blue", "white"] * 2):
        pixel = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (240, 240, 240)}[color]
        array = np.clip(rng.normal(pixel, 20, size=(40, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(images / "img" / f"{i}.jpg")
        lines.append(f"a photo of something {color}\timg/{i}.jpg")
    (images / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_post_pretraining_on_a_mix_then_fine_tuning_from_it(tmp_path, data, caplog):
    synth = data / "synth"
    pre = load_config(
        write_config(tmp_path / "pre.yaml", synth, tmp_path / "pre"),
        [("data.mix", [{"dataset": "cc3m", "root": str(data / "cc3m"), "train_ann": "train.tsv"}]), "model.head=mug"],
    )
    assert mix_data_config(pre.data, pre.data.mix[0]).train_ann == str(
        data / "cc3m" / "train.tsv"
    )  # inside the source's own root
    mixed = build_train_dataset(pre.data, build_model(pre.model).tokenizer)
    n_video = len(mixed.parts[0])  # caption items of the video-text set
    assert len(mixed) == n_video + 8
    image_item = mixed[n_video + 2]  # a JPEG as a one-frame video: the same frame four times
    assert image_item["frames"].shape == (4, 3, 32, 32) and torch.equal(
        image_item["frames"][0], image_item["frames"][3]
    )
    assert image_item["index"] == n_video + 2
    train(pre, progress=False)
    pre_ckpt = tmp_path / "pre" / "checkpoints" / "best"

    fine = load_config(
        write_config(tmp_path / "fine.yaml", synth, tmp_path / "fine"),
        [f"model.init_from={pre_ckpt}", "model.head=mug", f"data.test_ann={synth / 'test.jsonl'}"],
    )
    torch.manual_seed(123)  # another initialisation than the pretraining run's
    model = build_model(fine.model)
    report = init_from(model, pre_ckpt)
    pre_model, _ = load_model(pre_ckpt)
    assert report["new"] == [] and report["unused"] == []
    assert all(torch.equal(v, pre_model.state_dict()[k]) for k, v in model.state_dict().items())

    caplog.set_level(logging.INFO, logger="mugstan")  # what `mugstan train` shows; a library call logs it
    results = train(fine, progress=False)  # the engine initialises from the checkpoint, trains, tests
    assert "model.init_from: " in caplog.text
    assert (
        cli(
            [
                "eval",
                str(tmp_path / "fine" / "config.yaml"),
                "--checkpoint",
                str(tmp_path / "fine" / "checkpoints" / "best"),
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())["retrieval"] == results["test"]["retrieval"]


def test_recognition_initialised_from_a_retrieval_checkpoint(tmp_path, data):
    """A classifier takes the retrieval model's weights under encoder.*; its classifier is new."""
    synth = data / "synth"
    cfg = load_config(write_config(tmp_path / "r.yaml", synth, tmp_path / "r"))
    retrieval = build_model(cfg.model)
    cli_ckpt = tmp_path / "ckpt"
    from mugstan.engine.checkpoint import save_checkpoint

    save_checkpoint(cli_ckpt, retrieval, cfg)
    rec = load_config(
        write_config(tmp_path / "c.yaml", synth, tmp_path / "c"),
        ["model.task=recognition", "model.classifier=linear", "model.num_classes=10"],
    )
    classifier = build_model(rec.model)
    report = init_from(classifier, cli_ckpt)
    assert sorted(report["new"]) == ["classifier.fc.bias", "classifier.fc.weight"]
    assert torch.equal(classifier.encoder.branch.time_embed.weight, retrieval.branch.time_embed.weight)
    bigger = load_config(write_config(tmp_path / "b.yaml", synth, tmp_path / "b"), ["model.stan.max_frames=32"])
    with pytest.raises(ValueError, match="other shapes.*branch.time_embed.weight"):
        init_from(build_model(bigger.model), cli_ckpt)


def test_converted_mugstan_checkpoint_scored_with_mug_from_the_command_line(tmp_path, data):
    """A released Mug-STAN checkpoint (the authors' key names) converts like a STAN one (Mug has no
    parameters): the command line's model.head=mug scores it with Mug, exactly as the Mug model
    built from the converted file evaluates; the default is STAN's mean pooling."""
    from reference_layouts import stan_reference_layout

    from mugstan.engine.evaluate import evaluate
    from mugstan.metrics import retrieval_metrics

    synth = data / "synth"
    cfg = load_config(
        write_config(tmp_path / "m.yaml", synth, tmp_path / "m"), [f"data.test_ann={synth / 'test.jsonl'}"]
    )
    torch.save(stan_reference_layout("self"), tmp_path / "mugstan_released.pth")
    converted = tmp_path / "mugstan.safetensors"
    assert cli(["convert", str(tmp_path / "mugstan_released.pth"), str(converted), "--format", "stan"]) == 0
    config = tmp_path / "m.yaml"
    results, models = {}, {}
    for head in ("mean", "mug"):
        overrides = ["model.context_length=16"] + (["model.head=mug"] if head == "mug" else [])  # mean: the default
        assert (
            cli(
                [
                    "eval",
                    str(config),
                    "--checkpoint",
                    str(converted),
                    "--json",
                    str(tmp_path / f"{head}.json"),
                    f"data.test_ann={synth / 'test.jsonl'}",
                    *overrides,
                ]
            )
            == 0
        )
        results[head] = json.loads((tmp_path / f"{head}.json").read_text())["retrieval"]
        models[head], _ = load_model(converted, overrides=overrides)
        assert type(models[head].head).__name__ == {"mean": "Mean", "mug": "Mug"}[head]
        assert results[head] == evaluate(models[head], cfg, progress=False)["retrieval"]
    # the scores of each head, written out from the same frame and word embeddings (Mug has no parameters):
    # Mean as methods.md defines it, Mug as test_methods.dense_mug computes it pair by pair
    by_hand = scored_by_hand(models["mean"], models["mug"].head, cfg)
    for head, model in models.items():
        scores = model_scores(model, cfg)
        assert retrieval_metrics(scores, split_clips(cfg)[1]) == results[head]  # the numbers of these scores
        torch.testing.assert_close(scores, by_hand[head], rtol=0, atol=3e-5)  # measured 7.6e-6 (scaled by 100)
    assert (by_hand["mean"] - by_hand["mug"]).abs().max() > 10  # the heads' scores differ: measured up to 26.8


def split_clips(cfg) -> tuple[list, list, torch.Tensor, torch.Tensor]:
    """The test split's captions, their videos, and the videos' frames and frame masks, clip by clip."""
    from mugstan.data.datasets import build_dataset, load_annotations

    ann = load_annotations(cfg.data, "test")
    dataset = build_dataset(cfg.data, "test", ann=ann)
    items = [dataset[i] for i in range(len(dataset))]
    return ann.captions, ann.caption_clip, torch.stack([f["frames"] for f in items]), torch.stack(
        [f["frame_mask"] for f in items]
    )


def model_scores(model, cfg) -> torch.Tensor:
    """The model's own scaled scores, test captions x test videos."""
    captions, _, frames, fmask = split_clips(cfg)
    with torch.no_grad():
        return model.similarity(model.encode_text(*model.tokenize(captions)), model.encode_video(frames, fmask))


def scored_by_hand(model, mug, cfg) -> dict:
    """{"mean": scores, "mug": scores} of the test captions x videos from ``model``'s per-frame embeddings and word
    embeddings (its backbone and branch): Mean's cosine of the frame average, and Mug's (``mug``: its lam and mode)."""
    from test_methods import dense_mug

    from mugstan.heads.base import masked_mean

    captions, _, frames, fmask = split_clips(cfg)
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        embeds = torch.cat([model.frame_features(f[None], m[None]).embeds for f, m in zip(frames, fmask, strict=True)])
        text = model.backbone.encode_text(*model.tokenize(captions))
        mean = normalize(text.pooled, dim=-1) @ normalize(masked_mean(embeds, fmask), dim=-1).t()
        words, frames_ = normalize(text.tokens, dim=-1), normalize(embeds, dim=-1)
        return {
            "mean": model.logit_scale() * mean,
            "mug": model.logit_scale() * dense_mug(words, text.mask, frames_, fmask, mug.lam, mug.mode),
        }


def test_zero_shot_evaluation_needs_no_checkpoint_and_no_training_files(tmp_path, data):
    from mugstan.engine.evaluate import evaluate, zero_shot_model

    synth = data / "synth"
    path = write_config(tmp_path / "z.yaml", synth, tmp_path / "z")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["train_ann"] = str(tmp_path / "not_downloaded.jsonl")  # only the evaluated split must exist
    raw["data"]["test_ann"] = str(synth / "recognition_test.jsonl")
    raw["data"]["extra"] = {"class_names": str(synth / "classes.txt")}
    path.write_text(yaml.safe_dump(raw))
    torch.manual_seed(7)  # mugstan-tiny has no pretrained weights: the same seed builds the same model twice
    assert cli(["eval", str(path), "--json", str(tmp_path / "z.json")]) == 0
    result = json.loads((tmp_path / "z.json").read_text())
    torch.manual_seed(7)
    cfg = load_config(path, splits=["test"])
    assert (
        result["zero_shot"]
        and result["recognition"] == evaluate(zero_shot_model(cfg), cfg, progress=False)["recognition"]
    )


def test_eval_reads_videos_as_the_checkpoint_was_trained(tmp_path, data, capsys):
    """`mugstan eval --checkpoint` takes the checkpoint's frames / image size / resize / sampler over
    the given config's, says which, and the command line still decides: a model trained on 4 frames
    is scored on 4, not on the config's 8."""
    from mugstan.engine.checkpoint import save_checkpoint

    synth = data / "synth"
    trained = load_config(write_config(tmp_path / "t.yaml", synth, tmp_path / "t"), ["data.resize_short=40"])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", build_model(trained.model), trained)  # trained on 4 frames, short side 40
    config = write_config(tmp_path / "e.yaml", synth, tmp_path / "e")
    raw = yaml.safe_load(config.read_text())
    raw["data"].update(num_frames=8, sampler="dense", dense_stride=1)
    config.write_text(yaml.safe_dump(raw))

    def run(name, *overrides):
        capsys.readouterr()
        assert (
            cli(
                [
                    "eval",
                    str(config),
                    "--checkpoint",
                    str(tmp_path / "ckpt"),
                    "--json",
                    str(tmp_path / f"{name}.json"),
                    f"data.test_ann={synth / 'test.jsonl'}",
                    *overrides,
                ]
            )
            == 0
        )
        return json.loads((tmp_path / f"{name}.json").read_text()), capsys.readouterr().out

    result, out = run("default")
    assert result["data_from_checkpoint"] == {
        "num_frames": 4,
        "sampler": "segment",
        "dense_stride": 4,
        "resize_short": 40,
    }
    assert "data.num_frames: 4 from the checkpoint (the config says 8; data.num_frames=8 on the command line" in out
    assert "data.image_size" not in out  # the same in both: not mentioned
    same, _ = run(
        "as_trained", "data.num_frames=4", "data.sampler=segment", "data.dense_stride=4", "data.resize_short=40"
    )
    assert same["data_from_checkpoint"] == {} and same["retrieval"] == result["retrieval"]
    mine, out = run("overridden", "data.num_frames=8")
    assert "num_frames" not in mine["data_from_checkpoint"] and "data.num_frames" not in out
    # the numbers of the checkpoint's model evaluated in this process on 4 and on 8 frames read as trained
    from mugstan.engine.evaluate import evaluate

    model, _ = load_model(tmp_path / "ckpt")
    as_trained = [f"data.test_ann={synth / 'test.jsonl'}", "data.sampler=segment", "data.dense_stride=4"]
    for frames, got in ((4, result), (8, mine)):
        cfg = load_config(config, [*as_trained, "data.resize_short=40", f"data.num_frames={frames}"])
        assert got["retrieval"] == evaluate(model, cfg, progress=False)["retrieval"], frames
    assert mine["retrieval"] != result["retrieval"]  # and 8 frames score otherwise: the check tells them apart
