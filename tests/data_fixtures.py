"""Small videos written with PyAV for the data tests."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path, frames: int = 16, size=(48, 32), fps: int = 8, gop: int = 4, seed: int = 0) -> Path:
    """An H.264 mp4 whose frame i is filled with a value that encodes i (for checking sampling)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        webm = path.suffix == ".webm"  # Something-Something-V2 ships VP9 in WebM
        stream = out.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"g": str(gop)} if webm else {"g": str(gop), "crf": "10", "threads": "1"}
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (i * 9) % 256, dtype=np.uint8)
            img[: size[1] // 4] = rng.integers(0, 255, (size[1] // 4, size[0], 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)
