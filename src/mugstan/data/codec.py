"""``data.decoder: torchcodec``: the sampled frames decoded by torchcodec, on a CPU or a CUDA GPU.

    decode_frames(path or bytes, indices, device)   -> uint8 [T, 3, H, W] on ``device``

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


def decode_frames(
    source: str | Path | bytes, indices: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Frames ``indices`` (repeats allowed) of a video file or its bytes -> uint8 [len(indices), 3,
    H, W] on ``device``, at the coded size. torchcodec's own errors pass through (``read_clip``
    names the file); a missing torchcodec or FFmpeg is a UserError."""
    decoder = video_decoder_class()(
        source if isinstance(source, bytes) else str(source), device=str(device), seek_mode="exact"
    )
    return decoder.get_frames_at(indices=[int(i) for i in indices]).data  # [T, 3, H, W]
