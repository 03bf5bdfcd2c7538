"""Hugging Face Hub: hf-hub: / local-dir: resolution through the real huggingface_hub code on a
local cache (offline), and what `mugstan push` uploads (only the Hub's network calls replaced)."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import write_config

from mugstan import cli
from mugstan.hub import HubError, method_name, parse_hf_spec, resolve_checkpoint, resolve_weights, stage

SRC = Path(__file__).resolve().parents[1] / "src"
COMMIT = "a" * 40
OLD_COMMIT = "b" * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as `mugstan train` leaves it (tiny untrained STAN-self), and the same model as a
    `mugstan convert --format stan` file."""
    from mugstan.backbones.convert import save_safetensors
    from mugstan.config import load_config
    from mugstan.engine.checkpoint import save_checkpoint
    from mugstan.models import build_model

    root = tmp_path_factory.mktemp("run")
    cfg = load_config(write_config(root / "train.yaml", root / "data", root, lr=3e-4), check_files=False)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ckpt = save_checkpoint(root / "checkpoints" / "best", model, cfg, state={"step": 7})
    assert (ckpt / "state.pt").is_file()
    metrics = {"R@1": 41.25, "R@5": 70.0, "R@10": 80.0, "MdR": 2.0, "MnR": 9.5}
    (root / "results.json").write_text(json.dumps({
        "name": "tiny", "steps": 7, "best": {"value": 40.0, "metric": "t2v R@1", "step": 7, "epoch": 1},
        "test": {"split": "test", "retrieval": {"t2v": metrics, "v2t": {**metrics, "R@1": 38.5}}, "dropped": []}}))
    model_config = {**dataclasses.asdict(cfg.model), "pretrained": None, "weights": None}
    converted = root / "stan.safetensors"
    save_safetensors(model.state_dict(), converted, {"format": "mugstan", "model_config": json.dumps(model_config)})
    return {"checkpoint": ckpt, "converted": converted, "model": model}


def same_weights(path: Path, model) -> bool:
    from mugstan.engine.checkpoint import load_model

    loaded, _ = load_model(path)
    theirs = loaded.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def add_to_cache(cache: Path, repo_id: str, commit: str, files: Path, ref: str) -> Path:
    """Lay out a repository revision in a Hugging Face hub cache as huggingface_hub does: content
    in blobs/<sha256>, snapshots/<commit>/<file> symlinks to it, refs/<ref> holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def resolve_offline(hf_home: Path, *specs: str, function: str = "resolve_checkpoint") -> subprocess.CompletedProcess:
    """``mugstan.hub.<function>`` in a fresh process: huggingface_hub reads HF_HOME and
    HF_HUB_OFFLINE when it is imported, as it does for a user's `mugstan eval`."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    env.pop("HF_HUB_CACHE", None)
    code = f"import sys\nfrom mugstan.hub import {function} as f\nfor s in sys.argv[1:]: print(f(s))"
    return subprocess.run([sys.executable, "-c", code, *specs], env=env, capture_output=True, text=True, timeout=120)


def test_hf_hub_loads_from_the_cache_offline(run, tmp_path):
    """Both repository layouts, by branch, tag and commit, through snapshot_download's cache lookup."""
    stage(run["checkpoint"], "org/name", tmp_path / "trained")
    stage(run["converted"], "org/name", tmp_path / "converted")
    cache = tmp_path / "hf" / "hub"
    trained = add_to_cache(cache, "org/name", COMMIT, tmp_path / "trained", "main")
    converted = add_to_cache(cache, "org/name", OLD_COMMIT, tmp_path / "converted", "v0")

    done = resolve_offline(tmp_path / "hf", "hf-hub:org/name", f"hf-hub:org/name@{COMMIT}", "hf-hub:org/name@v0",
                           f"hf-hub:org/name@{OLD_COMMIT}")
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert paths == [trained, trained, converted / "model.safetensors", converted / "model.safetensors"]
    assert same_weights(paths[0], run["model"]) and same_weights(paths[2], run["model"])


