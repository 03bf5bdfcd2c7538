"""`mugstan data compress` layouts made for frame sampling (--gop, --fast-decode), the decoder's
keyframe-planned seeking on them, and uint8 clips normalised after the loader (issue 20)."""

import json
import os

import av
import numpy as np
import pytest
import torch
from data_fixtures import write_video

from mugstan.cli import main as cli
from mugstan.config import DataConfig
from mugstan.data.datasets import build_dataset
from mugstan.data.transforms import normalize
from mugstan.data.video import _collect, _Walk, decode_all, keyframe_indices, probe, read_clip


@pytest.fixture
def source(tmp_path):
    """One 64x48, 12 fps, 3 s video whose frame i is filled with a value that encodes i."""
    write_video(tmp_path / "src" / "a.mp4", frames=36, size=(64, 48), fps=12, gop=36)
    return tmp_path / "src"


def compress(src, dst, *options) -> int:
    return cli(["data", "compress", str(src), str(dst), "--workers", "1", "--short-side", "48", *options])


def x264_settings(path) -> str:
    """The option string x264 writes into the stream (SEI user data)."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start:data.index(b"\x00", start)].decode()


def keyframe_flags(path) -> list[bool]:
    with av.open(str(path)) as container:
        return [frame.key_frame for frame in container.decode(video=0)]


def test_gop_sets_the_keyframe_layout(source, tmp_path):
    assert compress(source, tmp_path / "intra", "--fps", "12", "--gop", "1") == 0
    assert compress(source, tmp_path / "gop4", "--fps", "12", "--gop", "4") == 0
    assert compress(source, tmp_path / "long", "--fps", "12", "--gop", "250") == 0  # x264's usual interval
    intra, gop4, long = (tmp_path / d / "a.mp4" for d in ("intra", "gop4", "long"))
    assert keyframe_flags(intra) == [True] * 36
    assert keyframe_flags(gop4) == [i % 4 == 0 for i in range(36)]
    assert keyframe_flags(long) == [i == 0 for i in range(36)]
    assert "keyint=1 " in x264_settings(intra) and "bframes=0" in x264_settings(intra)
    assert "keyint=4 " in x264_settings(gop4) and "scenecut=0" in x264_settings(gop4)
    # the index the decoder plans with says the same, read without decoding
    for path in (intra, gop4, long):
        with av.open(str(path)) as container:
            flags = keyframe_flags(path)
            assert keyframe_indices(container.streams.video[0], probe(path)).tolist() == [
                i for i, k in enumerate(flags) if k
            ]
    assert intra.stat().st_size > gop4.stat().st_size > long.stat().st_size


def test_fast_decode_turns_off_cabac_and_deblocking(source, tmp_path):
    assert compress(source, tmp_path / "fast", "--gop", "1", "--fast-decode") == 0
    assert compress(source, tmp_path / "plain", "--gop", "1", "--no-fast-decode") == 0
    fast, plain = x264_settings(tmp_path / "fast" / "a.mp4"), x264_settings(tmp_path / "plain" / "a.mp4")
    assert "cabac=0" in fast and "deblock=0" in fast
    assert "cabac=1" in plain and "deblock=1" in plain


def test_defaults_are_all_intra_fast_decode(source, tmp_path):
    assert compress(source, tmp_path / "out") == 0
    path = tmp_path / "out" / "a.mp4"
    settings = x264_settings(path)
    assert "keyint=1 " in settings and "cabac=0" in settings and "deblock=0" in settings
    info = probe(path)
    assert info.fps == pytest.approx(3) and info.num_frames == 9 and keyframe_flags(path) == [True] * 9


def test_compressed_files_are_readable_by_others(source, tmp_path):
    old = os.umask(0o022)
    try:
        assert compress(source, tmp_path / "out", "--gop", "1") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.mp4").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--fps", "0", "--fps must be a positive frame rate, got 0"),
        ("--short-side", "0", "--short-side must be at least 2 pixels, got 0"),
        ("--gop", "0", "--gop must be at least 1 frame (1 = all-intra), got 0"),
        ("--crf", "60", "--crf must be in 0..51, got 60"),
        ("--workers", "0", "--workers must be at least 1, got 0"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(source, tmp_path, capsys, flag, value, message):
    assert cli(["data", "compress", str(source), str(tmp_path / "out"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def decoded_frames(container, wanted, keys):
    """Run the decoder's frame walk from the start of a real stream; count the frames it decodes."""
    count = 0

    def counting():
        nonlocal count
        for frame in container.decode(video=0):
            count += 1
            yield frame

    stream = container.streams.video[0]
    tb, fps = float(stream.time_base), float(stream.average_rate)
    walk = _Walk(np.array(wanted), 16, 16, near=2)
    _collect(counting(), walk, lambda f: int(round(f.pts * tb * fps)), 36, 12, keys)
    return walk.pos, count, sorted(walk.got)


