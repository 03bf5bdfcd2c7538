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
   (``to_rgb``: one scaling thread, a converter of mugstan's own). On files written by
   ``mugstan data compress --gop 1`` (all-intra) a sampled frame costs one decode.
   ``read_clip`` opens the file once for the metadata and the frames.

Every failure (missing file, not a regular file, not a video, no video stream, no frames) raises
``VideoError`` with the path and the reason. So does a sampled frame with no decodable frame near
it (within ``near_frames``): a truncated file ("no decodable frame at t=... s or later") or damaged
data in the middle ("no decodable frame near t=... s"). A frame missing by a timestamp gap of a
frame or two takes the nearest decoded one; inside a longer gap without any decoder error (a
variable-frame-rate recording that paused) it takes the frame before the gap, which is what a
player shows there. ``verify_frames`` decodes every frame (``data check --full``). Nothing is opened
at import or construction time, so DataLoader workers each open their own containers.
"""

from __future__ import annotations

import io
import math
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import get_worker_info

from mugstan.errors import UserError, one_line

PathLike = Union[str, Path]
# Frame threading pays off from about this many pixels per frame; below it, starting the decoder's
# threads costs more than it saves (8 frames of a 64x64 clip: 1.5x slower with them, measured).
# DataLoader workers never use them: the workers already occupy the cores, and there threads cost
# CPU time without saving wall time (12 frames of a 10 s 720p video: 906 vs 870 ms, 320x240:
# 193 vs 169 ms; benchmarks/results/loader_speed.md).
THREADED_PIXELS = 320 * 240
# Threads of a frame conversion (swscale's slice threads): one. The DataLoader workers already
# occupy the cores, and a converter without threads can be inherited by a forked worker
# (``rescale``). One thread gives the same pixels as several (checked at 57x31 to 320x240).
SCALE_THREADS = 1
_converters = threading.local()  # each thread's own VideoReformatter


def rescale(frame, width: int, height: int, format: str):
    """``frame`` (a decoded ``av.VideoFrame``) converted to ``format`` at width x height (bilinear,
    PyAV's default), by this thread's own converter on ``SCALE_THREADS``.

    Not ``frame.reformat`` / ``frame.to_ndarray(width=...)``: from PyAV 18.1.1 those share one
    converter per thread with every other caller, and a DataLoader worker forked after a conversion
    with PyAV's default threads (by the user's code, or a library such as torchvision) inherits it
    without its threads; using it there waits for them forever (seen: test_data_cli's two workers
    hung, and CI ran out of time). A converter made and used only here never has threads."""
    converter = getattr(_converters, "converter", None)
    if converter is None:
        converter = _converters.converter = VideoReformatter()
    return converter.reformat(frame, width=width, height=height, format=format, threads=SCALE_THREADS)


def to_rgb(frame, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] RGB of a decoded ``frame``, resized (``rescale``)."""
    return rescale(frame, width, height, "rgb24").to_ndarray()


class VideoError(UserError):
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
    claimed_frames: Optional[int] = None  # probe(count=True): what the container said, when the count differs

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(path: PathLike, data: Optional[bytes] = None) -> av.container.InputContainer:
    """The container of ``path``, or of ``data`` (the file's bytes, from a tar shard; ``path`` then
    only names it in errors)."""
    if data is not None:
        if not data:
            raise VideoError(path, "empty file (0 bytes)")
        try:
            container = av.open(io.BytesIO(data))
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise VideoError(path, f"cannot be opened as a media file ({err})") from None
        return _with_video(container, path)
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise VideoError(path, "file not found") from None
    except OSError as err:
        raise VideoError(path, f"cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):  # checked before opening: opening a FIFO waits for a writer forever
        raise VideoError(path, "is a FIFO, device or socket, not a regular file")
    if st.st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoError(path, f"cannot be opened as a media file ({err})") from None
    return _with_video(container, path)


def _with_video(container: av.container.InputContainer, path: PathLike) -> av.container.InputContainer:
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream (audio-only or data file)")
    return container


def probe(path: PathLike, count: bool = False) -> VideoInfo:
    """Frame count, rate and size from the container metadata, counting packets when it has none.

    count: also count the packets when the container only estimates the frame count (from a
    duration) or claims more frames than the file has bytes, so that the count is of frames that
    exist (``mugstan index`` plans its windows from it). Demuxing reads the file but decodes nothing.
    """
    with _open(path) as container:
        return _info(container, path, count)


def _info(container: av.container.InputContainer, path: PathLike, count: bool = False) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError(path, f"unusable frame rate {fps} in the container")
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    n = stream.frames
    estimated = not n
    if not n and stream.duration:
        n = int(round(float(stream.duration * stream.time_base) * fps))
    if not n and container.duration:
        n = int(round(container.duration / av.time_base * fps))
    claimed = None
    if not n or (count and (estimated or n > Path(path).stat().st_size)):  # count packets, then rewind
        counted = sum(1 for packet in container.demux(stream) if packet.size)
        claimed = n if n and n != counted else None
        n = counted
        container.seek(0)
    if n <= 0:
        raise VideoError(path, "contains no video frames (zero length)")
    return VideoInfo(n, fps, start, stream.codec_context.width, stream.codec_context.height, claimed)


# ---- samplers -------------------------------------------------------------------------------
def frame_range(info: VideoInfo, start: Optional[float] = None, end: Optional[float] = None) -> tuple[int, int]:
    """[first, last) frame indices inside [start, end] seconds (whole video when None)."""
    first = 0 if start is None else max(0, int(math.floor(start * info.fps)))
    last = info.num_frames if end is None else min(info.num_frames, int(math.ceil(end * info.fps)))
    if last <= first:  # a window shorter than one frame still shows its frame
        first = min(first, info.num_frames - 1)
        last = first + 1
    return first, last


def segment_indices(
    first: int, last: int, num: int, train: bool, rng: Optional[np.random.Generator] = None
) -> np.ndarray:
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


def dense_indices(
    first: int,
    last: int,
    num: int,
    stride: int,
    train: bool,
    rng: Optional[np.random.Generator] = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
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


def near_frames(fps: float) -> int:
    """How far (in frames) the nearest decoded frame may be from a sampled one that the stream does
    not deliver (timestamp gaps, a frame count off by one): 2 frames or 0.1 s, whichever is more."""
    return max(2, int(round(0.1 * fps)))


class _Walk:
    """The wanted frames met while decoding: converted frames (``got``: {frame index: uint8 [H, W, 3]
    RGB at the output size}), and the last decoded frame."""

    def __init__(self, wanted: np.ndarray, width: int, height: int, near: int):
        self.wanted, self.pos, self.got = wanted, 0, {}
        self.width, self.height, self.near = width, height, near
        self.prev = None  # (index, frame): the frame decoded just before
        self.last = None  # (index, frame): the highest frame index decoded
        self.gaps: list[int] = []  # wanted frames inside a longer timestamp gap (shown: the frame before it)

    def convert(self, frame) -> np.ndarray:
        return to_rgb(frame, self.width, self.height)

    def take(self, index: int, frame) -> bool:
        """Offer the decoded frame ``index``; True when every wanted frame has been met."""
        while self.pos < len(self.wanted) and self.wanted[self.pos] < index:  # the stream has no frame there
            w = int(self.wanted[self.pos])
            options = [(index - w, frame)] + (
                [(w - self.prev[0], self.prev[1])] if self.prev and self.prev[0] < w else []
            )
            distance, nearest = min(options, key=lambda o: o[0])
            if distance <= self.near:  # a timestamp gap: the nearest frame is what the video shows there
                self.got[w] = self.convert(nearest)
            elif (
                self.prev and self.prev[0] < w
            ):  # a longer gap: variable frame rate, or frames lost to damage (_decode decides)
                self.got[w] = self.convert(self.prev[1])
                self.gaps.append(w)
            self.pos += 1  # else it stays missing: reported by _decode
        if self.pos < len(self.wanted) and self.wanted[self.pos] == index:
            self.got[index] = self.convert(frame)
            self.pos += 1
        self.prev = (index, frame)
        if self.last is None or index > self.last[0]:
            self.last = (index, frame)
        return self.pos >= len(self.wanted)


def _collect(
    frames, walk: _Walk, index_of, num_frames: int, stop_gap: Optional[int], keys: Optional[np.ndarray] = None
) -> None:
    """Walk decoded ``frames``, offering each to ``walk`` (which converts the wanted ones).

    Stops when all are met, at the end of the stream, or when seeking to the next wanted frame
    is cheaper than decoding up to it: with ``keys`` (keyframe indices), when a keyframe lies
    between this frame and the next wanted one (more than one frame ahead); without, when the next
    wanted frame is more than ``stop_gap`` frames ahead. ``stop_gap`` None: never stop early.
    Raises ``_Overshoot`` when the first frame after a seek is already past the wanted one
    (imprecise seeking, e.g. MPEG-TS).
    """
    first, found = True, False
    wanted = walk.wanted
    for frame in frames:
        index = index_of(frame)
        if first and stop_gap is not None and index > wanted[walk.pos]:
            raise _Overshoot
        first = False
        if index >= num_frames:
            break
        before = walk.pos
        if walk.take(index, frame):
            break
        found = found or walk.pos > before
        if found and stop_gap is not None:
            nxt = wanted[walk.pos]
            if keys is not None:
                key = keys[np.searchsorted(keys, nxt, side="right") - 1] if keys[0] <= nxt else keys[0]
                if key > index + 1:  # the next wanted frame is in a later group of pictures: seek there
                    break
            elif nxt - index > stop_gap:
                break


def decode_frames(
    path: PathLike,
    indices: Sequence[int],
    short_side: Optional[int] = None,
    info: Optional[VideoInfo] = None,
    seek_gap: Optional[int] = None,
) -> torch.Tensor:
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


def _decode(
    container: av.container.InputContainer,
    path: PathLike,
    info: VideoInfo,
    indices: Sequence[int],
    short_side: Optional[int] = None,
    seek_gap: Optional[int] = None,
) -> torch.Tensor:
    """Frames ``indices`` of the open ``container``'s first video stream -> uint8 [len(indices), 3, H, W],
    channels-last in memory (a view of the [len(indices), H, W, 3] RGB pixels), H x W the decoded
    size with its short side resized to ``short_side`` (None: as decoded).

    ``indices`` may come in any order and repeat; each distinct frame is converted once, met by
    seeking (``_walk_by_seeking``), or for a stream without timestamps by decoding from the start and
    counting (``_walk_by_counting``); ``_check_walk`` then fills or rejects what the stream did not
    deliver. Raises ``ValueError`` for indices outside the video, ``VideoError`` for frames that
    cannot be decoded (``decode_frames`` says what ``seek_gap`` does).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no frame indices to decode")
    if indices.min() < 0 or indices.max() >= info.num_frames:
        raise ValueError(f"{path}: frame indices {indices.min()}..{indices.max()} outside 0..{info.num_frames - 1}")
    wanted = np.unique(indices)
    width, height = output_size(info.width, info.height, short_side)
    walk = _Walk(wanted, width, height, near_frames(info.fps))
    errors: list[Exception] = []
    stream = container.streams.video[0]
    if info.width * info.height >= THREADED_PIXELS and get_worker_info() is None:
        stream.thread_type = "AUTO"  # worth the decoder's threads in a lone process; small files decode faster without
    if not _walk_by_seeking(container, stream, info, walk, seek_gap, errors):  # no timestamps: decode from the start
        walk = _Walk(wanted, width, height, walk.near)
        _walk_by_counting(container, stream, info, walk, errors)
    _check_walk(walk, path, info, errors)
    stack = np.stack([walk.got[int(i)] for i in indices])  # [len(indices), H, W, 3]
    return torch.from_numpy(stack).permute(0, 3, 1, 2)


def _walk_by_seeking(
    container: av.container.InputContainer,
    stream,
    info: VideoInfo,
    walk: _Walk,
    seek_gap: Optional[int],
    errors: list[Exception],
) -> bool:
    """Offer ``walk`` its wanted frames (each an [H, W, 3] uint8 RGB array once converted) by seeking
    to the keyframe before the next one still wanted and decoding forward (``_collect`` says when to
    seek again); a file whose seeking overshoots is decoded once from the start instead. Decoder
    errors go to ``errors``: the frame there stays missing and the walk goes on with the next one.
    Stops at the end of the stream. Returns False when a frame has no timestamp (the stream must be
    counted: ``_walk_by_counting``), else True."""
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

    wanted = walk.wanted
    while walk.pos < len(wanted) and timed:
        before = walk.pos
        target = int(wanted[walk.pos])
        try:
            container.seek(int((info.start + target / info.fps) / tb), stream=stream, backward=True, any_frame=False)
            _collect(container.decode(stream), walk, index_of, info.num_frames, seek_gap, keys)
        except StopIteration:
            break
        except _Overshoot:  # seeking is not precise in this file: decode it from the start
            try:
                container.seek(0)
                _collect(container.decode(stream), walk, index_of, info.num_frames, None)
            except av.error.FFmpegError as err:
                errors.append(err)
            break
        except av.error.FFmpegError as err:  # damaged data: the wanted frame there stays missing, try the next one
            errors.append(err)
            if walk.pos == before:
                walk.pos += 1
            continue
        if walk.pos == before:  # nothing found past the seek point: end of the stream
            break
    return timed


def _walk_by_counting(
    container: av.container.InputContainer, stream, info: VideoInfo, walk: _Walk, errors: list[Exception]
) -> None:
    """A stream without timestamps: decode it from the start, the n-th decoded frame being frame n,
    offering ``walk`` (a fresh one) every frame up to ``info.num_frames``. A decoder error goes to
    ``errors`` and ends the walk."""
    counter = iter(range(info.num_frames + 1))
    try:
        container.seek(0)
        _collect(container.decode(stream), walk, lambda f: next(counter), info.num_frames, None)
    except av.error.FFmpegError as err:
        errors.append(err)


def _check_walk(walk: _Walk, path: PathLike, info: VideoInfo, errors: list[Exception]) -> None:
    """After decoding: a wanted frame at most ``walk.near`` frames past the last decoded one (a
    stream ending a frame or two early) takes that last frame; with decoder ``errors``, the frames
    shown across a longer gap are damage, not a variable frame rate, and are dropped. Raises
    ``VideoError`` when nothing was decoded or a wanted frame is still missing: "truncated" when it
    lies past the last decoded frame, else "damaged" (naming the decoder's first error). On return
    ``walk.got`` holds an [H, W, 3] array for every wanted frame."""
    said = f"; the decoder said: {one_line(errors[0])}" if errors else ""
    if walk.last is None:
        raise VideoError(path, f"no frame could be decoded (corrupt or truncated stream){said}")
    last_index, last_frame = walk.last
    for w in walk.wanted:  # a stream ending a frame or two early (metadata rounding) shows its last frame
        if int(w) not in walk.got and 0 < w - last_index <= walk.near:
            walk.got[int(w)] = walk.convert(last_frame)
    if errors:  # the decoder failed somewhere: a longer gap is damage, not a variable frame rate
        for w in walk.gaps:
            del walk.got[w]
    missing = [int(w) for w in walk.wanted if int(w) not in walk.got]
    if missing:
        if missing[0] > last_index:
            raise VideoError(
                path,
                f"truncated: no decodable frame at t={missing[0] / info.fps:.2f} s or later, though the "
                f"container says {info.duration:.2f} s{said}",
            )
        raise VideoError(
            path,
            f"damaged: no decodable frame near t={missing[0] / info.fps:.2f} s (frame {missing[0]} "
            f"of {info.num_frames}){said}",
        )


def verify_frames(path: PathLike) -> VideoInfo:
    """Decode every frame (nothing converted) and check that the stream delivers what the container
    says: no gap longer than ``near_frames`` and no missing tail. Raises ``VideoError`` naming the
    first gap. ``mugstan data check --full``."""
    with _open(path) as container:
        info = _info(container, path)
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        near = near_frames(info.fps)
        last, count, error = -1, 0, None
        try:
            for frame in container.decode(stream):
                index = count if frame.pts is None else int(round((frame.pts * tb - info.start) * info.fps))
                if index - last > near + 1 and index < info.num_frames:
                    raise VideoError(
                        path,
                        f"no frame between t={(last + 1) / info.fps:.2f} s and t={index / info.fps:.2f} s: "
                        "damaged data, or a variable-frame-rate recording that paused",
                    )
                last, count = max(last, index), count + 1
        except av.error.FFmpegError as err:
            error = err
    said = f"; the decoder said: {one_line(error)}" if error else ""
    if count == 0:
        raise VideoError(path, f"no frame could be decoded (corrupt or truncated stream){said}")
    if error is not None:
        raise VideoError(
            path,
            f"damaged or truncated: decoding fails after t={last / info.fps:.2f} s ({count} of "
            f"{info.num_frames} frames decoded){said}",
        )
    if info.num_frames - 1 - last > near:
        raise VideoError(
            path,
            f"truncated: no decodable frame after t={last / info.fps:.2f} s, though the container says "
            f"{info.duration:.2f} s ({count} of {info.num_frames} frames decoded)",
        )
    return info


def decode_all(path: PathLike, short_side: Optional[int] = None) -> torch.Tensor:
    """Every frame, converted: uint8 [N, 3, H, W]. The slow reference path (tests, benchmarks)."""
    info = probe(path)
    width, height = output_size(info.width, info.height, short_side)
    with _open(path) as container:
        frames = [to_rgb(f, width, height) for f in container.decode(video=0)]
    if not frames:
        raise VideoError(path, "no frame could be decoded")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def _decode_torchcodec(source, path: str, idx: np.ndarray, short_side: Optional[int], device) -> torch.Tensor:
    """``data.decoder: torchcodec``: frames ``idx`` of ``source`` (a file or its bytes) decoded by
    torchcodec on ``device`` (``mugstan.data.codec``), the short side resized there (bilinear,
    antialiased) -> uint8 [T, 3, H', W'] on ``device``."""
    import torchvision.transforms.v2.functional as TF

    from mugstan.data.codec import decode_frames

    try:
        frames = decode_frames(source, idx, device)
    except (RuntimeError, ValueError, IndexError) as err:
        raise VideoError(path, f"torchcodec could not decode frames {list(idx)} ({str(err).splitlines()[0]})") from None
    width, height = output_size(frames.shape[-1], frames.shape[-2], short_side)
    if (height, width) != tuple(frames.shape[-2:]):
        frames = TF.resize(frames, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return frames


def read_clip(
    path: PathLike,
    num_frames: int,
    train: bool = False,
    short_side: Optional[int] = None,
    start: Optional[float] = None,
    end: Optional[float] = None,
    sampler: str = "segment",
    stride: int = 4,
    rng: Optional[np.random.Generator] = None,
    clip: int = 0,
    num_clips: int = 1,
    sample_fps: float = 1.0,
    return_mask: bool = False,
    cache: Optional["FrameCache"] = None,
    data: Optional[bytes] = None,
    decoder: str = "pyav",
    device: Union[str, torch.device] = "cpu",
):
    """Sample and decode one clip: uint8 [num_frames, 3, H, W] (with ``return_mask``, also the
    bool [num_frames] mask of real frames).

    sampler "segment" (default): T segments of [start, end]; with ``num_clips`` > 1 in testing,
    clip c takes the point at (c + 0.5) / num_clips of every segment. "dense": T frames
    ``stride`` apart. "fps": ``fps_indices`` at ``sample_fps`` with ``num_frames`` the cap; a
    short video's missing frames repeat its last sampled frame and are False in the mask (the
    other samplers fill every position with a real frame: the mask is all True). An image file
    (image-text data) is a one-frame video: its frame repeated, every position real. ``cache``
    (a ``FrameCache``): keep every frame of the video on first read and sample it from memory.
    ``data``: the file's bytes (a tar shard's member); decoded from memory, sampled alike, with
    ``path`` (its name, whose extension says video or image) in errors.
    ``decoder`` "torchcodec" decodes the same sampled frames with torchcodec on ``device``
    (``mugstan.data.codec``; the frames are then on that device); "pyav" decodes on the CPU.
    """
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        frames = read_image(path, short_side, data).expand(num_frames, -1, -1, -1).contiguous()
        return (frames, torch.ones(num_frames, dtype=torch.bool)) if return_mask else frames

    def indices(info: VideoInfo) -> tuple[np.ndarray, Optional[np.ndarray]]:
        first, last = frame_range(info, start, end)
        if sampler == "segment":
            if train or num_clips == 1:
                return segment_indices(first, last, num_frames, train, rng), None
            edges = np.linspace(first, last, num_frames + 1)
            return np.clip(
                np.floor(edges[:-1] + (clip + 0.5) / num_clips * (edges[1:] - edges[:-1])).astype(np.int64),
                first,
                last - 1,
            ), None
        if sampler == "dense":
            return dense_indices(first, last, num_frames, stride, train, rng, clip, num_clips), None
        if sampler == "fps":
            return pad_indices(fps_indices(first, last, info.fps, sample_fps, num_frames), num_frames)
        raise ValueError(f"data.sampler must be 'segment', 'dense' or 'fps', got {sampler!r}")

    info, every = cache.get(path, short_side) if cache is not None else (None, None)
    if every is None:
        with _open(path, data) as container:  # one open for the metadata and the frames
            info = _info(container, path)
            idx, mask = indices(info)
            if decoder == "torchcodec":  # the same indices, decoded by torchcodec (mugstan.data.codec)
                frames = _decode_torchcodec(data if data is not None else path, path, idx, short_side, device)
            elif cache is None or not cache.fits(info, short_side):
                frames = _decode(container, path, info, idx, short_side)
            else:  # decode every frame once and keep them
                every = _decode(container, path, info, np.arange(info.num_frames), short_side)
                cache.put(path, short_side, info, every)
    else:
        idx, mask = indices(info)
    if every is not None:
        frames = every[torch.from_numpy(idx)]
    if not return_mask:
        return frames
    return frames, torch.from_numpy(mask) if mask is not None else torch.ones(num_frames, dtype=torch.bool)


class FrameCache:
    """Every decoded frame of the videos read, up to ``limit_mb`` MB (``data.frame_cache_mb``):
    ``read_clip(..., cache=...)`` samples a cached video from memory, with the same frames as
    decoding it again (decoding is deterministic). A video that would pass the limit is decoded
    as usual each time; nothing is evicted."""

    def __init__(self, limit_mb: float):
        self.limit, self.used, self.videos = int(limit_mb * 2**20), 0, {}

    def get(self, path: PathLike, short_side: Optional[int]) -> tuple[Optional[VideoInfo], Optional[torch.Tensor]]:
        """(info, every frame uint8 [N, 3, H, W]) of a cached video; (None, None) if not cached."""
        return self.videos.get((str(path), short_side), (None, None))

    def fits(self, info: VideoInfo, short_side: Optional[int]) -> bool:
        width, height = output_size(info.width, info.height, short_side)
        return self.used + info.num_frames * 3 * width * height <= self.limit

    def put(self, path: PathLike, short_side: Optional[int], info: VideoInfo, frames: torch.Tensor) -> None:
        self.videos[(str(path), short_side)] = (info, frames)
        self.used += frames.numel()


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_image(path: PathLike, short_side: Optional[int] = None, data: Optional[bytes] = None) -> torch.Tensor:
    """An image file (or its bytes ``data``) -> uint8 [1, 3, H, W], resized so its short side is ``short_side``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
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
        idx = np.clip(
            np.floor(np.asarray(times, dtype=np.float64) * info.fps + 1e-6).astype(np.int64), 0, info.num_frames - 1
        )
        return _decode(container, path, info, idx, short_side)
