"""Relative and absolute paths mean the same files from any working folder (docs/training.md,
"Paths"): paths typed by the user are anchored at the working folder, a dataset's own files inside
its data.root, once, when a config is loaded; a saved config and a moved run folder stay valid."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mugstan.cli import main as cli
from mugstan.config import ConfigError, anchor_paths, load_config, save_config
from mugstan.data.synthetic import SynthParams, generate


def test_relative_paths_are_anchored_once(tmp_path, monkeypatch):
    """data.root at the working folder, annotations inside it, output_dir and weights at the working
    folder; specs, hub names and absolute paths untouched; anchoring twice changes nothing."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "data" / "classes.txt").write_text("a\n")
    (tmp_path / "exp.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "backbone": "mugstan-tiny",
                    "init_from": "hf-hub:org/name",
                    "chat": {"llava": "llava-hf/llava-1.5-7b-hf"},
                },
                "data": {
                    "root": "data",
                    "train_ann": "train.jsonl",
                    "test_ann": "/elsewhere/test.jsonl",
                    "extra": {"class_names": "classes.txt"},
                },
                "train": {"output_dir": "runs/../runs/x"},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("exp.yaml", ["model.weights=~/clip.safetensors"], check_files=False)
    assert cfg.data.root == str(tmp_path / "data")
    assert cfg.data.train_ann == str(tmp_path / "data" / "train.jsonl")
    assert cfg.data.extra == {"class_names": str(tmp_path / "data" / "classes.txt")}
    assert cfg.data.test_ann == "/elsewhere/test.jsonl" and cfg.train.output_dir == str(tmp_path / "runs" / "x")
    assert cfg.model.weights == str(Path("~/clip.safetensors").expanduser())
    assert cfg.model.init_from == "hf-hub:org/name" and cfg.model.chat.llava == "llava-hf/llava-1.5-7b-hf"
    before = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    anchor_paths(cfg, base="/somewhere/else")
    assert OmegaConf.to_yaml(OmegaConf.structured(cfg)) == before


def test_a_saved_config_loads_to_the_same_paths_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "work" / "data" / "train.jsonl").write_text("")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "work" / "exp.yaml").write_text(
        "data: {root: data, train_ann: train.jsonl}\ntrain: {output_dir: runs/x}\n"
    )
    cfg = load_config("exp.yaml")
    save_config(cfg, tmp_path / "saved.yaml")
    monkeypatch.chdir(tmp_path / "other")
    again = load_config(tmp_path / "saved.yaml")
    assert (again.data.root, again.data.train_ann, again.train.output_dir) == (
        cfg.data.root,
        cfg.data.train_ann,
        cfg.train.output_dir,
    )
    assert again.data.train_ann == str(tmp_path / "work" / "data" / "train.jsonl")


def test_an_annotation_written_from_the_working_folder_gets_the_fix(tmp_path, monkeypatch):
    """``data.root=d data.test_ann=d/test.jsonl`` reads d/d/test.jsonl: the error says why and how."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "test.jsonl").write_text("")
    (tmp_path / "exp.yaml").write_text("model: {backbone: mugstan-tiny}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config("exp.yaml", ["data.root=d", "data.test_ann=d/test.jsonl"], splits=["test"])
    message = str(err.value)
    assert f"data.test_ann: {tmp_path / 'd' / 'd' / 'test.jsonl'} does not exist" in message
    assert "relative to data.root" in message and "d/test.jsonl exists in the working folder" in message


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder (not the repository): a small synthetic dataset and a tiny config
    whose every path is relative."""
    top = tmp_path_factory.mktemp("project")
    generate(top / "work" / "data", SynthParams(videos=16, frames=4, size=32), progress=False)
    (top / "work" / "exp.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "backbone": "mugstan-tiny",
                    "branch": "stan",
                    "head": "mean",
                    "context_length": 16,
                    "stan": {"depth": 2},
                },
                "data": {
                    "dataset": "jsonl",
                    "root": "data",
                    "train_ann": "train.jsonl",
                    "val_ann": "val.jsonl",
                    "test_ann": "test.jsonl",
                    "num_frames": 4,
                    "image_size": 32,
                    "num_workers": 0,
                },
                "train": {"output_dir": "runs/tiny", "epochs": 1, "batch_size": 8, "precision": "fp32", "log_every": 1},
                "eval": {"batch_size": 32},
            }
        )
    )
    return top


def test_train_eval_index_search_with_relative_paths(project, monkeypatch, capsys):
    """The README's commands with relative paths from the project folder; then the run folder is
    moved and opened from another folder: its saved config and checkpoint still work."""
    work = project / "work"
    monkeypatch.chdir(work)
    assert cli(["train", "exp.yaml", "--no-progress"]) == 0
    run = work / "runs" / "tiny"
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert cli(["eval", "exp.yaml", "--checkpoint", "runs/tiny/checkpoints/best", "--json", "eval.json"]) == 0
    first = json.loads((work / "eval.json").read_text())
    assert (
        cli(
            ["index", "data/videos/test", "--checkpoint", "runs/tiny/checkpoints/best", "--out", "idx", "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    assert cli(["search", "idx", "a red circle", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3

    moved = project / "moved"
    shutil.move(str(run), str(moved))
    (project / "elsewhere").mkdir()
    monkeypatch.chdir(project / "elsewhere")
    assert (
        cli(["eval", "../moved/config.yaml", "--checkpoint", "../moved/checkpoints/best", "--json", "again.json"]) == 0
    )
    again = json.loads((project / "elsewhere" / "again.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    from mugstan.engine.checkpoint import load_model

    _, saved = load_model("../moved/checkpoints/best")
    assert saved.train.output_dir == str(moved)  # the run folder where it is now
    capsys.readouterr()
    # the index records its model's absolute path, which moved with the run: the same weights by --checkpoint
    assert (
        cli(
            [
                "search",
                str(work / "idx"),
                "a red circle",
                "-k",
                "3",
                "--json",
                "--checkpoint",
                "../moved/checkpoints/best",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == hits