def test_keyframe_index_makes_a_sampled_frame_cost_one_decode(source, tmp_path):
    """In an all-intra file the walk stops right after a wanted frame when the next one is further
    than the next frame (the caller seeks there); in a one-GOP file it decodes on, since seeking
    would land on the same keyframe."""
    compress(source, tmp_path / "intra", "--fps", "12", "--gop", "1")
    compress(source, tmp_path / "long", "--fps", "12", "--gop", "250")
    for folder, expect in (("intra", (1, 1, [0])), ("long", (3, 21, [0, 10, 20]))):
        path = tmp_path / folder / "a.mp4"
        with av.open(str(path)) as container:
            keys = keyframe_indices(container.streams.video[0], probe(path))
            assert decoded_frames(container, [0, 10, 20], keys) == expect


@pytest.mark.parametrize(
    "options", [["--gop", "1", "--no-fast-decode"], ["--gop", "5"], [], ["--gop", "250", "--no-fast-decode"]]
)
def test_sampled_clips_are_exactly_the_wanted_frames(source, tmp_path, options):
    """Whatever the layout, read_clip returns the frames at the sampled indices (the frame value
    encodes its index), in training (random) and testing sampling."""
    dst = tmp_path / "out"
    assert compress(source, dst, "--fps", "12", *options) == 0
    path = dst / "a.mp4"
    every = decode_all(path)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        from mugstan.data.video import segment_indices

        idx = segment_indices(0, 36, 8, True, np.random.default_rng(seed))
        clip = read_clip(path, 8, train=True, rng=rng)
        assert clip.shape == (8, 3, 48, 64) and clip.dtype == torch.uint8
        assert torch.equal(clip, every[idx])
    middle = read_clip(path, 6, train=False)
    assert torch.equal(middle, every[segment_indices(0, 36, 6, False)])


def test_uint8_loader_then_normalize_equals_the_float_loader(tmp_path):
    """build_dataset(..., uint8=True) hands over the same crops unnormalised; normalize (on any
    device; here the CPU) gives what the float loader gives, in float32 and close in bf16."""
    videos = tmp_path / "v"
    for i in range(3):
        write_video(videos / f"{i}.mp4", frames=20, size=(80, 60), fps=10, gop=5, seed=i)
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"video": f"{i}.mp4", "caption": "x"}) + "\n" for i in range(3)))
    cfg = DataConfig(
        dataset="jsonl", root=str(videos), train_ann=str(ann), test_ann=str(ann), num_frames=4, image_size=32
    )
    for train in (True, False):
        split = "train" if train else "test"
        plain = build_dataset(cfg, split, train=train, pairs=False, seed=3)
        raw = build_dataset(cfg, split, train=train, pairs=False, seed=3, uint8=True)
        for i in range(3):
            a, b = plain[i]["frames"], raw[i]["frames"]
            assert a.dtype == torch.float32 and b.dtype == torch.uint8 and b.shape == a.shape == (4, 3, 32, 32)
            assert b.is_contiguous()
            assert torch.allclose(normalize(b), a, atol=1e-5)
            batch = b[None]  # [B, T, 3, S, S]
            assert torch.allclose(normalize(batch, torch.bfloat16).float(), a[None], atol=0.02)
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4))