def test_weights_from_the_cache_offline(tmp_path):
    """model.weights: a HuggingFace CLIPModel repository resolves to its folder, a repository of one
    open_clip-layout safetensors file to that file."""
    for name, files in (("clip", ["config.json", "model.safetensors"]), ("single", ["clip.safetensors", "README.md"])):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text(f"{name} {f}")
    cache = tmp_path / "hf" / "hub"
    clip = add_to_cache(cache, "openai/clip", COMMIT, tmp_path / "clip", "main")
    single = add_to_cache(cache, "org/single", COMMIT, tmp_path / "single", "main")
    done = resolve_offline(
        tmp_path / "hf", "hf-hub:openai/clip", "hf-hub:org/single", "plain/ViT-B-32.pt", function="resolve_weights"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(clip), str(single / "clip.safetensors"), "plain/ViT-B-32.pt"]
    (tmp_path / "single" / "other.safetensors").write_text("")
    with pytest.raises(HubError, match="found .safetensors: clip.safetensors, other.safetensors"):
        resolve_weights(f"local-dir:{tmp_path / 'single'}")


def test_missing_name_offline_is_one_clear_line(tmp_path):
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    done = resolve_offline(tmp_path / "hf", "hf-hub:org/missing")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mugstan.hub.HubError: hf-hub:org/missing: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1; run once online or set HF_HUB_OFFLINE=0" in last


