"""``data.decoder: torchcodec``: the sampled frames decoded by torchcodec, on a CPU or a CUDA GPU.

    decode_frames(path, indices, short_side, device)   -> uint8 [T, 3, H', W'] on ``device``

``read_clip`` samples the frame indices from PyAV's metadata either way, so both decoders take
the same frames; this module only decodes them. torchcodec indexes the file once (``seek_mode:
exact``) and decodes each wanted frame from its keyframe; on ``device="cuda"`` it decodes with
NVDEC and the frames stay in GPU memory, where the short-side resize (bilinear, antialiased), the
crop and the normalisation run (``ClipReader`` with ``data.decode_device: cuda``). PyAV resizes
with FFmpeg's swscale while converting to RGB, so pixels differ by a few levels
(``benchmarks/results/decode_speed.md``); the frames are the same.

torchcodec is an optional extra (``pip install 'mugstan[torchcodec]'``) and loads FFmpeg's shared
libraries (Debian / Ubuntu: ``apt-get install ffmpeg``); either missing is a one-line error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from mugstan.errors import UserError

FIX = ("data.decoder=torchcodec needs the torchcodec package and FFmpeg's shared libraries: "
       "pip install 'mugstan[torchcodec]' and apt-get install ffmpeg (Debian/Ubuntu), or use data.decoder=pyav")


@functools.cache
def video_decoder_class():
    """torchcodec's ``VideoDecoder``, or UserError naming what is missing and the fix."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ModuleNotFoundError:
        raise UserError(f"torchcodec is not installed; {FIX}") from None
    except (ImportError, OSError, RuntimeError) as err:  # torchcodec raises RuntimeError when no FFmpeg loads
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torchcodec cannot load FFmpeg's libraries ({first}); {FIX}") from None
    return VideoDecoder


def decode_frames(path: str | Path, indices: Sequence[int], short_side: int | None = None,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Frames ``indices`` of ``path`` (repeats allowed) -> uint8 [len(indices), 3, H', W'] on
    ``device``, the short side resized to ``short_side`` (None: as coded)."""
    from mugstan.data.video import VideoError, output_size

    decoder_class = video_decoder_class()
    try:
        decoder = decoder_class(str(path), device=str(device), seek_mode="exact")
        frames = decoder.get_frames_at(indices=[int(i) for i in indices]).data  # [T, 3, H, W]
    except (RuntimeError, ValueError, IndexError) as err:
        raise VideoError(path, f"torchcodec could not decode frames {list(indices)} ({str(err).splitlines()[0]})") from None
    width, height = output_size(frames.shape[-1], frames.shape[-2], short_side)
    if (height, width) != tuple(frames.shape[-2:]):
        frames = TF.resize(frames, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return frames
