"""docs/reproduction.md against the packaged configs (src/mugstan/configs/): every config has a table,
every listed value is the loaded config's, every hyperparameter a config sets is listed, and every
difference from the authors' recipe names an override that restores the authors' value."""

import math
import os
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mugstan.config import CONFIG_DIR, load_config

REPO = Path(__file__).parent.parent
DOC = REPO / "docs" / "reproduction.md"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "synthetic" not in p.parts)
PLUMBING = {"name", "train.output_dir", "data.dataset", "data.root", "data.videos", "data.train_ann", "data.val_ann",
            "data.test_ann", "data.extra"}  # where the data is, not how a model is trained
CORE_TRAINED = {
    "model.backbone",
    "model.pretrained",
    "model.head",
    "model.context_length",
    "data.num_frames",
    "data.sampler",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.eps",
    "train.grad_clip",
    "train.schedule",
    "eval.select_on",
}
CORE_ZEROSHOT = {"model.backbone", "model.pretrained", "model.head", "model.context_length", "data.num_frames"}
HEADER = "| key | mugstan | authors | source | note |"
# Keys whose values are paths: compared as the config file writes them, not as loaded (absolute).
PATH_KEYS = {
    "data.root",
    "data.mix",
    "model.weights",
    "model.init_from",
    "model.chat.branch_weights",
    "train.output_dir",
}


def parse(text: str) -> dict:
    """{config name: [{"key", "mugstan", "authors", "source", "note"}]} from the doc's sections."""
    tables, current = {}, None
    for line in text.splitlines():
        heading = re.fullmatch(r"## `(\w+/\w+)`", line.strip())
        if heading:
            current = tables.setdefault(heading.group(1), [])
            continue
        if current is None or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"malformed row (5 cells expected): {line}"
        key, value, authors, source, note = cells
        current.append(
            {"key": key.strip("`"), "mugstan": literal(value), "authors": authors, "source": source, "note": note}
        )
    return tables


def literal(cell: str):
    assert cell.startswith("`") and cell.endswith("`"), f"values are written in backticks: {cell}"
    return yaml.safe_load(cell[1:-1])


def loaded(path: Path, overrides=()) -> dict:
    cfg = load_config(path, overrides, check_files=False)
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in PLUMBING:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


TABLES = parse(DOC.read_text())


def test_every_config_has_a_table_and_every_table_a_config():
    names = {name(p) for p in CONFIGS}
    assert names - set(TABLES) == set(), "configs without a section in docs/reproduction.md"
    assert set(TABLES) - names == set(), "sections of docs/reproduction.md without a config"
    assert HEADER in DOC.read_text()


def name(path: Path) -> str:
    """src/mugstan/configs/msrvtt/stan_vitb32.yaml -> msrvtt/stan_vitb32, the name the commands take."""
    return path.relative_to(CONFIG_DIR).with_suffix("").as_posix()


@pytest.mark.parametrize("path", CONFIGS, ids=[name(p) for p in CONFIGS])
def test_config_matches_its_table(path):
    rows = TABLES[name(path)]
    text = path.read_text()
    assert text.startswith("# Source: ") and "\n# Target: " in text, f"{path} must open with its source and target"
    cfg = loaded(path)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), f"{path}: a key is listed twice"

    raw = yaml.safe_load(text)
    unlisted = set(flatten(raw)) - PLUMBING - set(keys)
    assert not unlisted, (
        f"{path}: hyperparameters set in the config but not in docs/reproduction.md: {sorted(unlisted)}"
    )
    core = CORE_TRAINED if raw["data"].get("train_ann") else CORE_ZEROSHOT
    assert core <= set(keys), f"{path}: docs/reproduction.md lacks {sorted(core - set(keys))}"

    for row in rows:
        key = row["key"]
        # paths as the file writes them (loading anchors them at the working folder: docs/training.md, "Paths")
        value = lookup(raw, key) if key in PATH_KEYS else lookup(cfg, key)
        assert same(value, row["mugstan"]), f"{path}: {key} is {value!r}, the table says {row['mugstan']!r}"
        assert row["source"] or row["authors"] == "n/a", f"{path}: {key} names no source"
        if row["authors"] == "same":
            continue
        if row["authors"] == "n/a":
            assert row["note"], f"{path}: {key} has no authors' value and no note saying why"
            continue
        authors = literal(row["authors"])
        assert not same(authors, row["mugstan"]), (
            f"{path}: {key} is marked as a difference but equals the authors' value"
        )
        switch = re.findall(r"`([\w.]+=[^`]+)`", row["note"].partition("restore with")[2])
        assert row["note"].startswith("differs:") and switch, (
            f"{path}: {key} differs without a 'restore with `key=value`' switch"
        )
        restored = loaded(path, switch)
        assert same(lookup(restored, key), authors), f"{path}: {' '.join(switch)} does not restore {key}={authors!r}"


