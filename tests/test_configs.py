"""Every shipped config builds its model and data pipeline (tiny backbone, fixture data)."""

from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import write_dataset_fixtures

from mugstan.backbones.clip import Tokenizer
from mugstan.config import CONFIG_DIR, load_config
from mugstan.data.datasets import build_dataset, collate
from mugstan.heads.base import Embeddings
from mugstan.losses import build_loss
from mugstan.models import build_model, model_inputs

# the chat/ configs (model.task: chat, a LLaVA checkpoint and Video QA formats) are built in tests/test_chat.py
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not {"synthetic", "chat"} & set(p.parts))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return root, write_dataset_fixtures(root)


def test_there_is_a_config_per_published_experiment():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    for expected in (
        "msrvtt/clip4clip_meanP_vitb32.yaml",
        "msrvtt/clip4clip_seqTransf_vitb32.yaml",
        "msrvtt/clip2video_vitb32.yaml",
        "msrvtt/stan_vitb32.yaml",
        "msrvtt/stan_conv_vitb32.yaml",
        "msrvtt/mugstan_vitb32.yaml",
        "didemo/clip4clip_meanP_vitb32.yaml",
        "didemo/clip4clip_seqTransf_vitb32.yaml",
        "didemo/stan_vitb32.yaml",
        "didemo/mugstan_vitb32.yaml",
        "lsmdc/clip4clip_meanP_vitb32.yaml",
        "lsmdc/clip4clip_seqTransf_vitb32.yaml",
        "lsmdc/stan_vitb32.yaml",
        "lsmdc/mugstan_vitb32.yaml",
        "msvd/clip4clip_meanP_vitb32.yaml",
        "msvd/clip4clip_seqTransf_vitb32.yaml",
        "msvd/clip2video_vitb32.yaml",
        "msvd/stan_vitb32.yaml",
        "msvd/mugstan_vitb32.yaml",
        "msrvtt/stan_vitb16.yaml",
        "kinetics400/stan_vitb16.yaml",
        "ssv2/stan_vitb16.yaml",
        "pretrain/mugstan_webvid_vitb32.yaml",
        "hmdb51/stan_vitb32.yaml",
        "hmdb51/clip_zeroshot_vitb32.yaml",
        "ucf101/stan_vitb32.yaml",
        "ucf101/clip_zeroshot_vitb32.yaml",
        "kinetics400/clip_zeroshot_vitb32.yaml",
        "msrvtt/clip_zeroshot_vitb32.yaml",
        "vatex/clip2video_vitb32.yaml",
        "activitynet/clip4clip_meanP_vitb32.yaml",
        "msrvtt/clip4clip_meanP_7k_vitb32.yaml",
        "msrvtt/clip2video_full_vitb32.yaml",
        "msrvtt/mugstan_vitb16.yaml",
        "msrvtt/mugstan_vitl14.yaml",
        "pretrain/mugstan_webvid_cc3m_vitb32.yaml",
        "msrvtt/mugstan_vitb32_postpretrained.yaml",
        *(
            f"{d}/{m}_coca_{v}.yaml"
            for d in ("msrvtt", "didemo")
            for m in ("stan", "mugstan")
            for v in ("vitb32", "vitl14")
        ),
        "kinetics400/zeroshot_coca_vitb32.yaml",
        "kinetics400/zeroshot_coca_vitl14.yaml",
        "msrvtt/clip_vitb32.yaml",
        "pretrain/stan_webvid_vitb32.yaml",
        "msrvtt/stan_vitb32_postpretrained.yaml",
        "vatex/clip2video_1k5_vitb32.yaml",
    ):
        assert expected in names
    for p in CONFIGS:
        assert p.read_text().startswith("#"), f"{p} must start with a comment citing its source"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(p.parents[1]).as_posix() for p in CONFIGS])
