"""WebDataset shards: the same clips as files, training from a hand-built video2dataset shard,
broken samples skipped and counted, missing shards as one error line."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import write_config, write_shards, write_video

from mugstan.config import DataConfig, load_config
from mugstan.data.datasets import Clip, ClipReader
from mugstan.data.shards import ShardError, read_shard, sample_parts
from mugstan.data.synthetic import SynthParams, generate
from mugstan.engine.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthParams(videos=24, frames=8, size=32, seed=0), progress=False)
    return root


def shard_config(path: Path, shards, out: Path, **data) -> Path:
    """The tiny run of data_fixtures.write_config, reading ``shards`` instead of a folder."""
    cfg = yaml.safe_load(write_config(path, Path("."), out).read_text())
    cfg["data"] = {"dataset": "webdataset", "shards": shards, "epoch_samples": 16, "shuffle_buffer": 4, "num_frames": 4,
                   "image_size": 32, "num_workers": 0, **data}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_video_gives_the_same_clip_from_a_folder_and_from_a_shard(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20, size=(64, 48), gop=5)
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        for name, payload in (("k1.mp4", video.read_bytes()), ("k1.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    [sample] = list(read_shard(str(tmp_path / "one.tar"), []))
    clip, caption, _ = sample_parts(sample, captions=True, labels=False)
    assert caption == "a caption" and clip.path.endswith("one.tar/k1.mp4") and clip.data == video.read_bytes()
    for sampler, train_mode in (("segment", True), ("segment", False), ("dense", True), ("fps", False)):
        cfg = DataConfig(num_frames=5, image_size=32, resize_short=40, sampler=sampler, dense_stride=2, sample_fps=4.0)
        file_reader, shard_reader = ClipReader(cfg, train_mode, seed=3), ClipReader(cfg, train_mode, seed=3)
        a, mask_a = file_reader.read(Clip(str(video)), index=7)
        b, mask_b = shard_reader.read(clip, index=7)
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b), sampler
        assert a.shape == (5, 3, 32, 32)


def test_a_hand_built_video2dataset_shard_trains_with_broken_samples_skipped(tmp_path, data):
    shards = write_shards(data, tmp_path / "shards", per_shard=4)  # 24 samples, 6 shards, by tarfile
    # damage: a corrupt video, a sample without caption (shard 1), a tar cut in the middle of a video (shard 2)
    with tarfile.open(shards[1], "a") as tar:
        for name, payload in (("zz_corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100), ("zz_corrupt.txt", b"x"),
                              ("zz_nocaption.mp4", (data / "videos/train/00000.mp4").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    whole = shards[2].read_bytes()
    shards[2].write_bytes(whole[:len(whole) // 2 + 700])
    cfg = load_config(shard_config(tmp_path / "c.yaml", str(tmp_path / "shards" / "{00000..00005}.tar"), tmp_path / "run",
                                   epoch_samples=24, shuffle_buffer=50),
                      ["train.max_steps=6"])
    results = train(cfg, progress=False)
    assert results["steps"] == 6
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    errors = [e["error"] for e in events if e.get("event") == "skipped_video"]
    assert any("00001.tar/zz_corrupt.mp4" in e for e in errors), errors
    assert any("00001.tar/zz_nocaption" in e and "no caption" in e for e in errors), errors
    assert any("00002.tar/" in e and "truncated" in e for e in errors), errors
    # one reader: its 21 good samples run out before the epoch's 24, so it reads its shards again and meets the damage again
    assert results["skipped_videos"] == len(errors) >= 3
    assert [e["train/skipped_videos"] for e in events if "train/skipped_videos" in e][-1] == len(errors)


def test_a_missing_shard_or_an_unreachable_url_is_one_error_line(tmp_path, data, capsys):
    from mugstan.cli import main

    write_shards(data, tmp_path / "shards", per_shard=12)
    missing = shard_config(tmp_path / "m.yaml", str(tmp_path / "shards" / "{00000..00002}.tar"), tmp_path / "run")
    assert main(["train", str(missing), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.shards: shard ") and "00002.tar does not exist" in err and "\n" not in err
    pipe = shard_config(tmp_path / "p.yaml", "pipe:cat /nowhere/00000.tar", tmp_path / "run")
    assert main(["train", str(pipe), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.shards: shard pipe:cat /nowhere/00000.tar") and "\n" not in err
    with pytest.raises(ShardError, match="data.epoch_samples is not set"):
        train(load_config(pipe, ["data.shards=" + str(tmp_path / "shards" / "00000.tar"), "data.epoch_samples=null"]), progress=False)
