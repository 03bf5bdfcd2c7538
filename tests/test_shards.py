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


def test_data_shard_writes_shards_that_tar_and_webdataset_read_and_resumes(tmp_path, data, capsys):
    import subprocess

    import webdataset as wds

    from mugstan.cli import main

    videos = data / "videos" / "train"
    (videos / "00001.txt").write_text("a caption beside its video")
    out = tmp_path / "out"
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "5", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [s["name"] for s in manifest["shards"]] == [f"{i:05d}.tar" for i in range(5)]
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 5, 5, 4] and manifest["samples"] == 24
    listing = subprocess.run(["tar", "-tf", str(out / "00000.tar")], capture_output=True, text=True, check=True).stdout.split()
    assert listing[:4] == ["000000000.mp4", "000000000.json", "000000001.mp4", "000000001.json"] and "000000001.txt" in listing
    samples = list(wds.WebDataset(str(out / "{00000..00004}.tar"), shardshuffle=False))
    assert len(samples) == 24 and samples[1]["txt"] == b"a caption beside its video"
    assert samples[3]["mp4"] == (videos / "00003.mp4").read_bytes()
    assert json.loads(samples[3]["json"]) == {"source": "00003.mp4"}
    first = {n: (out / n).read_bytes() for n in names}

    # an interrupted run: the last shard never got its name, the manifest lists three, a temporary file is left
    (out / "00004.tar").rename(out / ".00004.tar.x1y2.tmp")
    manifest["shards"], manifest["samples"] = manifest["shards"][:4], 20
    (out / "manifest.json").write_text(json.dumps(manifest))
    stamp = (out / "00000.tar").stat().st_mtime_ns
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "5", "--workers", "1"]) == 0
    assert {n: (out / n).read_bytes() for n in names} == first and not list(out.glob(".*.tmp"))
    assert (out / "00000.tar").stat().st_mtime_ns == stamp  # finished shards are kept, not rewritten
    assert json.loads((out / "manifest.json").read_text())["samples"] == 24
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "4"]) == 2
    assert "--shard-size 5" in capsys.readouterr().err

    # a dataset split from a config, re-encoded on the way in: captions, labels and all-intra frames
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run")
    assert main(["data", "shard", str(cfg), str(tmp_path / "cfg"), "--shard-size", "100", "--compress", "--fps", "4",
                 "--short-side", "32", "--workers", "1"]) == 0
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    [sample, *_] = list(wds.WebDataset(str(tmp_path / "cfg" / "00000.tar"), shardshuffle=False))
    meta = json.loads(sample["json"])
    assert sample["txt"].decode() == rows[0]["caption"][0] and meta["captions"] == rows[0]["caption"]
    assert int(sample["cls"]) == rows[0]["label"] == meta["label"]
    import av

    with av.open(io.BytesIO(sample["mp4"])) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 4 and all(p.is_keyframe for p in container.demux(stream) if p.size)