def test_push_error_is_one_line_exit_2(run, tmp_path, capsys):
    """The push command turns a spec that cannot be resolved into one line and exit status 2."""
    assert cli.main(["push", f"local-dir:{tmp_path / 'nowhere'}", "org/name"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: local-dir:{tmp_path / 'nowhere'}: ")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    assert cli.main(["push", str(tmp_path / "ckpt"), "org/name"]) == 2
    assert "not a mugstan checkpoint (no config.yaml" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"test": {"split": "test", "retrieval": {"t2v": {"R@1": 1.0}}}}))
    assert (
        cli.main(
            [
                "push",
                str(run["checkpoint"]),
                "org/name",
                "--results",
                str(tmp_path / "bad.json"),
                "--local-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: bad.json: unexpected results layout (KeyError: 'R@5')")


def test_local_dir_round_trip(run, tmp_path, capsys):
    for source, name in ((run["checkpoint"], "trained"), (run["converted"], "converted")):
        out = tmp_path / name
        assert cli.main(["push", str(source), "org/name", "--local-dir", str(out)]) == 0
        assert f"--checkpoint local-dir:{out}" in capsys.readouterr().out
        resolved = resolve_checkpoint(f"local-dir:{out}")
        assert resolved == (out if name == "trained" else out / "model.safetensors")
        assert same_weights(resolved, run["model"])
        assert same_weights(
            f"local-dir:{out}", run["model"]
        )  # load_model (eval, embed, index, search) takes specs itself


def test_resolve_checks_specs_and_passes_paths_through(run, tmp_path):
    assert resolve_checkpoint("runs/x/checkpoints/best") == Path("runs/x/checkpoints/best")
    assert resolve_checkpoint(run["converted"]) == run["converted"]
    assert parse_hf_spec("hf-hub:org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    assert parse_hf_spec("hf-hub:org/name") == ("org/name", None)
    for bad in ("hf-hub:name", "hf-hub:org/name@", "hf-hub:org/a/b", "hf-hub:org/na me"):
        with pytest.raises(HubError, match=f"^{bad}: expected|^{bad}: empty"):
            parse_hf_spec(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubError, match="no model.safetensors in"):
        resolve_checkpoint(f"local-dir:{empty}")
    shutil.copyfile(run["checkpoint"] / "model.safetensors", empty / "model.safetensors")  # no model_config in it
    with pytest.raises(HubError, match="no config.yaml, and the file's metadata holds no model_config"):
        resolve_checkpoint(f"local-dir:{empty}")


class FakeHub:
    """Stands in for the two network calls of HfApi; keeps what upload_folder was given."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.created, self.branches, self.uploads = [], [], []
        monkeypatch.setattr(
            HfApi, "create_repo", lambda api, repo_id, **kw: self.created.append((repo_id, kw, api.token))
        )
        monkeypatch.setattr(
            HfApi, "create_branch", lambda api, repo_id, **kw: self.branches.append((repo_id, kw, api.token))
        )
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: self.upload_folder(api.token, **kw))

    def upload_folder(self, token, *, repo_id, folder_path, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "files": files, "token": token, **kw})
        pr = f"https://huggingface.co/{repo_id}/discussions/1" if kw.get("create_pr") else None
        return type(
            "CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{COMMIT}", "pr_url": pr}
        )()


def test_push_uploads_weights_config_and_card(run, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert cli.main(["push", str(run["checkpoint"]), "org/name", "--private"]) == 0
    assert f"pushed to https://huggingface.co/org/name/commit/{COMMIT}" in capsys.readouterr().out
    assert hub.created == [("org/name", {"private": True, "exist_ok": True}, None)] and hub.branches == []
    (upload,) = hub.uploads
    files = upload["files"]
    assert sorted(files) == [
        "README.md",
        "config.yaml",
        "model.safetensors",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]  # never state.pt
    assert files["model.safetensors"] == (run["checkpoint"] / "model.safetensors").read_bytes()
    assert files["config.yaml"] == (run["checkpoint"] / "config.yaml").read_bytes()
    assert upload["delete_patterns"] == [] and upload["revision"] is None and upload["create_pr"] is False
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: mugstan\nlicense: mit\n")
    for expected in (
        "# org/name",
        "| method | STAN-self |",  # method
        "| backbone | mugstan-tiny |",
        "| learning rate | 0.0003 |",  # recipe
        "| batch size | 4 |",
        "| dataset format | jsonl |",  # data
        "| training annotations | train.jsonl |",
        "| frames per clip | 4 |",
        "Best validation t2v R@1: 40.0 (step 7, epoch 1).",  # metrics from the run's results.json
        "| t2v | 41.2 | 70.0 | 80.0 | 2.0 | 9.5 |",
        "| v2t | 38.5 |",
        "mugstan eval CONFIG.yaml --checkpoint hf-hub:org/name",  # how to load it
        'load_model(resolve_checkpoint("hf-hub:org/name"))',
    ):
        assert expected in card, expected


def test_push_converted_release(run, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    result = {"split": "test", "recognition": {"top1": 55.5, "top5": 80.25}, "zero_shot": True}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    assert cli.main(["push", str(run["converted"]), "org/stan", "--results", str(tmp_path / "eval.json")]) == 0
    files = hub.uploads[0]["files"]
    assert sorted(files) == ["README.md", "model.safetensors", "open_clip_config.json", "open_clip_model.safetensors"]
    assert hub.uploads[0]["delete_patterns"] == [
        "config.yaml"
    ]  # a trained checkpoint's config.yaml of an earlier push goes
    assert files["model.safetensors"] == run["converted"].read_bytes()  # unchanged: its metadata is its config
    card = files["README.md"].decode()
    assert "| method | STAN-self |" in card and "Converted from the authors' released checkpoint" in card
    assert "| zero-shot top-1 | 55.5 |" in card and "--checkpoint hf-hub:org/stan" in card


@pytest.mark.parametrize(
    "model, name",
    [
        ({"branch": "stan", "head": "mug", "stan": {"time_module": "conv"}}, "Mug-STAN (STAN-conv)"),
        ({"branch": "stan", "head": "mean"}, "STAN-self"),
        ({"branch": "stan", "head": "seqTransf"}, "STAN-self + CLIP4Clip (seqTransf)"),
        ({"branch": "none", "head": "tdb_tab"}, "CLIP2Video (TDB + TAB)"),
        ({"branch": "none", "head": "seqTransf"}, "CLIP4Clip (seqTransf)"),
        ({"head": "meanP"}, "CLIP4Clip (meanP)"),
    ],
)
def test_method_names(model, name):
    assert method_name(model) == name


def test_unknown_method():
    with pytest.raises(HubError, match="x.yaml: unknown model.branch 'none' / model.head 'cosine'"):
        method_name({"head": "cosine"}, "x.yaml")


def test_corrupt_repos_and_missing_paths_are_one_line_user_errors(run, tmp_path, monkeypatch):
    """model.init_from and model.chat.branch_weights naming a corrupt hf-hub: / local-dir: repository or a missing
    path: a UserError naming the key and the spec (one `error:` line, exit 2), never a traceback."""
    from huggingface_hub import constants

    from mugstan.chat.model import load_branch_weights
    from mugstan.engine.checkpoint import init_from
    from mugstan.errors import CorruptFileError, MissingFileError, UserError

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(run["checkpoint"] / "config.yaml", repo / "config.yaml")
    (repo / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    cache = tmp_path / "hf" / "hub"
    add_to_cache(cache, "org/broken", COMMIT, repo, "main")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = run["model"]
    for spec in (f"local-dir:{repo}", "hf-hub:org/broken"):
        with pytest.raises(CorruptFileError, match=f"model.init_from: {spec} is damaged"):
            init_from(model, spec)
        with pytest.raises(CorruptFileError, match=f"model.chat.branch_weights: {spec} is damaged"):
            load_branch_weights(model.branch, spec, 2)
    with pytest.raises(MissingFileError, match="model.init_from: .*nowhere is neither a checkpoint folder"):
        init_from(model, str(tmp_path / "nowhere"))
    with pytest.raises(MissingFileError, match="model.chat.branch_weights: .*nowhere does not exist"):
        load_branch_weights(model.branch, str(tmp_path / "nowhere"), 2)
    with pytest.raises(UserError, match="is not a folder"):
        init_from(model, f"local-dir:{tmp_path / 'nowhere'}")
    # the command line: `mugstan train` with a missing init_from stops with one line, exit 2
    from data_fixtures import write_config

    config = write_config(tmp_path / "t.yaml", tmp_path, tmp_path / "out")
    (tmp_path / "train.jsonl").write_text("")
    assert cli.main(["train", str(config), f"model.init_from=local-dir:{repo}"]) == 2


def test_index_built_from_a_spec_records_the_spec(run, tmp_path, monkeypatch, capsys):
    """`mugstan index --checkpoint hf-hub:...` records hf-hub:org/name@<commit> (not the cache's blob path) and
    local-dir: its folder, so `mugstan search INDEX` finds the model again without --checkpoint."""
    import numpy as np
    from huggingface_hub import constants

    from mugstan.data.synthetic import SynthParams, render_clip, write_video
    from mugstan.search.index import build_index

    videos = tmp_path / "videos"
    videos.mkdir()
    clip, _ = render_clip(
        "red", "circle", ("left", "right"), SynthParams(videos=2, frames=8, size=32), np.random.default_rng(0)
    )
    write_video(videos / "a.mp4", clip)
    stage(run["checkpoint"], "org/trained", tmp_path / "trained")
    stage(run["converted"], "org/converted", tmp_path / "converted")
    cache = tmp_path / "hf" / "hub"
    add_to_cache(cache, "org/trained", COMMIT, tmp_path / "trained", "main")
    add_to_cache(cache, "org/converted", OLD_COMMIT, tmp_path / "converted", "v1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for spec, recorded in (
        ("hf-hub:org/trained", f"hf-hub:org/trained@{COMMIT}"),
        ("hf-hub:org/converted@v1", "hf-hub:org/converted@v1"),
        (f"local-dir:{tmp_path / 'trained'}", f"local-dir:{tmp_path / 'trained'}"),
    ):
        out = tmp_path / f"index_{len(recorded)}"
        build_index(videos, spec, out, window=2.0, stride=2.0, progress=False)
        meta = json.loads((out / "index.json").read_text())
        assert meta["model"]["checkpoint"] == recorded
        assert cli.main(["search", str(out), "a red circle", "-k", "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["path"] == "a.mp4"


def test_push_token_revision_and_pull_request(run, monkeypatch, capsys):
    """--token goes to every Hub call, --revision commits to that branch (created if missing), --create-pr opens a
    pull request (against --revision when given) and prints its URL."""
    hub = FakeHub(monkeypatch)
    assert cli.main(["push", str(run["checkpoint"]), "org/name", "--token", "hf_x", "--revision", "dev"]) == 0
    assert "--checkpoint hf-hub:org/name@dev" in capsys.readouterr().out
    assert hub.created[0][2] == hub.uploads[0]["token"] == "hf_x"
    assert hub.branches == [("org/name", {"branch": "dev", "exist_ok": True}, "hf_x")]
    assert hub.uploads[0]["revision"] == "dev" and hub.uploads[0]["create_pr"] is False
    assert cli.main(["push", str(run["checkpoint"]), "org/name", "--create-pr"]) == 0
    assert "pushed to https://huggingface.co/org/name/discussions/1" in capsys.readouterr().out
    assert hub.uploads[1]["create_pr"] is True and hub.uploads[1]["revision"] is None and len(hub.branches) == 1
    assert cli.main(["push", str(run["checkpoint"]), "org/name", "--local-dir", "x", "--create-pr"]) == 2


def test_open_clip_loads_the_clip_part_from_a_local_folder_and_the_hub_cache(run, tmp_path):
    """What `mugstan push` writes in open_clip's layout, loaded by the installed open_clip itself, from local-dir:
    and from hf-hub: in an offline Hugging Face cache (a fresh process): the same tensors, and the same image
    features as mugstan's backbone."""
    from safetensors.torch import load_file

    names = stage(run["checkpoint"], "org/clip", tmp_path / "repo")
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= set(names)
    add_to_cache(tmp_path / "hf" / "hub", "org/clip", COMMIT, tmp_path / "repo", "main")
    code = (
        "import sys, torch, open_clip\nfrom safetensors.torch import save_file\n"
        "for i, name in enumerate(sys.argv[1:]):\n"
        "    m = open_clip.create_model(name).eval()\n"
        "    torch.manual_seed(0)\n"
        "    x = torch.randn(2, 3, m.visual.image_size[0], m.visual.image_size[1])\n"
        "    with torch.no_grad(): f = m.encode_image(x)\n"
        "    save_file({**{k: v.contiguous() for k, v in m.state_dict().items()}, '_features': f}, f'"
        + str(tmp_path)
        + "/loaded{i}.safetensors')\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", code, f"local-dir:{tmp_path / 'repo'}", "hf-hub:org/clip"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    clip = run["model"].backbone.clip.eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, run["model"].backbone.image_size, run["model"].backbone.image_size)
    with torch.no_grad():
        features = clip.encode_image(x)
    for i in range(2):
        loaded = load_file(str(tmp_path / f"loaded{i}.safetensors"))
        assert torch.equal(loaded.pop("_features"), features)
        own = clip.state_dict()
        assert set(loaded) == set(own) and all(torch.equal(loaded[k], own[k]) for k in own)


def test_cards_are_written_for_their_task(run):
    """Detection and chat cards say what the model does, with license, datasets, base_model and metrics in the
    front matter; a chat card names its LLaVA base, not a CLIP backbone or head."""
    import yaml

    from mugstan.hub import model_card, open_clip_layout

    def front(card):
        return yaml.safe_load(card.split("---")[1])

    chat_model = {
        "task": "chat",
        "backbone": "ViT-B-32",
        "head": "meanP",
        "branch": "stan",
        "stan": {"time_module": "self"},
        "chat": {"llava": "llava-hf/llava-1.5-7b-hf", "tune": ["projector"], "video_tokens": "temporal_spatial"},
    }
    config = {"model": chat_model, "data": {"dataset": "videochatgpt", "num_frames": 8}, "train": {"lr": 2e-5}}
    card = model_card(
        "org/chat",
        config,
        chat_model,
        {"split": "test", "qa": {"accuracy": 41.5, "correct": 83, "questions": 200}},
        license="llama2",
    )
    meta = front(card)
    assert (
        meta["license"] == "llama2"
        and meta["base_model"] == "llava-hf/llava-1.5-7b-hf"
        and meta["datasets"] == ["videochatgpt"]
    )
    assert meta["pipeline_tag"] == "video-text-to-text" and meta["metrics"] == ["exact_match"]
    assert "video-classification" not in meta["tags"] and "video-text-retrieval" not in meta["tags"]
    assert "LLaVA (llava-hf/llava-1.5-7b-hf) + STAN-self video tokens model for video chat" in card
    assert "retrieval" not in card and "ViT-B-32" not in card and "meanP" not in card
    assert (
        "| QA exact-match accuracy | 41.5 |" in card
        and 'mugstan chat VIDEO.mp4 "what happens?" --checkpoint hf-hub:org/chat' in card
    )
    detection = {
        "task": "detection",
        "backbone": "ViT-B-16",
        "pretrained": "openai",
        "branch": "stan",
        "head": "meanP",
        "num_classes": 80,
    }
    card = model_card(
        "org/ava",
        {"model": detection, "data": {"dataset": "ava"}},
        detection,
        {"split": "test", "detection": {"mAP": 21.25, "per_class": {}}},
    )
    meta = front(card)
    assert meta["license"] == "mit" and meta["datasets"] == ["ava"] and meta["metrics"] == ["mean_average_precision"]
    assert (
        "video-classification" not in meta["tags"] and "action-detection" in meta["tags"] and "base_model" not in meta
    )
    assert "STAN-self + RoI head (mmaction2's BBoxHeadAVA) model for spatio-temporal action detection" in card
    assert "retrieval" not in card and "| frame-mAP@0.5 | 21.25 |" in card
    retrieval = front(
        model_card("org/r", None, {"backbone": "ViT-B-32", "weights": "hf-hub:openai/clip-vit-base-patch32"})
    )
    assert retrieval["base_model"] == "openai/clip-vit-base-patch32" and retrieval["metrics"] == ["recall"]
    weights = run["checkpoint"] / "model.safetensors"
    assert (
        open_clip_layout({"backbone": "ViT-B-32", "pretrained": "openai"}, weights, "x")[0]["model_cfg"]["quick_gelu"]
        is True
    )
    assert open_clip_layout(chat_model, weights, "x") is None
