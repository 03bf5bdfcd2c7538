"""Video decoding with PyAV that reads only what it needs, and the frame samplers.

``read_clip(path, num_frames, ...)`` is what datasets call:

1. ``probe`` reads the stream's frame rate, time base and length from the container (no decoding).
2. A sampler picks frame indices inside [start, end]: ``segment_indices`` (T equal segments:
   random frame of each in training, the middle one in testing), ``dense_indices`` (T frames
   at a fixed stride from a random or central start) or ``fps_indices`` (CLIP4Clip / CLIP2Video:
   a fixed frame rate, at most T frames uniformly). Short videos repeat frames, never pad with
   black; with ``fps_indices`` the repeats are masked out.
3. ``decode_frames`` seeks to the keyframe before the first wanted frame and decodes forward,
   seeking again when the container's keyframe index shows that the next wanted frame is in a
   later group of pictures (files without an index: when it is over a second ahead); only the
   wanted frames are converted to RGB, resized to the requested short side in the same step
   (``frame.to_ndarray``). On files written by ``mugstan data compress --gop 1`` (all-intra)
   a sampled frame costs one decode.
   ``read_clip`` opens the file once for the metadata and the frames.

Every failure (missing file, not a video, no video stream, no frames, truncated stream) raises
``VideoError`` with the path and the reason. Nothing is opened at import or construction time,
so DataLoader workers each open their own containers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import av
import numpy as np
import torch
from torch.utils.data import get_worker_info

PathLike = Union[str, Path]
# Frame threading pays off from about this many pixels per frame; below it, starting the decoder's
# threads costs more than it saves (8 frames of a 64x64 clip: 1.5x slower with them, measured).
# DataLoader workers never use them: the workers already occupy the cores, and there threads cost
# CPU time without saving wall time (12 frames of a 10 s 720p video: 906 vs 870 ms, 320x240:
# 193 vs 169 ms; benchmarks/results/loader_speed.md).
THREADED_PIXELS = 320 * 240


class VideoError(Exception):
    """A video that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class VideoInfo:
    """What the container says about the first video stream.

    num_frames: frames in the whole file; fps: average frame rate; start: the stream's first
    presentation time in seconds; width, height: coded size.
    """

    num_frames: int
    fps: float
    start: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(path: PathLike) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoError(path, "file not found")
    if p.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoError(path, f"cannot be opened as a media file ({err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream (audio-only or data file)")
    return container


def probe(path: PathLike) -> VideoInfo:
    """Frame count, rate and size from the container metadata, counting packets when it has none."""
    with _open(path) as container:
        return _info(container, path)


def _info(container: av.container.InputContainer, path: PathLike) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    n = stream.frames
    if not n and stream.duration:
        n = int(round(float(stream.duration * stream.time_base) * fps))
    if not n and container.duration:
        n = int(round(container.duration / av.time_base * fps))
    if not n:  # no length in the metadata (some webm / streamed files): count packets, then rewind
        n = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    if n <= 0:
        raise VideoError(path, "contains no video frames (zero length)")
    return VideoInfo(n, fps, start, stream.codec_context.width, stream.codec_context.height)


# ---- samplers -------------------------------------------------------------------------------
def frame_range(info: VideoInfo, start: Optional[float] = None, end: Optional[float] = None) -> tuple[int, int]:
    """[first, last) frame indices inside [start, end] seconds (whole video when None)."""
    first = 0 if start is None else max(0, int(math.floor(start * info.fps)))
    last = info.num_frames if end is None else min(info.num_frames, int(math.ceil(end * info.fps)))
    if last <= first:  # a window shorter than one frame still shows its frame
        first = min(first, info.num_frames - 1)
        last = first + 1
    return first, last


