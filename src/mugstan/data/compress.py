"""Re-encoding videos for fast training reads (``mugstan data compress``, ``mugstan data shard
--compress``): H.264 at a lower frame rate and short side, with a keyframe every few frames."""

from __future__ import annotations

from fractions import Fraction

import av
from av.video.frame import PictureType

from mugstan.data.video import VideoError, output_size, probe, rescale
from mugstan.files import atomic_file

# All-intra by default: on an H200 host's 16 cores the training loader gave 2.5-3.1x the clips/s of
# x264's usual 250-frame GOP, for 1.8-3x the disk (benchmarks/results/loader_speed.md).
GOP_DEFAULT = 1
SHORT_GOP = 30


def x264_options(crf: int, gop: int, fast_decode: bool = False) -> dict[str, str]:
    """libx264 options: a keyframe exactly every ``gop`` frames (no scene-cut keyframes). Short
    GOPs (up to ``SHORT_GOP``) are for sampling and get no B-frames, so that frame k of a GOP
    costs k + 1 decodes; ``gop`` 1 is all-intra: every frame decodes alone."""
    options = {"crf": str(crf), "preset": "veryfast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    if gop <= SHORT_GOP:
        options["bf"] = "0"
    if fast_decode:
        options["tune"] = "fastdecode"
    return options


def compress_video(src: str, dst: str, fps: float, short_side: int, crf: int = 23, gop: int = GOP_DEFAULT,
                   fast_decode: bool = True) -> None:
    """Re-encode ``src`` as H.264 at ``fps`` with the short side ``short_side`` and a keyframe
    every ``gop`` frames; atomic write."""
    info = probe(src)
    width, height = output_size(
        info.width, info.height, short_side if min(info.width, info.height) > short_side else None
    )
    rate = Fraction(fps).limit_denominator(1000)
    with atomic_file(dst) as tmp:
        with av.open(src) as inp, av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = x264_options(crf, gop, fast_decode)
            vin = inp.streams.video[0]
            tb = float(vin.time_base)
            next_t, written = 0.0, 0
            for frame in inp.decode(vin):
                t = (frame.pts * tb - info.start) if frame.pts is not None else written / fps
                if t + 1e-6 < next_t:
                    continue
                img = rescale(frame, width, height, "yuv420p")
                img.pict_type = PictureType.NONE  # else x264 makes every source keyframe a keyframe: the GOP is ours
                img.pts = written
                img.time_base = Fraction(1, 1) / rate
                out.mux(stream.encode(img))
                written += 1
                next_t = written / fps
            out.mux(stream.encode(None))
        if written == 0:
            raise VideoError(src, "no frames decoded")