def test_config_builds_model_and_data(path, fixtures, tmp_path):
    root, formats = fixtures
    raw = yaml.safe_load(path.read_text())
    data = {
        **raw["data"],
        "videos": "",
        **formats[raw["data"]["dataset"]],
        "root": str(root),
        "num_frames": 4,
        "image_size": 32,
        "num_workers": 0,
        "test_num_frames": None,
        "resize_short": None,
        "test_resize_short": None,
    }
    for split in ("train", "val", "test"):  # the splits the config names, no others
        if f"{split}_ann" not in raw["data"]:
            data.pop(f"{split}_ann", None)
    data["mix"] = [{**formats[m["dataset"]], "dataset": m["dataset"]} for m in raw["data"].get("mix", [])]
    raw["data"] = data
    coca = raw["model"]["backbone"].startswith("coca")
    # the chain's checkpoint does not exist here
    raw["model"].update(backbone="mugstan-coca-tiny" if coca else "mugstan-tiny", pretrained=None, init_from=None)
    raw.setdefault("train", {})["output_dir"] = str(tmp_path / "run")
    small = tmp_path / path.name
    small.write_text(yaml.safe_dump(raw))
    if "train_ann" not in data:  # an evaluation-only config (zero-shot): built and evaluated as `mugstan eval` does
        from mugstan.engine.evaluate import evaluate, zero_shot_model

        cfg = load_config(small, splits=["test"])
        model = zero_shot_model(cfg, "test")
        result = evaluate(model, cfg, "test")
        headline = result["recognition"]["top1"] if "recognition" in result else result["retrieval"]["t2v"]["R@1"]
        assert result["dropped"] == [] and headline == pytest.approx(zero_shot_by_hand(model, cfg), abs=1e-9)
        return
    cfg = load_config(small)  # types and files checked

    retrieval = cfg.model.task == "retrieval"
    split = "train" if cfg.data.train_ann else "test"  # zero-shot configs only evaluate
    train = build_dataset(
        cfg.data, split, Tokenizer(cfg.model.context_length) if retrieval else None, pairs=retrieval, train=True
    )
    names = getattr(train.ann, "class_names", None) or []
    model = build_model(cfg.model, class_names=names)
    batch = collate([train[0], train[1]])
    loss = build_loss(cfg.model, model)(model(**model_inputs(model, batch, torch.device("cpu"))), batch)
    assert torch.isfinite(loss)
    if cfg.data.test_ann:
        item = build_dataset(cfg.data, "test")[0]
        views = cfg.data.test_clips * cfg.data.test_crops
        assert item["frames"].shape[-4:] == (4, 3, 32, 32) and (views == 1 or item["frames"].shape[0] == views)


def zero_shot_by_hand(model, cfg) -> float:
    """What `mugstan eval` reports for a zero-shot config, clip by clip without the evaluation loop: top-1 of the
    view-averaged class probabilities (recognition), else text-to-video R@1 (a tie counts against the model)."""
    from mugstan.data.datasets import load_annotations

    ann = load_annotations(cfg.data, "test")
    dataset = build_dataset(cfg.data, "test", ann=ann)
    hits = []
    with torch.no_grad():
        items = [dataset[i] for i in range(len(dataset))]
        assert all("frames" in it for it in items)  # every fixture video decodes
        if ann.captions:
            video = [model.encode_video(it["frames"][None], it["frame_mask"][None]).x[0] for it in items]
            text = model.encode_text(*model.tokenize(ann.captions))
            scores = model.similarity(text, Embeddings(torch.stack(video)))
            for c, v in enumerate(ann.caption_clip):
                hits.append(bool((scores[c] < scores[c, v]).sum() == scores.shape[1] - 1))
        else:
            for it, label in zip(items, ann.labels, strict=True):
                frames = it["frames"] if it["frames"].dim() == 5 else it["frames"][None]  # [views, T, 3, H, W]
                mask = it["frame_mask"][None].expand(frames.shape[0], -1)
                probs = model(frames, mask)["logits"].softmax(-1).mean(0)
                hits.append(bool((probs < probs[label]).sum() == probs.shape[0] - 1))
    return 100.0 * sum(hits) / len(hits)


