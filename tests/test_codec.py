"""data.decoder: torchcodec decodes the same sampled frames as PyAV (on the CPU here)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from data_fixtures import write_video

from mugstan.config import ConfigError, DataConfig, ExperimentConfig, validate_config
from mugstan.data import codec
from mugstan.data.video import read_clip
from mugstan.errors import UserError

pytest.importorskip("torchcodec")

SAMPLERS = [  # (sampler, train, clip, num_clips)
    ("segment", True, 0, 1), ("segment", False, 0, 1), ("segment", False, 1, 2),
    ("dense", True, 0, 1), ("dense", False, 1, 2), ("fps", False, 0, 1),
]


def frame_value(frames: torch.Tensor) -> torch.Tensor:
    """write_video fills frame i below its top quarter with (i * 9) % 256: the mean there says i."""
    h = frames.shape[-2]
    return frames[..., h // 2:, :].float().mean((-3, -2, -1))


@pytest.mark.parametrize("sampler,train,clip,num_clips", SAMPLERS)
def test_torchcodec_takes_the_same_frames_as_pyav(tmp_path, sampler, train, clip, num_clips):
    path = write_video(tmp_path / "v.mp4", frames=40, size=(64, 48), fps=8, gop=6)
    out = {}
    for decoder in ("pyav", "torchcodec"):
        rng = np.random.default_rng(3)  # the same draws for both
        out[decoder] = read_clip(path, 8, train, 32, sampler=sampler, stride=3, rng=rng, clip=clip, num_clips=num_clips,
                                 sample_fps=2.0, return_mask=True, decoder=decoder)
    (pyav, pyav_mask), (tc, tc_mask) = out["pyav"], out["torchcodec"]
    assert tc.dtype == torch.uint8 and tc.shape == pyav.shape == (8, 3, 32, 42)
    assert torch.equal(tc_mask, pyav_mask)
    # the same frame at every position: frame values are 9 apart, the decoders' pixels a few levels
    torch.testing.assert_close(frame_value(tc), frame_value(pyav), atol=2.0, rtol=0)
    diff = (tc.float() - pyav.float()).abs()
    assert diff.mean() < 4.0, f"mean pixel difference {diff.mean():.2f}"


def test_missing_torchcodec_is_one_line(monkeypatch):
    codec.video_decoder_class.cache_clear()
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if it were not installed
    with pytest.raises(
        UserError, match=r"torchcodec is not installed; .*pip install 'mugstan\[torchcodec\]'.*apt-get install ffmpeg"
    ) as err:
        codec.video_decoder_class()
    assert "\n" not in str(err.value)
    codec.video_decoder_class.cache_clear()


def test_cuda_decoding_needs_torchcodec_in_the_training_process():
    cfg = ExperimentConfig(data=DataConfig(decode_device="cuda", decoder="pyav", num_workers=0))
    with pytest.raises(ConfigError, match="data.decode_device=cuda needs data.decoder=torchcodec"):
        validate_config(cfg, check_files=False)
    cfg.data.decoder, cfg.data.num_workers = "torchcodec", 2
    with pytest.raises(ConfigError, match="data.num_workers=0"):
        validate_config(cfg, check_files=False)
    cfg.data.num_workers = 0
    validate_config(cfg, check_files=False)


def test_clip_reader_with_torchcodec_gives_the_training_crops_of_pyav(tmp_path):
    """data.decoder reaches the datasets: at the coded size (data.resize_short = the frame height)
    both decoders give identical frames, so the seeded random crops are identical too."""
    from mugstan.data.datasets import Clip, ClipReader

    path = write_video(tmp_path / "v.mp4", frames=40, size=(64, 48), fps=8, gop=6)
    crops = []
    for decoder in ("pyav", "torchcodec"):
        cfg = DataConfig(num_frames=6, image_size=32, resize_short=48, decoder=decoder)
        frames, _ = ClipReader(cfg, train=True, seed=5, uint8=True).read(Clip(str(path)), index=3)
        crops.append(frames)
    assert crops[0].shape == (6, 3, 32, 32) and torch.equal(crops[0], crops[1])