def segment_indices(first: int, last: int, num: int, train: bool, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Split [first, last) into ``num`` equal segments; a random frame of each (train) or the middle.

    Fewer frames than segments repeat frames (each segment still maps to a real frame).
    """
    edges = np.linspace(first, last, num + 1)
    if train:
        rng = rng or np.random.default_rng()
        points = edges[:-1] + rng.random(num) * (edges[1:] - edges[:-1])
    else:
        points = (edges[:-1] + edges[1:]) / 2
    return np.clip(np.floor(points).astype(np.int64), first, last - 1)


def dense_indices(first: int, last: int, num: int, stride: int, train: bool, rng: Optional[np.random.Generator] = None,
                  clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """``num`` frames ``stride`` apart. Train: random start; test: clip ``clip`` of ``num_clips``
    evenly spaced starts (one clip: the centre). Past the end, indices wrap around the window."""
    span = (num - 1) * stride + 1
    room = max(0, (last - first) - span)
    if train:
        offset = int((rng or np.random.default_rng()).integers(0, room + 1))
    elif num_clips == 1:
        offset = room // 2
    else:
        offset = int(round(room * clip / (num_clips - 1)))
    idx = first + offset + np.arange(num) * stride
    return first + (idx - first) % max(1, last - first)


def fps_indices(first: int, last: int, video_fps: float, sample_fps: float, max_frames: int) -> np.ndarray:
    """CLIP4Clip / CLIP2Video sampling: one frame every ``1 / sample_fps`` seconds of [first, last)
    (from ``first``), then, when that gives more than ``max_frames``, ``max_frames`` of them chosen
    uniformly including the first and the last (``np.linspace(0, n - 1, max_frames)`` as integers,
    CLIP4Clip's ``--slice_framepos 2``). Fewer frames than ``max_frames`` are all returned: the
    caller pads them and masks the padding. Deterministic (train and test alike).
    """
    if sample_fps <= 0 or max_frames < 1:
        raise ValueError(f"sample_fps must be positive and max_frames at least 1, got {sample_fps}, {max_frames}")
    step = video_fps / sample_fps  # frames of video between two samples
    count = max(1, int(math.ceil((last - first) / step)))
    times = np.floor(first + np.arange(count) * step).astype(np.int64)
    times = np.clip(times, first, last - 1)
    if count > max_frames:
        times = times[np.linspace(0, count - 1, num=max_frames).astype(np.int64)]
    return times


def pad_indices(indices: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices padded to ``num`` by repeating the last one, and the mask of the real ones (bool [num])."""
    n = len(indices)
    mask = np.arange(num) < n
    return np.concatenate([indices, np.full(num - n, indices[-1], dtype=np.int64)]), mask


# ---- decoding -------------------------------------------------------------------------------
def output_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side`` (even sizes; None keeps it)."""
    if not short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class _Overshoot(Exception):
    pass


def keyframe_indices(stream, info: VideoInfo) -> Optional[np.ndarray]:
    """Frame indices of the keyframes, from the container's index (mp4 sample table, mkv cues);
    None when the container has no index. Read without decoding; used to plan seeks."""
    try:
        entries = stream.index_entries
    except (AttributeError, av.error.FFmpegError):
        return None
    if not entries:
        return None
    tb = float(stream.time_base)
    first = entries[0].timestamp
    keys = np.array([e.timestamp for e in entries if e.is_keyframe], dtype=np.float64)
    if keys.size == 0:
        return None
    return np.round((keys - first) * tb * info.fps).astype(np.int64)


def _collect(frames, wanted: np.ndarray, pos: int, index_of, width: int, height: int, got: dict,
             num_frames: int, stop_gap: Optional[int], keys: Optional[np.ndarray] = None) -> int:
    """Walk decoded ``frames`` and convert the wanted ones; returns the next wanted position.

    Stops when all are found, at the end of the stream, or when seeking to the next wanted frame
    is cheaper than decoding up to it: with ``keys`` (keyframe indices), when a keyframe lies
    between this frame and the next wanted one (more than one frame ahead); without, when the next
    wanted frame is more than ``stop_gap`` frames ahead. ``stop_gap`` None: never stop early.
    Raises ``_Overshoot`` when the first frame after a seek is already past the wanted one
    (imprecise seeking, e.g. MPEG-TS).
    """
    first, found = True, False
    for frame in frames:
        index = index_of(frame)
        if first and stop_gap is not None and index > wanted[pos]:
            raise _Overshoot
        first = False
        if index >= num_frames:
            break
        if index >= wanted[pos]:
            while pos < len(wanted) and wanted[pos] < index:  # the stream skipped it (timestamp gap)
                pos += 1
            if pos < len(wanted) and wanted[pos] == index:
                got[index] = frame.to_ndarray(width=width, height=height, format="rgb24")
                pos += 1
                found = True
            if pos >= len(wanted):
                break
        if found and stop_gap is not None:
            if keys is not None:
                key = keys[np.searchsorted(keys, wanted[pos], side="right") - 1] if keys[0] <= wanted[pos] else keys[0]
                if key > index + 1:  # the next wanted frame is in a later group of pictures: seek there
                    break
            elif wanted[pos] - index > stop_gap:
                break
    return pos


def decode_frames(path: PathLike, indices: Sequence[int], short_side: Optional[int] = None,
                  info: Optional[VideoInfo] = None, seek_gap: Optional[int] = None) -> torch.Tensor:
    """Frames at ``indices`` (any order, repeats allowed) -> uint8 [len(indices), 3, H, W].

    short_side: resize while converting (None keeps the decoded size). seek_gap: seek again when
    the next wanted frame is more than this many frames ahead; default: seek when the container's
    keyframe index shows a keyframe between the frame just decoded and the next wanted one (so an
    all-intra file costs one decode per sampled frame), else when it is more than one second ahead.
    Streams without timestamps are decoded from the start, counting frames.

    The result is channels-last in memory (a view of the decoded H x W x 3 pixels, no copy):
    resizing and cropping read it faster that way.
    """
    with _open(path) as container:
        return _decode(container, path, info or _info(container, path), indices, short_side, seek_gap)


def _decode(container: av.container.InputContainer, path: PathLike, info: VideoInfo, indices: Sequence[int],
            short_side: Optional[int] = None, seek_gap: Optional[int] = None) -> torch.Tensor:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no frame indices to decode")
    if indices.min() < 0 or indices.max() >= info.num_frames:
        raise ValueError(f"{path}: frame indices {indices.min()}..{indices.max()} outside 0..{info.num_frames - 1}")
    wanted = np.unique(indices)
    width, height = output_size(info.width, info.height, short_side)
    got: dict[int, np.ndarray] = {}
    stream = container.streams.video[0]
    if info.width * info.height >= THREADED_PIXELS and get_worker_info() is None:
        stream.thread_type = "AUTO"  # worth the decoder's threads in a lone process; small files decode faster without
    tb = float(stream.time_base)
    keys = keyframe_indices(stream, info) if seek_gap is None else None
    seek_gap = seek_gap if seek_gap is not None else max(1, int(round(info.fps)))
    timed = True

    def index_of(frame) -> int:
        nonlocal timed
        if frame.pts is None:
            timed = False
            raise StopIteration
        return int(round((frame.pts * tb - info.start) * info.fps))

    try:
        pos = 0
        while pos < len(wanted) and timed:
            target = int(wanted[pos])
            container.seek(int((info.start + target / info.fps) / tb), stream=stream, backward=True, any_frame=False)
            before = pos
            try:
                pos = _collect(container.decode(stream), wanted, pos, index_of, width, height, got, info.num_frames, seek_gap, keys)
            except StopIteration:
                break
            except _Overshoot:  # seeking is not precise in this file: decode it from the start
                container.seek(0)
                _collect(container.decode(stream), wanted, pos, index_of, width, height, got, info.num_frames, None)
                break
            if pos == before:  # nothing found past the seek point: end of the stream
                break
        if not timed:  # no timestamps: decode from the start and count
            container.seek(0)
            counter = iter(range(info.num_frames + 1))
            got.clear()
            _collect(container.decode(stream), wanted, 0, lambda f: next(counter), width, height, got, info.num_frames, None)
    except av.error.FFmpegError as err:
        if not got:
            raise VideoError(path, f"decoding failed ({err})") from None
    if not got:
        raise VideoError(path, "no frame could be decoded (corrupt or truncated stream)")
    # Frames the stream did not deliver (a truncated tail, timestamp gaps) take the nearest
    # decoded frame: a repeated real frame, never a black one.
    decoded = np.array(sorted(got))
    nearest = {int(i): int(decoded[np.abs(decoded - i).argmin()]) for i in wanted if int(i) not in got}
    stack = np.stack([got[nearest.get(int(i), int(i))] for i in indices])
    return torch.from_numpy(stack).permute(0, 3, 1, 2)


def decode_all(path: PathLike, short_side: Optional[int] = None) -> torch.Tensor:
    """Every frame, converted: uint8 [N, 3, H, W]. The slow reference path (tests, benchmarks)."""
    info = probe(path)
    width, height = output_size(info.width, info.height, short_side)
    with _open(path) as container:
        frames = [f.to_ndarray(width=width, height=height, format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise VideoError(path, "no frame could be decoded")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def read_clip(path: PathLike, num_frames: int, train: bool = False, short_side: Optional[int] = None,
              start: Optional[float] = None, end: Optional[float] = None, sampler: str = "segment",
              stride: int = 4, rng: Optional[np.random.Generator] = None, clip: int = 0,
              num_clips: int = 1, sample_fps: float = 1.0, return_mask: bool = False):
    """Sample and decode one clip: uint8 [num_frames, 3, H, W] (with ``return_mask``, also the
    bool [num_frames] mask of real frames).

    sampler "segment" (default): T segments of [start, end]; with ``num_clips`` > 1 in testing,
    clip c takes the point at (c + 0.5) / num_clips of every segment. "dense": T frames
    ``stride`` apart. "fps": ``fps_indices`` at ``sample_fps`` with ``num_frames`` the cap; a
    short video's missing frames repeat its last sampled frame and are False in the mask (the
    other samplers fill every position with a real frame: the mask is all True). An image file
    (image-text data) is a one-frame video: its frame repeated, every position real.
    """
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        frames = read_image(path, short_side).expand(num_frames, -1, -1, -1).contiguous()
        return (frames, torch.ones(num_frames, dtype=torch.bool)) if return_mask else frames
    with _open(path) as container:  # one open for the metadata and the frames
        info = _info(container, path)
        first, last = frame_range(info, start, end)
        if sampler == "segment":
            if train or num_clips == 1:
                idx = segment_indices(first, last, num_frames, train, rng)
            else:
                edges = np.linspace(first, last, num_frames + 1)
                idx = np.clip(np.floor(edges[:-1] + (clip + 0.5) / num_clips * (edges[1:] - edges[:-1])).astype(np.int64), first, last - 1)
        elif sampler == "dense":
            idx = dense_indices(first, last, num_frames, stride, train, rng, clip, num_clips)
        elif sampler == "fps":
            idx, mask = pad_indices(fps_indices(first, last, info.fps, sample_fps, num_frames), num_frames)
        else:
            raise ValueError(f"data.sampler must be 'segment', 'dense' or 'fps', got {sampler!r}")
        frames = _decode(container, path, info, idx, short_side)
    if not return_mask:
        return frames
    return frames, torch.from_numpy(mask) if sampler == "fps" else torch.ones(num_frames, dtype=torch.bool)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_image(path: PathLike, short_side: Optional[int] = None) -> torch.Tensor:
    """An image file -> uint8 [1, 3, H, W], resized so its short side is ``short_side``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if short_side is not None:
                width, height = output_size(img.width, img.height, short_side)
                img = img.resize((width, height), Image.BICUBIC)
            array = np.asarray(img)
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise VideoError(path, f"not a readable image ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def read_frames_at(path: PathLike, times: Sequence[float], short_side: Optional[int] = None) -> torch.Tensor:
    """The frames showing ``times`` (seconds from the start of the video) -> uint8 [len(times), 3, H, W].

    Times before the first or after the last frame take the first or last frame (a window that
    runs past the ends repeats the end frames, as AVA's clip sampling clamps to the shot). One open
    for the metadata and the frames.
    """
    with _open(path) as container:
        info = _info(container, path)
        idx = np.clip(np.floor(np.asarray(times, dtype=np.float64) * info.fps + 1e-6).astype(np.int64), 0, info.num_frames - 1)
        return _decode(container, path, info, idx, short_side)