def test_packaged_configs_load_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from mugstan import cli
    from mugstan.config import find_config, packaged_configs

    monkeypatch.chdir(tmp_path)
    packaged = CONFIG_DIR / "msrvtt" / "stan_vitb32.yaml"
    for name in ("msrvtt/stan_vitb32", "msrvtt/stan_vitb32.yaml", "configs/msrvtt/stan_vitb32.yaml"):
        assert find_config(name) == packaged
    cfg = load_config("msrvtt/stan_vitb32", ["data.root=/data/msrvtt"], check_files=False)
    assert cfg.model.branch == "stan" and cfg.data.train_ann == "/data/msrvtt/MSRVTT_train.9k.csv"
    # a local file of the same name comes first: local configs keep working
    (tmp_path / "msrvtt").mkdir()
    (tmp_path / "msrvtt" / "stan_vitb32.yaml").write_text("name: mine\n")
    assert find_config("msrvtt/stan_vitb32.yaml") == Path("msrvtt/stan_vitb32.yaml")
    assert load_config("msrvtt/stan_vitb32.yaml", check_files=False).name == "mine"
    assert find_config("msrvtt/stan_vitb32") == packaged  # no local file of that exact name
    # every packaged config has a name, and `mugstan config list` prints them
    assert "msrvtt/stan_vitb32" in packaged_configs() and len(packaged_configs()) == len(
        list(CONFIG_DIR.glob("*/*.yaml"))
    )
    assert cli.main(["config", "list"]) == 0
    assert capsys.readouterr().out.split() == packaged_configs()


def test_config_show_gives_every_key_its_value_and_a_one_line_doc(capsys):
    from mugstan import cli
    from mugstan.config import config_keys
    from mugstan.config_cli import key_docs

    docs = key_docs()
    assert set(config_keys()) <= set(docs) and all(docs.values()), [k for k, v in docs.items() if not v]
    assert docs["train.lr"] == "CLIP (backbone) learning rate"  # the comment in config.py, as written there
    assert "(segment | dense | fps)" in docs["data.sampler"]  # a choice lists its values
    assert cli.main(["config", "show", "msrvtt/stan_vitb32", "train.lr=3e-6", "model.stan.depth=2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert "lr: 3.0e-06" in lines["lr"] and "# CLIP (backbone) learning rate" in lines["lr"]
    assert "depth: 2" in lines["depth"] and lines["depth"].startswith("    ")  # model.stan.depth, nested twice
    assert "num_workers: auto" in lines["num_workers"]
    assert len(out.splitlines()) == len(docs) and all("  # " in line for line in out.splitlines())
    # what it prints is YAML of the loaded config
    shown = yaml.safe_load(out)
    assert (
        shown["model"]["stan"]["depth"] == 2
        and shown["data"]["crop_scale"] == [0.08, 1.0]
        and shown["train"]["lr"] == 3e-6
    )


def test_models_lists_backbones_with_their_tags_branches_heads_and_tasks(capsys):
    from mugstan import cli
    from mugstan.catalog import backbones

    names = dict(backbones())
    assert {
        "ViT-B-32",
        "ViT-B-16",
        "ViT-L-14",
        "coca_ViT-B-32",
        "mugstan-tiny",
        "mugstan-small",
        "mugstan-coca-tiny",
    } <= set(names)
    assert "openai" in names["ViT-B-32"] and names["mugstan-tiny"] == []
    assert not any("SigLIP" in n or "CLIPA" in n for n in names)  # towers mugstan does not read are not offered
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for text in (
        "mugstan-tiny",
        "random initialisation",
        "ViT-B-32",
        "openai",
        "branches (model.branch)",
        "stan ",
        "STAN's spatial-temporal auxiliary branch",
        "heads (model.head)",
        "seqTransf",
        "Mug-STAN",
        "tasks (model.task)",
    ):
        assert text in out, text


def test_num_workers_auto_fits_the_machine():
    import os

    from mugstan.config import DataConfig

    assert DataConfig().num_workers == "auto"
    assert DataConfig().loader_workers == min(4, len(os.sched_getaffinity(0)))
    assert DataConfig(num_workers=0).loader_workers == 0 and DataConfig(num_workers=7).loader_workers == 7
