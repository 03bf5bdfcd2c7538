"""``mugstan data check`` and ``mugstan data compress`` on real files, and DataLoader workers."""

import json
import subprocess
import sys

import av
import pytest
import torch
from data_fixtures import write_audio_only, write_video
from torch.utils.data import DataLoader

from mugstan.cli import main as cli
from mugstan.config import DataConfig
from mugstan.data.datasets import build_dataset, collate
from mugstan.data.video import probe


@pytest.fixture
def folder(tmp_path):
    """Three good videos (one in a subfolder), and the broken kinds a real dataset has."""
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", frames=24, size=(96, 64), fps=12, gop=6)
    write_video(videos / "b.mp4", frames=16, size=(64, 96), fps=8, seed=1)
    write_video(videos / "sub" / "c.mp4", frames=20, size=(48, 32), fps=10, seed=2)
    (videos / "random.mp4").write_bytes(bytes(range(256)) * 40)
    (videos / "empty.mp4").write_bytes(b"")
    good = (videos / "a.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 3])
    write_audio_only(videos / "audio.mp4")
    records = [{"video": name, "caption": f"clip {name}"} for name in
               ["a.mp4", "b.mp4", "sub/c.mp4", "random.mp4", "empty.mp4", "truncated.mp4", "audio.mp4", "missing.mp4"]]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return videos, ann


def test_check_lists_missing_and_corrupt_videos(folder, capsys):
    videos, ann = folder
    assert (
        cli(["data", "check", str(ann), "--format", "jsonl", "--root", str(videos), "--json"]) == 1
    )  # problems: exit 1
    report = json.loads(capsys.readouterr().out)["test"]
    reasons = {p["path"].rsplit("/", 1)[-1]: p["reason"] for p in report["problems"]}
    assert report["videos"] == 8
    assert set(reasons) == {"random.mp4", "empty.mp4", "truncated.mp4", "audio.mp4", "missing.mp4"}
    assert reasons["missing.mp4"] == "file not found" and "0 bytes" in reasons["empty.mp4"]
    assert "no video stream" in reasons["audio.mp4"]


def test_check_passes_a_clean_dataset(folder, tmp_path, capsys):
    videos, _ = folder
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps({"video": n, "caption": "x"}) + "\n" for n in ["a.mp4", "b.mp4", "sub/c.mp4"]))
    assert cli(["data", "check", str(clean), "--root", str(videos)]) == 0
    assert "3 videos, 0 with problems" in capsys.readouterr().out


def test_compress_resamples_resizes_and_resumes(folder, tmp_path):
    videos, _ = folder
    dst = tmp_path / "small"
    cmd = [
        sys.executable,
        "-m",
        "mugstan.cli",
        "data",
        "compress",
        str(videos),
        str(dst),
        "--fps",
        "4",
        "--short-side",
        "32",
        "--workers",
        "2",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 1  # the broken files are reported, the good ones written
    assert "encoding 7 with 2 workers" in first.stdout and first.stdout.count("failed:") == 4
    a, b, c = probe(dst / "a.mp4"), probe(dst / "b.mp4"), probe(dst / "sub" / "c.mp4")
    assert (a.width, a.height) == (48, 32) and (b.width, b.height) == (32, 48) and (c.width, c.height) == (48, 32)
    assert a.fps == pytest.approx(4) and a.num_frames == 8  # 2 s at 12 fps -> 2 s at 4 fps
    assert b.num_frames == 8 and c.num_frames == 8
    with av.open(str(dst / "a.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert not list(dst.rglob("*.tmp*")) and not (dst / "random.mp4").exists()
    stamp = (dst / "a.mp4").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True)  # resumable: finished files are skipped
    assert "3 already done; encoding 4" in again.stdout
    assert (dst / "a.mp4").stat().st_mtime_ns == stamp


def test_dataloader_workers_give_the_same_batches(folder):
    """Two worker processes (each opening its own containers) give exactly what one process gives,
    and a broken training video is replaced by another, counted, in both. The workers are forked
    after this process converted frames with PyAV's defaults, as a user's code may: from PyAV
    18.1.1 that leaves a converter with threads that forked workers inherit, and workers that
    used it waited forever (data/video.py rescale)."""
    videos, ann = folder
    cfg = DataConfig(dataset="jsonl", root=str(videos), train_ann=str(ann), num_frames=4, image_size=32)
    from mugstan.backbones.clip import Tokenizer

    dataset = build_dataset(cfg, "train", Tokenizer(16), seed=3)
    batches = {}
    for workers in (0, 2):
        with av.open(str(videos / "a.mp4")) as container:  # PyAV's own conversion, default threads
            next(container.decode(video=0)).to_ndarray(width=40, height=30, format="rgb24")
        # a batch waits at most 60 s (they take well under a second): a hung worker fails the test
        wait = 60 if workers else 0
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate, timeout=wait)
        batches[workers] = list(loader)
    for one, two in zip(batches[0], batches[2], strict=True):
        assert torch.equal(one["frames"], two["frames"]) and one["failed"] == two["failed"]
    assert sum(len(b["failed"]) for b in batches[0]) >= 5  # every broken video counted, none fed
    assert all(b["frames"].shape[0] == 4 for b in batches[0])
