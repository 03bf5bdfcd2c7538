"""A corpus of bad inputs through every command: one line `error: ...` naming the problem, exit 2,
nothing lost; broken videos reported with their reason; crashes between the renames of index and
checkpoint writes recovered on the next open; counters and logs that survive --resume.

Most cases need no model; the index, search and checkpoint cases use an untrained mugstan-tiny
model saved once per module."""

import hashlib
import json
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from data_fixtures import write_config, write_two_clips, write_video

from mugstan import cli
from mugstan.config import load_config
from mugstan.data.video import VideoError, decode_frames, probe, verify_frames
from mugstan.engine import checkpoint as ckpt
from mugstan.files import atomic_folder, readable_folder, recover_folder
from mugstan.models import build_model
from mugstan.search.index import IndexFolder, build_index, video_windows

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BANNED = ("Traceback", "allow_pickle", "weights_only", "unpickl")  # never a traceback, never advice to unpickle


def fails(capsys, argv, *expected) -> str:
    """Run ``mugstan argv`` in this process: exit 2 and one line ``error: ...`` containing ``expected``."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, f"mugstan {argv}: exit {rc}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    for bad in BANNED:
        assert bad not in err, err
    return err


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its sha256: to show nothing was changed or lost."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two real videos and a JSONL annotation file."""
    return write_two_clips(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def good(data, tmp_path_factory) -> Path:
    """A valid config: mugstan-tiny STAN, 4 frames of 32 px."""
    folder = tmp_path_factory.mktemp("cfg")
    return write_config(folder / "good.yaml", data, folder / "run", batch_size=2, save_every=1)


@pytest.fixture(scope="module")
def checkpoint(good, tmp_path_factory) -> Path:
    """An untrained model saved as a checkpoint folder."""
    cfg = load_config(good)
    torch.manual_seed(0)
    return ckpt.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", build_model(cfg.model), cfg)


@pytest.fixture(scope="module")
def index(data, checkpoint, tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("videos")
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes((data / name).read_bytes())
    out = tmp_path_factory.mktemp("idx") / "videos.index"
    build_index(videos, checkpoint, out, progress=False)
    return out


# ------------------------------------------------------------------------------------ broken videos
def write_fast_start(path: Path, frames: int = 60, fps: int = 8) -> Path:
    """An mp4 with its index (moov) at the front, as streaming sites serve them."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"g": "4", "crf": "10", "threads": "1"}
        for i in range(frames):
            img = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_timed(path: Path, pts: list, time_base: Fraction, rate) -> Path:
    """Frames at the given presentation times: extreme frame rates and durations."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"threads": "1"}
        stream.codec_context.time_base = time_base
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (40 * i) % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict:
    """Videos made with PyAV and byte surgery, by name."""
    root = tmp_path_factory.mktemp("broken")
    full = write_fast_start(root / "full_fast.mp4").read_bytes()
    (root / "cut_fast.mp4").write_bytes(full[: len(full) // 2])  # a fast-start mp4 cut short
    mkv = write_video(root / "full.mkv", frames=60, size=(32, 32), gop=4).read_bytes()
    (root / "cut.mkv").write_bytes(mkv[: len(mkv) * 15 // 100])  # only the first few frames decodable
    mp4 = bytearray(write_video(root / "full.mp4", frames=60, size=(32, 32), gop=4).read_bytes())
    rnd = random.Random(0)
    for i in range(len(mp4) * 2 // 5, len(mp4) * 3 // 5):  # garbage over the middle
        mp4[i] = rnd.randrange(256)
    (root / "mid.mp4").write_bytes(bytes(mp4))
    write_timed(root / "slow.mp4", [0, 1, 2, 3], Fraction(20000, 1), Fraction(1, 20000))  # 4 frames at 1/20000 fps
    write_timed(root / "long.mkv", [0, 1], Fraction(3_000_000, 1), 25)  # 2 frames claiming 3,000,000 s
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n")
    os.mkfifo(root / "pipe.mp4")
    return {p.name: p for p in root.iterdir()}


def test_broken_videos_are_errors_with_their_reason_never_repeated_frames(broken):
    every = list(range(0, 60, 6))
    for name, reason in (
        ("cut_fast.mp4", "truncated: no decodable frame at t="),
        ("cut.mkv", "truncated: no decodable frame at t="),
        ("mid.mp4", "damaged: no decodable frame near t="),
    ):
        with pytest.raises(VideoError, match=reason):
            decode_frames(broken[name], every, info=probe(broken[name]))
    for name in ("full_fast.mp4", "full.mkv", "full.mp4"):
        assert decode_frames(broken[name], every).shape[0] == len(every)
    for name, reason in (("empty.mp4", "empty file"), ("text.mp4", "cannot be opened"), ("pipe.mp4", "FIFO")):
        with pytest.raises(VideoError, match=reason):  # the FIFO is refused before it is opened: nothing blocks
            probe(broken[name])
    # --full decoding finds what sampling two frames may miss
    for name, reason in (
        ("cut_fast.mp4", "damaged or truncated"),
        ("cut.mkv", r"truncated: no decodable frame after t=0\.\d+ s, though the container says 7.50 s"),
        ("mid.mp4", "damaged or truncated: decoding fails after"),
    ):
        with pytest.raises(VideoError, match=reason):
            verify_frames(broken[name])
    assert verify_frames(broken["full.mp4"]).num_frames == 60


def test_a_recording_that_pauses_is_not_damaged(tmp_path):
    """A variable-frame-rate file whose frames stop for 3 s (no decoder error): a sampled time in
    the pause shows the frame before it, as a player does; --full decoding names the pause."""
    path = write_timed(tmp_path / "paused.mp4", [*range(6), *range(30, 60)], Fraction(1, 8), 8)
    info = probe(path)  # 36 frames over 7.5 s: 4.8 frames per second on average, none from 0.7 s to 3.75 s
    frames = decode_frames(path, [0, 3, 6, 10, 30], info=info)
    assert torch.equal(frames[2], frames[1]) and torch.equal(
        frames[3], frames[1]
    )  # in the pause: the last frame before it
    assert not torch.equal(frames[4], frames[1])
    with pytest.raises(VideoError, match="damaged data, or a variable-frame-rate recording that paused"):
        verify_frames(path)


def test_data_check_reports_every_broken_video_and_full_decodes_every_frame(broken, tmp_path, capsys):
    names = ["full.mp4", "cut_fast.mp4", "cut.mkv", "mid.mp4", "empty.mp4", "text.mp4", "pipe.mp4"]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": str(broken[n]), "caption": "x"}) + "\n" for n in names))
    assert cli.main(["data", "check", str(ann), "--json"]) == 1
    quick = {Path(p["path"]).name: p["reason"] for p in json.loads(capsys.readouterr().out)["test"]["problems"]}
    assert set(quick) == set(names) - {"full.mp4", "mid.mp4"}  # first and last frame of mid.mp4 decode
    assert "truncated" in quick["cut_fast.mp4"] and "truncated" in quick["cut.mkv"] and "FIFO" in quick["pipe.mp4"]
    assert cli.main(["data", "check", str(ann), "--json", "--full"]) == 1
    full = {Path(p["path"]).name: p["reason"] for p in json.loads(capsys.readouterr().out)["test"]["problems"]}
    assert set(full) == set(names) - {"full.mp4"} and "damaged" in full["mid.mp4"]


def test_windows_are_bounded_by_the_frames_that_exist(broken):
    slow, note = video_windows(probe(broken["slow.mp4"], count=True), 8.0, 4.0)
    # frames at 0, 20000, 40000 and 60000 s: the 8-s windows on the 4-s grid that hold one (not 19,999 windows)
    assert slow == [(float(s), s + 8.0) for t in (0, 20000, 40000, 60000) for s in (t - 8, t - 4, t) if s >= 0]
    assert "4 frames over 80000 s (5e-05 fps): indexed as the 10 windows that hold a frame" in note
    claimed = probe(broken["long.mkv"])
    assert (claimed.num_frames, claimed.fps) == (75_000_001, 25.0)  # what the container says: 3,000,000 s at 25 fps
    long, note = video_windows(probe(broken["long.mkv"], count=True), 8.0, 4.0)
    assert probe(broken["long.mkv"], count=True).num_frames == 2 and len(long) == 1  # not 750,000
    assert "the container says 3e+06 s, but only 2 frames (0.08 s) exist" in note
    many, note = video_windows(probe(broken["full.mp4"]).__class__(10_000_000, 30.0, 0.0, 32, 32), 8.0, 4.0)
    assert len(many) == 20_000 and "only the first 20000" in note


def test_index_of_broken_files_reports_each_and_keeps_the_good_ones(broken, data, checkpoint, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("cut_fast.mp4", "cut.mkv", "mid.mp4", "slow.mp4", "long.mkv", "empty.mp4", "text.mp4"):
        (videos / name).write_bytes(broken[name].read_bytes())
    os.mkfifo(videos / "pipe.mp4")
    (videos / "a.mp4").write_bytes((data / "a.mp4").read_bytes())
    out = tmp_path / "videos.index"
    assert (
        cli.main(
            [
                "index",
                str(videos),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--no-progress",
                "--frames",
                "16",
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "4 videos embedded" in summary and "5 not indexed" in summary and "3 with a note" in summary
    report = {r["path"]: r for r in json.loads((out / "report.json").read_text())}
    assert {p for p, r in report.items() if not r.get("indexed")} == {
        "cut_fast.mp4",
        "mid.mp4",
        "empty.mp4",
        "text.mp4",
        "pipe.mp4",
    }
    assert "truncated" in report["cut_fast.mp4"]["reason"] and "damaged" in report["mid.mp4"]["reason"]
    assert report["slow.mp4"]["indexed"] and "windows that hold a frame" in report["slow.mp4"]["reason"]
    # the mkv only estimates its length: its frames are counted, and what exists is indexed, with a note
    assert report["cut.mkv"]["indexed"] and "the container says 7.5 s, but only" in report["cut.mkv"]["reason"]
    assert (
        report["long.mkv"]["indexed"]
        and "the container says 3e+06 s, but only 2 frames" in report["long.mkv"]["reason"]
    )
    items = json.loads((out / "items.json").read_text())
    assert sum(i["path"] == "slow.mp4" for i in items) == 10 and sum(i["path"] == "long.mkv" for i in items) == 1
    # a folder of only bad files: the error says what failed (there is no report.json to point at)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("empty.mp4", "text.mp4"):
        (bad / name).write_bytes(broken[name].read_bytes())
    err = fails(
        capsys,
        ["index", bad, "--checkpoint", checkpoint, "--out", tmp_path / "bad.index", "--no-progress"],
        "no video under",
        "empty.mp4: empty file (0 bytes)",
        "text.mp4: cannot be opened",
    )
    assert "report.json" not in err and not (tmp_path / "bad.index").exists()


# ------------------------------------------------------------------------------------ configs
CONFIG_CASES = [
    ("data.num_frames=0", "data.num_frames=0 must be at least 1"),
    ("data.image_size=0", "data.image_size=0 must be at least 1"),
    ("data.test_num_frames=0", "data.test_num_frames=0 must be at least 1, or null"),
    ("data.resize_short=16", "data.resize_short=16 is below data.image_size=32"),
    ("data.dense_stride=0", "data.dense_stride=0 must be at least 1"),
    ("data.test_clips=0", "data.test_clips=0 must be at least 1"),
    ("data.test_crops=2", "data.test_crops=2 must be 1 (centre) or 3"),
    ("data.num_workers=-1", "data.num_workers=-1 must be auto (min(4, usable cores)), 0 (the main process) or more"),
    ("data.num_workers=many", "data.num_workers='many' must be auto"),
    ("data.crop_scale=[0.8,0.5]", "data.crop_scale=[0.8, 0.5] must be two numbers in (0, 1], the smaller first"),
    ("data.crop_scale=[0,1]", "data.crop_scale=[0.0, 1.0] must be two numbers in (0, 1]"),
    ("data.crop_scale=[0.5,1.5]", "data.crop_scale=[0.5, 1.5]"),
    ("data.crop_scale=[0.5]", "data.crop_scale=[0.5]"),
    ("data.sampler=random", "data.sampler"),
    ("data.dataset=nope", "data.dataset='nope' is not one of"),
    ("data.root=/nowhere/videos", "data.root: /nowhere/videos is not a folder"),
    ("data.train_ann=/nowhere/train.jsonl", "data.train_ann: /nowhere/train.jsonl does not exist"),
    ("train.lr=-1", "train.lr=-1.0 must be positive"),
    ("train.lr=0", "train.lr=0.0 must be positive"),
    ("train.lr=nan", "train.lr=nan must be positive"),
    ("train.warmup=-1", "train.warmup=-1.0 must be 0 or more"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be 0 or more"),
    ("train.betas=[0.9,1.0]", "train.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    ("train.betas=[0.9]", "train.betas=[0.9] must be two numbers"),
    ("train.eps=0", "train.eps=0.0 must be positive"),
    ("train.grad_clip=0", "train.grad_clip=0.0 must be positive, or null"),
    ("train.grad_clip=-5", "train.grad_clip=-5.0 must be positive"),
    ("train.new_module_lr_mult=0", "train.new_module_lr_mult=0.0 must be positive"),
    ("train.save_every=0", "train.save_every=0 must be at least 1, or null"),
    ("train.max_steps=0", "train.max_steps=0 must be at least 1, or null"),
    ("train.eval_every=0", "train.eval_every=0 must be at least 1"),
    ("train.log_every=0", "train.log_every=0 must be at least 1"),
    ("train.epochs=0", "train.epochs=0 must be at least 1"),
    ("train.batch_size=0", "train.batch_size=0 must be at least 1"),
    ("train.accum_steps=3", "train.batch_size=2 is not divisible by train.accum_steps=3"),
    ("train.seed=-1", "train.seed=-1 must be 0 or more"),
    ("train.precision=fp8", "train.precision"),
    ("train.chunk_size=0", "train.chunk_size=0 must be at least 1"),
    ("train.epochs=many", "key 'train.epochs'"),
    ("train.learning_rate=1", "unknown key 'train.learning_rate'; (`mugstan config show CONFIG` lists every key"),
    ("train.lrr=1", "unknown key 'train.lrr'; did you mean train.lr or"),
    ("data.lr=1", "did you mean train.lr or"),
    ("model.depth=2", "did you mean model.stan.depth or"),
    ("model.branch=lstm", "model.branch"),
    ("model.backbone=ViT-X", "unknown backbone 'ViT-X'"),
    ("model.stan.drop_path=1.5", "model.stan.drop_path=1.5 must be in [0, 1)"),
    ("model.stan.max_frames=2", "data.num_frames=4 exceeds STAN's temporal embedding"),
    ("model.tab_weight=1", "model.tab_weight=1.0 must be in (0, 1)"),
    ("model.temperature=0", "model.temperature=0.0 must be positive"),
    ("model.context_length=2", "model.context_length=2 must be at least 3"),
    ("model.mug_lambda=0", "model.mug_lambda=0.0 must be positive"),
    ("model.prompt_templates=[a video]", "model.prompt_templates=['a video'] must be a non-empty list"),
    ("model.num_classes=-1", "model.num_classes=-1 must be 0 or more"),
    ("model.weights=/nowhere.pt", "model.weights: /nowhere.pt does not exist"),
    ("model.temporal=stan", "model.temporal was replaced by model.branch and model.head"),
    ("eval.split=dev", "eval.split='dev' must be train, val or test"),
    ("eval.batch_size=0", "eval.batch_size=0 must be at least 1"),
    ("noequals", "override 'noequals' must look like key=value"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_every_config_field_checked_at_load(good, capsys, override, message):
    before = snapshot(good.parent)
    fails(capsys, ["train", good, override], message)
    assert snapshot(good.parent) == before  # nothing written: the run folder was not even created


def test_bad_config_files(good, tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- model\n- data\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "scalar.yaml").write_text("hello\n")  # YAML reads a mapping {hello: null}
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "folder.yaml").mkdir()
    os.mkfifo(tmp_path / "pipe.yaml")
    for name, message in (
        ("list.yaml", "the file is a list; an experiment config is a mapping"),
        ("empty.yaml", "the file is empty"),
        ("scalar.yaml", "unknown key 'hello'"),
        ("binary.yaml", "binary.yaml: not valid YAML"),
        ("folder.yaml", "is a folder, not a file"),
        ("pipe.yaml", "is a FIFO (named pipe), not a regular file"),
        ("missing.yaml", "missing.yaml does not exist"),
    ):
        for command in (["train"], ["eval", "--checkpoint", tmp_path], ["data", "check"]):
            fails(capsys, [*command, tmp_path / name], name, message)


def test_readme_real_data_commands_end_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # packaged configs by name, from any folder
    config = "msrvtt/stan_vitb32"
    fails(capsys, ["train", config, "data.root=/data/msrvtt"], "does not exist")
    fails(capsys, ["data", "check", config], "data/msrvtt/", "does not exist")
    fails(capsys, ["eval", config, "--checkpoint", "runs/msrvtt_stan_vitb32/checkpoints/best"], "does not exist")


def test_unknown_config_names_list_the_nearest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in (
        ["train"],
        ["eval", "--checkpoint", tmp_path],
        ["data", "check"],
        ["embed", "--checkpoint", tmp_path, "--out", tmp_path / "e.npz"],
    ):
        fails(
            capsys,
            [*command, "msrvtt/stan_vitb23"],
            "config msrvtt/stan_vitb23: no such file, and no packaged config",
            "nearest: msrvtt/stan_vitb32",
            "mugstan config list",
        )
    fails(capsys, ["train", "msrvt/stan_vitb32.yaml"], "nearest: msrvtt/stan_vitb32")
    fails(capsys, ["train", "nothing_like_it"], "no packaged config of that name (`mugstan config list`")


# ------------------------------------------------------------------------------------ data and model together
def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_training_set_smaller_than_one_batch_says_how_many_and_why(good, tmp_path, capsys):
    fails(
        capsys,
        ["train", good, "train.batch_size=128"],
        "the training set has 2 caption-video pairs, fewer than one batch of train.batch_size=128",
        "set train.batch_size=2 or less",
    )
    nocap = write_jsonl(tmp_path / "nocap.jsonl", [{"video": "a.mp4"}, {"video": "b.mp4"}])
    fails(
        capsys,
        ["train", good, f"data.train_ann={nocap}"],
        "the training set has 0 caption-video pairs",
        "2 of its 2 videos have no caption and are left out",
        "nocap.jsonl",
    )
    some = write_jsonl(tmp_path / "some.jsonl", [{"video": v, "caption": v} for v in ("a.mp4", "b.mp4", "gone.mp4")])
    fails(
        capsys,
        ["train", good, f"data.train_ann={some}", "train.batch_size=8"],
        "the training set has 3 caption-video pairs",
        "1 of its 3 video files is missing and would be skipped",
        "gone.mp4",
        "set train.batch_size=3 or less",
    )
    # every video missing (a wrong data.root): said before the model is built, whatever the batch size
    gone = write_jsonl(tmp_path / "gone.jsonl", [{"video": f"v{i}.mp4", "caption": "c"} for i in range(5)])
    for batch in (2, 128):
        fails(
            capsys,
            ["train", good, f"data.train_ann={gone}", f"train.batch_size={batch}"],
            "none of the 5 training videos checked (of 5) exists",
            "v0.mp4",
            "check data.root=",
        )
    # mostly missing, more than a batch: the run stops with the reason of the last failure, not a count alone
    mostly = write_jsonl(
        tmp_path / "mostly.jsonl",
        [{"video": "a.mp4", "caption": "a"}] + [{"video": f"v{i}.mp4", "caption": "c"} for i in range(200)],
    )
    fails(
        capsys,
        ["train", good, f"data.train_ann={mostly}", "train.batch_size=100", "--no-progress"],
        "file not found",
        "the last of 10 videos in a row that failed",
        "mugstan data check",
    )


def test_sizes_the_backbone_cannot_hold(good, capsys):
    fails(capsys, ["train", good, "model.stan.depth=9"], "model.stan.depth=9 must be in 1..4", "4 vision layers")
    fails(
        capsys,
        ["train", good, "model.context_length=100"],
        "model.context_length=100 exceeds the text tower's 77 positions",
        "model.context_length=77 or less",
    )
    fails(
        capsys,
        ["train", good, "model.branch=none", "model.head=seqTransf", "data.num_frames=78", "--no-progress"],
        "seqTransf has 77 frame positions",
        "got 78 frames",
        "data.num_frames",
    )
    fails(
        capsys,
        [
            "train",
            good,
            "model.branch=none",
            "model.head=meanP",
            "model.freeze_backbone=true",
            "model.temperature=0.01",
        ],
        "the model has no trainable parameters",
    )
    fails(
        capsys, ["train", good, f"model.init_from={good}"], "not a readable safetensors file", "model.init_from takes"
    )


def test_captions_that_are_not_text_and_videos_without_one(good, tmp_path, capsys):
    numbers = write_jsonl(
        tmp_path / "numbers.jsonl", [{"video": "a.mp4", "caption": [1, 2]}, {"video": "b.mp4", "caption": "b"}]
    )
    fails(capsys, ["train", good, f"data.train_ann={numbers}"], "numbers.jsonl: caption 1 is of type int, not a text")
    half = write_jsonl(tmp_path / "half.jsonl", [{"video": "a.mp4", "caption": "a"}, {"video": "b.mp4"}])
    fails(
        capsys,
        ["eval", good, f"data.test_ann={half}"],
        "half.jsonl: 1 of the 2 videos of the test split have no caption",
    )


def test_every_device_option_is_checked(data, checkpoint, index, tmp_path, capsys):
    from mugstan.engine.distributed import device_arg

    options = []
    for name in cli.COMMANDS:
        sub = cli.build_parser(name)._subparsers._group_actions[0].choices[name]
        options += [(name, a) for a in sub._actions if "--device" in a.option_strings]
    assert sorted(n for n, _ in options) == ["caption", "chat", "index", "search", "serve"]
    assert all(action.type is device_arg for _, action in options)
    video = data / "a.mp4"
    argvs = [
        ["search", index, "a clip"],
        ["serve", index],
        ["index", data, "--checkpoint", checkpoint, "--out", tmp_path / "i"],
        ["caption", video, "--checkpoint", checkpoint],
        ["chat", video, "--llava", tmp_path / "nowhere"],
    ]
    devices = {"bogus": "'bogus' is not a device", "cuda:99": "cuda:99: this machine has"}
    if not torch.cuda.is_available():
        devices["cuda"] = "cuda: this machine has no cuda device"
    for argv in argvs:
        for device, message in devices.items():
            fails(capsys, [*argv, "--device", device], "argument --device", message)
    assert not (tmp_path / "i").exists()


# ------------------------------------------------------------------------------------ annotations
def test_bad_annotation_files(good, data, tmp_path, capsys):
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 8)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "broken.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n{"video": \n')
    os.mkfifo(tmp_path / "pipe.jsonl")
    cases = [
        ("binary.jsonl", "jsonl", "binary.jsonl: not a text file (byte 0 is not UTF-8)"),
        ("empty.jsonl", "jsonl", "empty.jsonl: no videos in this split"),
        ("list.json", "msrvtt_json", "list.json: not the layout data.dataset=msrvtt_json expects"),
        ("broken.jsonl", "jsonl", "broken.jsonl:2: invalid JSON"),
        ("pipe.jsonl", "jsonl", "pipe.jsonl is a FIFO"),
    ]
    for name, fmt, message in cases:
        fails(capsys, ["data", "check", tmp_path / name, "--format", fmt, "--root", data], message)
        fails(capsys, ["train", good, f"data.dataset={fmt}", f"data.train_ann={tmp_path / name}"], message)
    fails(
        capsys,
        ["data", "check", tmp_path / "empty.jsonl", "--format", "nope"],
        "argument --format: invalid choice: 'nope'",
    )
    fails(capsys, ["data", "check", good, "--split", "dev"], "argument --split: invalid choice: 'dev'")


# ------------------------------------------------------------------------------------ checkpoints and weights
def test_bad_checkpoints_and_weights(good, checkpoint, tmp_path, capsys):
    real = (checkpoint / "model.safetensors").read_bytes()
    damaged = {"empty": b"", "truncated": real[: len(real) // 2], "garbage": os.urandom(4096)}
    for kind, content in damaged.items():
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(content)
        (folder / "config.yaml").write_text((checkpoint / "config.yaml").read_text())
        before = snapshot(folder)
        message = "empty file (0 bytes)" if kind == "empty" else "not a readable safetensors file, corrupt or truncated"
        fails(capsys, ["eval", good, "--checkpoint", folder], f"{folder / 'model.safetensors'}: {message}")
        fails(capsys, ["embed", good, "--checkpoint", folder, "--out", tmp_path / "e.npz"], message)
        (tmp_path / f"{kind}.safetensors").write_bytes(content)  # a converted file
        fails(capsys, ["eval", good, "--checkpoint", tmp_path / f"{kind}.safetensors"], "cannot be read as safetensors")
        fails(
            capsys,
            ["convert", tmp_path / f"{kind}.safetensors", tmp_path / "o.safetensors"],
            "cannot be read as safetensors",
        )
        assert snapshot(folder) == before
    fails(capsys, ["eval", good, "--checkpoint", tmp_path / "nowhere"], "nowhere does not exist")
    (tmp_path / "plain").mkdir()
    fails(capsys, ["eval", good, "--checkpoint", tmp_path / "plain"], "not a mugstan checkpoint")
    fails(capsys, ["eval", good, "--checkpoint", checkpoint, "--split", "dev"], "argument --split: invalid choice")
    fails(
        capsys,
        ["embed", good, "--checkpoint", checkpoint, "--out", "x.npz", "--what", "frames"],
        "argument --what: invalid choice",
    )
    (tmp_path / "text.pt").write_text("these are not weights\n")
    fails(
        capsys,
        ["train", good, f"model.weights={tmp_path / 'text.pt'}"],
        "text.pt: cannot be read as a PyTorch checkpoint",
    )
    fails(
        capsys,
        ["convert", tmp_path / "text.pt", tmp_path / "o.safetensors"],
        "text.pt: cannot be read as a PyTorch checkpoint",
    )
    fails(capsys, ["convert", tmp_path / "text.pt", tmp_path / "o.pt"], "output must be a .safetensors file")
    os.mkfifo(tmp_path / "pipe.pt")
    fails(capsys, ["train", good, f"model.weights={tmp_path / 'pipe.pt'}"], "pipe.pt is a FIFO")


class Foreign:
    """An object only unpickling could restore."""


def test_bad_training_state_on_resume(good, checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, ["train", good, f"train.output_dir={out}", "--resume", "--no-progress"], "--resume: no checkpoint at")
    last = out / "checkpoints" / "last"
    last.mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml"):
        (last / name).write_bytes((checkpoint / name).read_bytes())

    for content in (os.urandom(2048), b""):
        (last / "state.pt").write_bytes(content)
        fails(
            capsys,
            ["train", good, f"train.output_dir={out}", "--resume", "--no-progress"],
            "state.pt: corrupt or not a mugstan training state",
        )
    torch.save({"optimizer": Foreign()}, last / "state.pt")
    before = snapshot(out)
    fails(
        capsys,
        ["train", good, f"train.output_dir={out}", "--resume", "--no-progress"],
        "state.pt: corrupt or not a mugstan training state",
    )
    assert snapshot(out) == before


def test_training_state_of_earlier_versions_still_resumes(good, checkpoint, tmp_path):
    """state.pt is read with weights_only=True; the numpy RNG state that earlier versions stored as
    an array (not a tensor) is allowed as plain numbers."""
    from mugstan.engine.optim import build_optimizer, build_scheduler

    cfg = load_config(good)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, 10, cfg.train.warmup)
    last = tmp_path / "last"
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    ckpt.save_checkpoint(
        last,
        model,
        cfg,
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": [old_rng],
            "step": 3,
            "epoch": 0,
            "step_in_epoch": 3,
            "best": None,
        },
    )
    np.random.seed(0)
    position = ckpt.load_training_state(last, model, optimizer, scheduler)
    assert position == {
        "step": 3,
        "epoch": 0,
        "step_in_epoch": 3,
        "best": None,
        "skipped": 0,
        "stream": {},
    }  # no shard readers then
    assert np.random.random() == expected


# ------------------------------------------------------------------------------------ index, search, serve
def test_bad_index_arguments(data, checkpoint, index, tmp_path, capsys):
    videos = Path(json.loads((index / "index.json").read_text())["root"])
    base = ["index", videos, "--checkpoint", checkpoint, "--no-progress", "--out"]
    (tmp_path / "file").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    fails(capsys, [*base, tmp_path / "file"], "--out", "is a file")
    fails(capsys, [*base, tmp_path / "mine"], "holds other files (notes.txt)", "name a new or empty folder")
    out = tmp_path / "new.index"
    err = fails(
        capsys,
        [*base, out, "--frames", "100000"],
        "--frames 100000: this model's temporal embedding covers at most 64 frames",
        "use --frames 64 or fewer",
    )
    assert "max_frames" not in err
    fails(capsys, [*base, out, "--frames", "0"], "--frames must be at least 1, got 0")
    fails(capsys, [*base, out, "--window", "0"], "need window > 0")
    fails(capsys, [*base, out, "--window", "nan"], "need window > 0")
    fails(capsys, [*base, out, "--window", "8", "--stride", "10"], "0 < stride <= window")
    fails(capsys, [*base, out, "--batch-size", "0"], "--batch-size must be at least 1")
    fails(capsys, [*base, out, "--frames", "x"], "argument --frames: invalid int value: 'x'")
    fails(capsys, ["index", tmp_path / "nowhere", "--checkpoint", checkpoint, "--out", out], "nowhere is not a folder")
    fails(capsys, ["index", tmp_path / "file", "--checkpoint", checkpoint, "--out", out], "file is not a folder")
    fails(capsys, ["index", videos, "--checkpoint", tmp_path / "nowhere", "--out", out], "not a mugstan checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, ["index", empty, "--checkpoint", checkpoint, "--out", out, "--no-progress"], "no video files under")
    assert snapshot(tmp_path) == before and not out.exists()


def damage(folder: Path, kind: str) -> None:
    if kind == "items.json garbage":
        (folder / "items.json").write_bytes(os.urandom(300))
    elif kind == "items.json not items":
        (folder / "items.json").write_text("[1, 2]")
    elif kind == "embeddings.npy garbage":
        (folder / "embeddings.npy").write_bytes(os.urandom(300))
    elif kind == "embeddings.npy truncated":
        data = (folder / "embeddings.npy").read_bytes()
        (folder / "embeddings.npy").write_bytes(data[: len(data) - 40])
    elif kind == "embeddings.npy of objects":
        np.save(folder / "embeddings.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "embeddings.npy missing":
        (folder / "embeddings.npy").unlink()
    elif kind == "index.json truncated":
        (folder / "index.json").write_text((folder / "index.json").read_text()[:50])
    elif kind == "index.json empty":
        (folder / "index.json").write_text("")
    elif kind == "index.json without model":
        meta = json.loads((folder / "index.json").read_text())
        del meta["model"]
        (folder / "index.json").write_text(json.dumps(meta))


INDEX_DAMAGE = {
    "items.json garbage": "items.json: corrupt",
    "items.json not items": "items.json: corrupt (expected a list",
    "embeddings.npy garbage": "embeddings.npy: corrupt or truncated .npy file",
    "embeddings.npy truncated": "embeddings.npy: corrupt or truncated .npy file",
    "embeddings.npy of objects": "embeddings.npy: corrupt or truncated .npy file",
    "embeddings.npy missing": "embeddings.npy: missing or not a regular file",
    "index.json truncated": "index.json: corrupt (not JSON",
    "index.json empty": "index.json: corrupt (not JSON",
    "index.json without model": "index.json: corrupt (no model)",
}


@pytest.mark.parametrize("kind", list(INDEX_DAMAGE))
def test_damaged_index_files(index, checkpoint, tmp_path, capsys, kind):
    folder = tmp_path / "videos.index"
    folder.mkdir()
    for f in index.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    damage(folder, kind)
    before = snapshot(tmp_path)
    fix = f"delete {folder} and run `mugstan index` again"
    fails(capsys, ["search", folder, "a clip"], INDEX_DAMAGE[kind], fix)
    fails(capsys, ["serve", folder], INDEX_DAMAGE[kind])
    videos = json.loads((index / "index.json").read_text())["root"]
    fails(
        capsys, ["index", videos, "--checkpoint", checkpoint, "--out", folder, "--no-progress"], INDEX_DAMAGE[kind], fix
    )
    assert snapshot(tmp_path) == before


def test_bad_search_and_serve_arguments(index, tmp_path, capsys):
    fails(capsys, ["search", tmp_path / "nowhere", "a clip"], "is not a mugstan index (no index.json)")
    fails(capsys, ["search", index, "a clip", "-k", "0"], "-k must be at least 1, got 0")
    fails(capsys, ["search", index, "   "], "the query is empty")
    fails(capsys, ["search", index, "a clip", "--nprobe", "0"], "--nprobe must be at least 1")
    fails(capsys, ["search", index, "a clip", "--backend", "annoy"], "argument --backend: invalid choice")
    fails(capsys, ["serve", index, "--port", "99999"], "--port 99999: a TCP port is 1-65535")
    fails(capsys, ["serve", index, "--port", "0"], "--port 0: a TCP port is 1-65535")
    fails(capsys, ["serve", tmp_path / "nowhere"], "is not a mugstan index")


# ------------------------------------------------------------------------------------ other commands
def test_bad_arguments_of_the_other_commands(data, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    fails(capsys, ["data", "compress", data, tmp_path / "c", "--fps", "0"], "--fps must be a positive frame rate")
    fails(
        capsys,
        ["data", "compress", data, tmp_path / "c", "--short-side", "0"],
        "--short-side must be at least 2 pixels",
    )
    fails(capsys, ["data", "compress", tmp_path / "nowhere", tmp_path / "c"], "nowhere is not a folder")
    fails(capsys, ["data", "compress", data, tmp_path / "file"], "file is a file; DST must be a folder")
    fails(capsys, ["data", "synth", tmp_path / "s", "--videos", "0"], "--videos must be at least 2, got 0")
    fails(capsys, ["data", "synth", tmp_path / "s", "--size", "15"], "--size must be at least 16")
    fails(capsys, ["data", "synth", tmp_path / "s", "--seed", "-1"], "--seed must be at least 0")
    fails(capsys, ["data", "check", tmp_path / "nowhere.jsonl"], "nowhere.jsonl does not exist")
    fails(capsys, ["demo", "--videos", "0"], "--videos 0: render at least 2 training videos")
    fails(capsys, ["demo", "--seed", "-1"], "--seed -1: seeds are 0 or more")
    fails(capsys, ["demo", "--out", tmp_path / "file"], "is a file")
    fails(capsys, ["demo", "--models", "lstm"], "argument --models: invalid choice")
    fails(capsys, ["push", f"local-dir:{tmp_path / 'nowhere'}", "org/name"], "local-dir:")
    fails(capsys, ["convert", tmp_path / "nowhere.pt", tmp_path / "o.safetensors"], "nowhere.pt")
    fails(capsys, ["train"], "the following arguments are required: config")
    fails(capsys, ["train", "cfg.yaml", "--bogus"], "unrecognized arguments: --bogus")
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


def test_every_subcommand_argument_has_help(capsys):
    """Each argument of each command says what it is (argparse prints nothing for those without)."""
    commands = (
        [[c] for c in cli.COMMANDS if c not in ("data", "bench", "config")]
        + [["data", s] for s in ("check", "compress", "synth")]
        + [["config", s] for s in ("list", "show")]
    )
    for command in commands:
        parser = cli.build_parser(command[0])
        sub = parser._subparsers._group_actions[0].choices[command[0]]
        if len(command) == 2:
            sub = sub._subparsers._group_actions[0].choices[command[1]]
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"mugstan {' '.join(command)} {action.option_strings or action.dest}: no help"


def test_end_to_end_exit_2_without_traceback_and_debug_shows_it(tmp_path):
    """Through the installed entry point as a user runs it: exit status 2, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "mugstan.cli", "search", str(tmp_path), "a clip"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2
        and proc.stderr
        == f"error: {tmp_path} is not a mugstan index (no index.json); build one with "
        f"`mugstan index VIDEO_DIR --checkpoint CHECKPOINT --out {tmp_path}`\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mugstan.cli", "--debug", "train", str(tmp_path / "missing.yaml")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MissingFileError" in proc.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors become one line: anything else is a bug and is raised."""
    from mugstan.search import query

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(query, "main", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["search", "x", "y"])


# ------------------------------------------------------------------------------------ crash injection
class Crash(Exception):
    pass


def crash_after(monkeypatch, n: int) -> None:
    """os.replace works ``n`` times, then the process 'dies' (raises) at the next rename."""
    real, calls = os.replace, [0]

    def replace(src, dst, **kw):
        if calls[0] == n:
            raise Crash(f"crash at rename {n + 1}: {src} -> {dst}")
        calls[0] += 1
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)


def write_version(dest: Path, version: str) -> None:
    with atomic_folder(dest) as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text(f"{name} {version}")


# renames: tmp -> .NAME.new, (NAME -> .NAME.old when replacing), .NAME.new -> NAME; "inside": while writing
CRASHES = [(True, 0), (True, 1), (True, "inside"), (False, 0), (False, 1), (False, 2), (False, "inside")]


@pytest.mark.parametrize(
    "first, at", CRASHES, ids=[f"{'first write' if f else 'replacing'}, crash at {a}" for f, a in CRASHES]
)
def test_atomic_folder_survives_a_crash_at_every_rename(tmp_path, monkeypatch, first, at):
    dest = tmp_path / "last"
    if not first:
        write_version(dest, "old")
    with monkeypatch.context() as m:
        if at == "inside":
            with pytest.raises(Crash), atomic_folder(dest) as tmp:
                (tmp / "a").write_text("a new")
                raise Crash("while writing")
        else:
            crash_after(m, at)
            with pytest.raises(Crash):
                write_version(dest, "new")
    # a reader sees one whole version without changing anything
    seen = readable_folder(dest)
    if seen.exists():
        versions = {(seen / n).read_text().split()[1] for n in ("a", "b", "c")}
        assert len(versions) == 1 and versions <= {"old", "new"}
    else:
        assert first and at in (0, "inside")  # the very first write died before it was complete: nothing to read
    # the next open recovers: one whole version, no leftovers; a crash after the new folder was complete keeps it
    recover_folder(dest)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last"]
    assert leftovers == []
    if dest.exists():
        expected = "new" if at in (1, 2) else "old"
        assert [(dest / n).read_text() for n in ("a", "b", "c")] == [f"{n} {expected}" for n in ("a", "b", "c")]
    write_version(dest, "next")
    assert (dest / "a").read_text() == "a next" and [p.name for p in tmp_path.iterdir()] == ["last"]


def test_recovery_of_the_previous_versions_leftovers(tmp_path):
    """Earlier versions renamed the old folder to .NAME.old-PID and the new one from .NAME.XXXX.tmp."""
    dest = tmp_path / "last"
    write_version(dest, "old")
    os.rename(dest, tmp_path / ".last.old-1234")
    (tmp_path / ".last.abcd.tmp").mkdir()
    recover_folder(dest)
    assert (dest / "a").read_text() == "a old" and [p.name for p in tmp_path.iterdir()] == ["last"]


@pytest.mark.parametrize("at", [0, 1, 2])
def test_index_update_survives_a_crash_at_every_rename(data, checkpoint, tmp_path, monkeypatch, capsys, at):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes((data / "a.mp4").read_bytes())
    out = tmp_path / "videos.index"
    build_index(videos, checkpoint, out, progress=False)
    (videos / "b.mp4").write_bytes((data / "b.mp4").read_bytes())
    with monkeypatch.context() as m:
        crash_after(m, at)
        with pytest.raises(Crash):
            build_index(videos, checkpoint, out, progress=False)
    meta, items, emb, _ = IndexFolder(out).load()  # what search and serve read: one whole index, old or new
    assert len(items) == len(emb) == meta["shape"][0] and {i["path"] for i in items} in ({"a.mp4"}, {"a.mp4", "b.mp4"})
    assert cli.main(["search", str(out), "a clip", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)  # every row of the index it left, ranked
    assert [r["rank"] for r in found] == list(range(1, len(items) + 1))
    assert sorted(r["path"] for r in found) == sorted(i["path"] for i in items)
    counts = build_index(videos, checkpoint, out, progress=False)  # the next run finishes the job
    assert counts["rows"] == 2 and {i["path"] for i in IndexFolder(out).load()[1]} == {"a.mp4", "b.mp4"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos", "videos.index"]


def test_index_left_by_a_crash_of_an_earlier_version_is_recovered(data, checkpoint, tmp_path, capsys):
    """Earlier versions renamed .NAME.tmp files into place one by one: a crash after
    embeddings.npy left a mixed folder that search refused until rebuilt. The next index run
    completes it from the .tmp files (nothing is embedded again)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes((data / "a.mp4").read_bytes())
    old, new = tmp_path / "old.index", tmp_path / "new.index"
    build_index(videos, checkpoint, old, progress=False)
    (videos / "b.mp4").write_bytes((data / "b.mp4").read_bytes())
    build_index(videos, checkpoint, new, progress=False)
    (old / "embeddings.npy").write_bytes((new / "embeddings.npy").read_bytes())  # renamed before the crash
    for name in ("items.json", "report.json", "index.json"):  # still waiting under their temporary names
        (old / f".{name}.tmp").write_bytes((new / name).read_bytes())
    fails(capsys, ["search", old, "a clip"], "do not agree", f"delete {old}")  # readers change nothing
    counts = build_index(videos, checkpoint, old, progress=False)
    assert counts == {"added": 0, "kept": 2, "failed": 0, "noted": 0, "removed": 0, "rows": 2}
    assert sorted(p.name for p in old.iterdir()) == ["embeddings.npy", "index.json", "items.json", "report.json"]


@pytest.mark.parametrize("at", [1, 2])
def test_resume_after_a_crash_between_the_checkpoint_renames(good, tmp_path, monkeypatch, capsys, at):
    """Train 2 steps (a checkpoint after each); the save of step 2 dies between its renames;
    --resume recovers step 2's checkpoint (complete before the renames) and finishes the run."""
    out = tmp_path / "run"
    args = ["train", str(good), f"train.output_dir={out}", "--no-progress", "train.epochs=3"]  # 1 step per epoch
    real_save, saves = ckpt.save_checkpoint, [0]

    def dying_save(path, *a, **kw):
        if Path(path).name == "last":
            saves[0] += 1
            if saves[0] == 2:
                crash_after(monkeypatch, at)
        return real_save(path, *a, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", dying_save)
    with pytest.raises(Crash):
        cli.main(args)
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main([*args, "--resume"]) == 0
    assert "error" not in capsys.readouterr().err
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert steps == [1, 2, 3]  # step 2 was not trained twice: its checkpoint was recovered
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]


def test_resume_keeps_the_skipped_counter_and_logs_each_step_once(data, tmp_path, capsys):
    """A train set with a broken video: the skipped count and metrics.jsonl of a run stopped after a
    checkpoint (with records logged after it, and a line cut short) and resumed equal those of an
    uninterrupted run."""
    bad = tmp_path / "data"
    bad.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (bad / name).write_bytes((data / name).read_bytes())
    (bad / "broken.mp4").write_bytes(b"\x00" * 100)
    rows = [("a.mp4", "one"), ("b.mp4", "two"), ("broken.mp4", "three"), ("a.mp4", "four")]
    (bad / "train.jsonl").write_text("".join(json.dumps({"video": v, "caption": c}) + "\n" for v, c in rows))

    def train(name, *extra):
        cfg = write_config(tmp_path / f"{name}.yaml", bad, tmp_path / name, batch_size=2, save_every=1, epochs=2)
        assert cli.main(["train", str(cfg), "--no-progress", *extra]) == 0, capsys.readouterr().err
        return tmp_path / name

    full = train("full")
    real_save = ckpt.save_checkpoint

    def save_then_die(path, model, cfg, state=None):  # the same run, stopped right after its checkpoint at step 2
        real_save(path, model, cfg, state)
        if state is not None and state["step"] == 2:
            raise Crash("stopped after step 2")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ckpt, "save_checkpoint", save_then_die)
        with pytest.raises(Crash):
            train("part")
    part = tmp_path / "part"
    metrics = part / "metrics.jsonl"  # as if the run had gone on to log step 3 and died mid-line
    metrics.write_text(
        metrics.read_text() + json.dumps({"step": 3, "train/loss": 9.0}) + "\n" + '{"step": 3, "train/lo'
    )
    resumed = train("part", "--resume")

    def records(run):
        return [
            {k: v for k, v in r.items() if k not in ("time", "train/clips_per_s")}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "step" in r and "event" not in r
        ]

    assert [r["step"] for r in records(resumed)] == [1, 2, 3, 4]
    assert records(resumed) == records(full)
    def results(run):
        return json.loads((run / "results.json").read_text())["skipped_videos"]
    assert results(resumed) == results(full) >= 2  # the broken video, once per epoch
    def events(run):
        return [
            (r["step"], r["index"])
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "skipped_video"
        ]
    assert events(resumed) == events(full)


def test_the_command_bounds_openmp_spinning_unless_the_user_chose():
    """``mugstan`` sets GOMP_SPINCOUNT=4000 before PyTorch loads (benchmarks/openmp_wait.py); a
    user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is."""
    probe = "import os, mugstan.cli; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for extra, want in (
        ({}, "4000 None"),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"),
        ({"GOMP_SPINCOUNT": "100"}, "100 None"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", probe], env={**base, **extra}, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want, extra
    # the variables are read when PyTorch's OpenMP runtime loads: importing the command must not load it
    out = subprocess.run(
        [sys.executable, "-c", "import sys, mugstan.cli; print('torch' in sys.modules)"],
        env=base,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