def test_the_checks_catch_a_wrong_value(tmp_path):
    """The same comparison on a config whose lr is off by 2x fails (the test can fail)."""
    path = CONFIG_DIR / "msrvtt" / "stan_vitb32.yaml"
    row = next(r for r in TABLES["msrvtt/stan_vitb32"] if r["key"] == "train.lr")
    assert same(lookup(loaded(path), "train.lr"), row["mugstan"])
    assert not same(lookup(loaded(path, ["train.lr=1e-6"]), "train.lr"), row["mugstan"])


def test_key_recipe_values_are_the_authors():
    """Spot checks written out by hand from the reference files (docs/reproduction.md must agree)."""

    def value(config, key):
        return lookup(loaded(CONFIG_DIR / config), key)

    assert (
        value("msrvtt/stan_vitb32.yaml", "train.lr") == 2e-6
        and value("msrvtt/stan_vitb32.yaml", "train.weight_decay") == 0.05
    )
    assert value("msrvtt/stan_vitb32.yaml", "train.epochs") == 10 and value(
        "msrvtt/stan_vitb32.yaml", "data.crop_scale"
    ) == [0.08, 1.0]
    assert value("msrvtt/mugstan_vitb32.yaml", "data.test_num_frames") == 32
    assert (
        value("didemo/mugstan_vitb32.yaml", "model.context_length") == 77
        and value("didemo/mugstan_vitb32.yaml", "train.epochs") == 20
    )
    assert (
        value("didemo/stan_vitb32.yaml", "train.batch_size") == 128
        and value("didemo/stan_vitb32.yaml", "data.num_frames") == 64
    )
    assert (
        value("lsmdc/mugstan_vitb32.yaml", "model.temperature") == 0.03
        and value("lsmdc/mugstan_vitb32.yaml", "train.new_module_lr_mult") == 5
    )
    assert (
        value("msrvtt/clip4clip_meanP_vitb32.yaml", "data.sampler") == "fps"
        and value("msrvtt/clip4clip_meanP_vitb32.yaml", "data.sample_fps") == 1
    )
    assert (
        value("msrvtt/clip2video_vitb32.yaml", "data.sample_fps") == 2.5
        and value("msrvtt/clip2video_vitb32.yaml", "train.epochs") == 3
    )
    assert value("vatex/clip2video_vitb32.yaml", "model.tab_centers") == 7
    assert (
        value("msrvtt/stan_vitb32.yaml", "train.eps") == 1e-8
        and value("msrvtt/clip4clip_seqTransf_vitb32.yaml", "train.eps") == 1e-6
    )
    assert (
        value("msrvtt/clip4clip_meanP_vitb32.yaml", "train.optimizer") == "bertadam"
        and value("msrvtt/stan_vitb32.yaml", "train.optimizer") == "adamw"
    )
    assert value("msrvtt/clip4clip_meanP_vitb32.yaml", "train.schedule") == "bert_warmup_cosine"
    assert value("msrvtt/stan_vitb32.yaml", "train.no_decay") == ["norm", "bias"] and value(
        "msrvtt/clip4clip_meanP_vitb32.yaml", "train.no_decay"
    ) == ["bias"]
    # the authors' CLIP baseline (clip_msrvtt_b32_hf.py), STAN post-pretraining and its fine-tuning,
    # CLIP2Video's VATEX 1k5
    assert (
        value("msrvtt/clip_vitb32.yaml", "train.weight_decay") == 0.2
        and value("msrvtt/clip_vitb32.yaml", "model.branch") == "none"
    )
    assert (
        value("pretrain/stan_webvid_vitb32.yaml", "train.lr") == 4e-6
        and value("pretrain/stan_webvid_vitb32.yaml", "data.num_frames") == 8
    )
    assert (
        value("pretrain/stan_webvid_vitb32.yaml", "model.head") == "mean"
        and value("pretrain/stan_webvid_vitb32.yaml", "train.cosine_end") == 4
    )
    assert value("msrvtt/stan_vitb32_postpretrained.yaml", "model.init_from") == os.path.abspath(
        "runs/pretrain_stan_webvid_vitb32/checkpoints/best"
    )
    assert value("vatex/clip2video_1k5_vitb32.yaml", "data.test_ann").endswith("test1k5_sec_list.txt")
    assert value("vatex/clip2video_1k5_vitb32.yaml", "data.val_ann") is None
