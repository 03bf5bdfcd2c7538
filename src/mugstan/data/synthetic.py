"""The built-in synthetic temporal benchmark: coloured shapes that move, written as H.264 files.

An image-text model learns what things look like; only temporal modelling tells which way they
move. This generator makes a small benchmark that shows exactly that on a CPU in minutes:

- every video shows one shape (circle, square, triangle, cross) in one colour on a textured,
  slightly noisy background, doing one motion;
- motions come in time-reversed pairs (left/right, up/down, grow/shrink, fade in/out, rotate
  clockwise/counterclockwise): the second motion of a pair is the first one's frames played
  backwards, so any order-blind pooling of frames sees the same thing for both. A rotating shape
  turns like a clock hand through twelve o'clock, spinning about itself as it goes, with a dark
  dot on its outer side (``ROTATION_*`` and ``MARK_*`` below say why);
- the validation and test sets hold every (colour, motion) combination once, each (colour, motion
  pair) in one shape, and the two motions of a pair are the same rendered clip forwards and
  backwards: the distractor that shares a caption's whole appearance and motion axis differs from
  the right video only by the direction of time. (Shape is not what singles out a test video:
  a small ViT trained from scratch on a CPU learns colour within a hundred steps but tells
  shapes apart barely above chance after a thousand, measured; the benchmark is about motion.)
- captions come from templates; the test templates are partly unseen in training, and one of the
  four training captions of a video names only its motion ("a shape that slides left"), as
  action-centred datasets (Something-Something) do;
- an image-text set of single frames (``start``/``end`` select one frame) captioned with what the
  frame shows and never how it moves: colour, shape, where it is, whether it is small, big or
  faint, and where a rotating shape's dot points ("a big red circle at the top left", "a red
  square at the top, dot up right"), for pretraining a CLIP from scratch. Those static
  facts are what a real CLIP knows about an image and what a temporal model reads motion from: a
  STAN trained on the ten motions (supervised probe, 400 steps) from a CLIP pretrained on them
  reached 78% top-1, from a randomly initialised CLIP 31% (measured). Training stills
  are four frames of every training video; validation stills one frame of each of 24 extra
  videos, one per appearance (``videos/images``).

Everything is written in the generic JSONL format (``{"video", "caption", "label", "start",
"end"}``, paths relative to the output folder) so it flows through the same data pipeline as
real datasets. The output folder::

    meta.json                     parameters + seed + counts (identifies the dataset)
    classes.txt                   the motion class names, one per line (label = line index)
    {train,val,test}.jsonl        video-text retrieval: caption list (train) or one caption
    images_{train,val}.jsonl      image-text pretraining: single frames of the train videos / of
                                  videos/images, captioned with what each frame shows
    recognition_{train,val,test}.jsonl   motion recognition: label = motion class index
    videos/{train,val,test,images}/NNNNN.mp4

The same parameters and seed give byte-identical files (x264 runs single-threaded with fixed
options); a folder whose ``meta.json`` matches is reused rather than rendered again.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from mugstan.errors import ArgumentError, OutputExistsError

FORMAT_VERSION = 5
FPS = 8
X264_OPTIONS = {"crf": "18", "preset": "medium", "g": "8", "threads": "1", "x264-params": "no-mbtree=1"}
# Retrieval videos: every frame its own keyframe at a constant quantiser, so each frame is coded
# alone and a clip and its time reversal decode to exactly the same frames (tested). With inter
# frames and rate control (X264_OPTIONS, format 3) the two differed by coding noise, which moved
# an order-blind model's pair accuracy off 50% by chance (46.7 and 56.7 measured).
X264_TWIN_OPTIONS = {"qp": "8", "preset": "medium", "g": "1", "threads": "1", "x264-params": "no-mbtree=1"}

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 240),
    "yellow": (240, 215, 40),
    "purple": (160, 60, 210),
    "white": (245, 245, 245),
}
# A rotating shape (format 5) turns like a clock hand through twelve o'clock: about a pivot
# ROTATION_ARM x the frame size below its centre, by ROTATION_DEGREES centred on straight up (give
# or take ROTATION_JITTER), so it also spins about itself at the same rate; it is ROTATION_SCALE x
# the others' size and carries a dark dot (MARK_RADIUS x its size, at MARK_OFFSET x its size from
# its centre, on the side away from the pivot). Measured on the demo (STAN-self, seeds 0-2):
# - a shape turning 60-80 degrees about its own centre (format 4) changed by a few pixels inside
#   one 8-px patch: rotation pairs at 42-58%;
# - the same shape 1.8x bigger with the dot, turning 140-170 degrees from any angle: 50-67%;
# - a clock hand from any angle (the shape moving 12-13 px through the frame's thirds): 33-50%.
#   From any angle the direction is the sign of the path's curvature, position times velocity,
#   which 600 clips of 4 frames did not teach; through twelve o'clock a clockwise turn is a shape
#   rising and moving right then falling, its reversal the same leftwards, what the positions
#   the stills' captions name (and the small CLIP learns) show frame by frame.
ROTATION_ARM = 0.2
ROTATION_SCALE = 1.2
ROTATION_DEGREES = (140.0, 170.0)
ROTATION_JITTER = 15.0
MARK_OFFSET, MARK_RADIUS = 0.65, 0.35
MARK_COLOR = (15, 15, 15)
# Where a rotating shape's dot points, clockwise from straight up in 45-degree sectors (stills' captions).
MARK_DIRECTIONS = ("up", "up right", "right", "down right", "down", "down left", "left", "up left")
# (first, second): the second motion of a pair is the first one played backwards.
MOTION_PAIRS = (
    ("left", "right"),
    ("up", "down"),
    ("grow", "shrink"),
    ("fade_in", "fade_out"),
    ("rotate_cw", "rotate_ccw"),
)
MOTIONS = tuple(m for pair in MOTION_PAIRS for m in pair)
CLASS_NAMES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
    "fade_in": "fading in",
    "fade_out": "fading out",
    "rotate_cw": "rotating clockwise",
    "rotate_ccw": "rotating counterclockwise",
}
# Motion phrases: the test captions use the first two, training uses all three.
MOTION_PHRASES = {
    "left": ("moves left", "moves to the left", "slides left"),
    "right": ("moves right", "moves to the right", "slides right"),
    "up": ("moves up", "goes up", "rises"),
    "down": ("moves down", "goes down", "falls"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
    "fade_in": ("fades in", "appears", "becomes visible"),
    "fade_out": ("fades out", "disappears", "vanishes"),
    "rotate_cw": ("rotates clockwise", "turns clockwise", "spins clockwise"),
    "rotate_ccw": ("rotates counterclockwise", "turns counterclockwise", "spins counterclockwise"),
}
TRAIN_TEMPLATES = (
    "a {app} {motion}",
    "the {app} {motion}",
    "a video of a {app} that {motion}",
    "a shape that {motion}",
)
TEST_TEMPLATES = ("a {app} {motion}", "in this clip the {app} {motion}")  # the second is unseen in training
IMAGE_TEMPLATES = ("a {app}", "a photo of a {app}", "the {app}")
STILLS_PER_VIDEO = 4  # image-text pretraining: frames taken from each training video
SPLITS = ("train", "val", "test")
IMAGES = "images"  # one still per appearance: the validation split of image-text pretraining


def valid_pairs(shape: str) -> tuple[tuple[str, str], ...]:
    """Motion pairs a shape can show: a circle's rotation is invisible."""
    return tuple(p for p in MOTION_PAIRS if not (shape == "circle" and p[0] == "rotate_cw"))


def appearances() -> list[tuple[str, str]]:
    """Every (colour, shape) combination, in a fixed order."""
    return [(color, shape) for shape in SHAPES for color in COLORS]


@dataclass(frozen=True)
class SynthParams:
    """What identifies a generated dataset (stored in ``meta.json``)."""

    videos: int = 2000  # training videos; val and test sizes follow from the shapes and colours
    frames: int = 16
    size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name, low in (("videos", 2), ("frames", 2), ("size", 16), ("seed", 0)):
            if getattr(self, name) < low:
                raise ArgumentError(f"synthetic data: --{name} must be at least {low}, got {getattr(self, name)}")
        if self.size % 2:
            raise ArgumentError(f"synthetic data: --size must be even (H.264 uses 4:2:0 chroma), got {self.size}")


# ----------------------------------------------------------------------------- rendering


def _trajectory(pair: tuple[str, str], size: int, frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame shape parameters ``{x, y, radius, alpha, angle, mark}`` (each ``[T]``) of a pair's
    first motion, in pixels / radians (``mark``: 1 where the shape carries its dot); the pair's
    second motion is the same arrays reversed.

    A rotating shape turns clockwise like a clock hand through twelve o'clock, about a pivot
    ``ROTATION_ARM * size`` below it, by ``ROTATION_DEGREES``: its centre moves along an arc (12-13
    px on the demo's 32-px frames, through more than one of its 8-px patches) and it spins about
    itself at the same rate, its dot facing away from the pivot.
    """
    t = np.linspace(0.0, 1.0, frames)
    radius = rng.uniform(0.13, 0.18) * size
    first = pair[0]
    arm = 0.0
    if first == "rotate_cw":
        radius, arm = radius * ROTATION_SCALE, ROTATION_ARM * size
    margin = arm + 1.35 * radius
    travel = rng.uniform(0.35, 0.5) * size
    x0, y0 = rng.uniform(margin, size - margin, 2)
    params = {
        "x": np.full(frames, x0),
        "y": np.full(frames, y0),
        "radius": np.full(frames, radius),
        "alpha": np.ones(frames),
        "angle": np.full(frames, rng.uniform(0, np.pi / 2)),
        "mark": np.zeros(frames),
    }
    if first in ("left", "up"):
        axis = "x" if first == "left" else "y"
        start = rng.uniform(margin + travel, size - margin)  # moves towards smaller x / y
        params[axis] = start - travel * t
    elif first == "grow":
        params["radius"] = radius * (0.45 + 0.85 * t)
    elif first == "fade_in":
        params["alpha"] = 0.05 + 0.95 * t
    elif first == "rotate_cw":  # image y points down, so a growing angle turns clockwise on screen
        turn = np.deg2rad(rng.uniform(*ROTATION_DEGREES))
        start = -turn / 2 + np.deg2rad(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER))  # centred on straight up
        angle = start + turn * t  # clockwise from straight up
        params["x"], params["y"] = x0 + arm * np.sin(angle), y0 - arm * np.cos(angle)  # (x0, y0): the pivot
        params["angle"], params["mark"] = angle, np.ones(frames)
    else:
        raise ValueError(f"unknown motion pair {pair}")
    return params


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) of ``shape`` with size ``r [T, 1, 1]`` at the
    shape-frame coordinates ``u, v [T, H, W]``."""
    if shape == "circle":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    if shape == "triangle":  # pointing up; edge normals at 90, 210 and 330 degrees, inradius r / 2
        normals = np.deg2rad(np.array([90.0, 210.0, 330.0]))[:, None, None, None]
        return (np.cos(normals) * u + np.sin(normals) * v).max(axis=0) - 0.6 * r
    if shape == "cross":
        arm, half = r, 0.33 * r
        horizontal = np.maximum(np.abs(u) - arm, np.abs(v) - half)
        vertical = np.maximum(np.abs(u) - half, np.abs(v) - arm)
        return np.minimum(horizontal, vertical)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _mark_sdf(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance of a rotating shape's dot: a disc of radius ``MARK_RADIUS * r`` at
    ``MARK_OFFSET * r`` from the centre along the shape's up axis (-v: its top, the triangle's
    apex, the cross's upper arm; it spills a little over the triangle's and the cross's edges).
    Same arguments as ``_shape_sdf``."""
    return np.hypot(u, v + MARK_OFFSET * r) - MARK_RADIUS * r


def shape_coverage(shape: str, layout: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage in 0..1 of the shape and of its dot, each ``[T, H, W]``, of a layout
    from ``_trajectory`` on a ``size``-pixel square frame; opacity (``alpha``) not applied."""
    traj = {k: v[:, None, None] for k, v in layout.items()}  # [T, 1, 1]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres [H, W]
    dx, dy = xx[None] - traj["x"], yy[None] - traj["y"]  # [T, H, W]
    cos, sin = np.cos(traj["angle"]), np.sin(traj["angle"])
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate the image into the shape's frame
    body = np.clip(0.5 - _shape_sdf(shape, u, v, traj["radius"]), 0.0, 1.0)
    dot = np.clip(0.5 - _mark_sdf(u, v, traj["radius"]), 0.0, 1.0) * traj["mark"]
    return body, dot


def paint(frames: np.ndarray, color: str, body: np.ndarray, dot: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Float frames ``[T, H, W, 3]`` with a shape of ``color`` composited over them: its
    ``shape_coverage`` (``body``, ``dot``: ``[T, H, W]``) at opacity ``alpha`` ``[T]``."""
    a = alpha[:, None, None, None]
    frames = frames * (1 - a * body[..., None]) + np.array(COLORS[color]) * (a * body[..., None])
    return frames * (1 - a * dot[..., None]) + np.array(MARK_COLOR) * (a * dot[..., None])


def _background(size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour texture plus per-frame noise: float ``[T, H, W, 3]`` in 0..255."""
    cells = int(rng.integers(3, 7))
    coarse = rng.normal(0.0, 1.0, (cells, cells, 3))
    # Bilinear upsampling as two interpolation matrices [H, cells].
    interp = np.stack(
        [np.interp(np.linspace(0, cells - 1, size), np.arange(cells), np.eye(cells)[k]) for k in range(cells)], axis=1
    )
    texture = np.einsum("hi,ijc,wj->hwc", interp, coarse, interp)
    base = rng.uniform(50, 120) + rng.uniform(-15, 15, 3)
    noise = rng.normal(0.0, 4.0, (frames, size, size, 3))
    return base + rng.uniform(12, 28) * texture + noise


def render_clip(
    color: str, shape: str, pair: tuple[str, str], params: SynthParams, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render the first motion of ``pair`` for one appearance: (uint8 frames ``[T, H, W, 3]``, the
    shape's per-frame ``{x, y, radius, alpha, angle, mark}``, each ``[T]``, pixels / radians).

    The second motion of the pair is both reversed along time: ``frames[::-1]``, ``v[::-1]``.
    """
    size, frames = params.size, params.frames
    layout = _trajectory(pair, size, frames, rng)
    background = _background(size, frames, rng)
    frames_rgb = paint(background, color, *shape_coverage(shape, layout, size), layout["alpha"])
    return np.clip(np.rint(frames_rgb), 0, 255).astype(np.uint8), layout


def describe_frame(color: str, shape: str, layout: dict[str, np.ndarray], t: int, size: int) -> str:
    """What frame ``t`` shows, never how it moves: "big faint red circle at the top left", and for
    a shape with a dot where the dot points: "big red square in the middle, dot up right".

    Where: thirds of the frame (left / centre / right, top / middle / bottom); size: "small" below
    0.11 of the frame, "big" above 0.2 (shapes are 0.13-0.18 unless growing, shrinking or
    rotating); "faint" below 60% opacity; the dot: ``MARK_DIRECTIONS``, the nearest of eight.
    These are the static facts a CLIP knows about an image, and what a temporal model needs to
    read motion off the frames.
    """
    x, y = layout["x"][t] / size, layout["y"][t] / size
    col = "left" if x < 0.4 else "right" if x > 0.6 else "centre"
    row = "top" if y < 0.4 else "bottom" if y > 0.6 else "middle"
    where = {
        ("centre", "middle"): "in the middle",
        ("left", "middle"): "on the left",
        ("right", "middle"): "on the right",
    }.get((col, row), f"at the {row}" if col == "centre" else f"at the {row} {col}")
    radius = layout["radius"][t] / size
    words = ["small"] if radius < 0.11 else ["big"] if radius > 0.2 else []
    words += ["faint"] if layout["alpha"][t] < 0.6 else []
    text = " ".join([*words, color, shape, where])
    if "mark" in layout and layout["mark"][t]:  # the dot: straight up at angle 0, turning clockwise
        text += ", dot " + MARK_DIRECTIONS[int(np.rint(np.degrees(layout["angle"][t]) / 45.0)) % 8]
    return text


def visible_frames(layout: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the frames in which the shape can be seen (for image-text pretraining): all of
    them, except the nearly transparent start of a fade in (end of a fade out)."""
    return np.flatnonzero(layout["alpha"] >= 0.3)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS, options: dict = X264_OPTIONS) -> None:
    """Encode uint8 ``[T, H, W, 3]`` frames as H.264 (yuv420p) in an MP4 file with x264 ``options``.

    x264 runs single-threaded with fixed options and without macroblock-tree rate control
    (which made about one file in three differ between runs), so the same frames give the
    same bytes.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# ----------------------------------------------------------------------------- dataset layout


@dataclass(frozen=True)
class Clip:
    """One rendered clip and the video(s) made from it: ``motions`` holds the pair's first
    motion (frames forwards), its second (backwards), or both (two videos, test distractors)."""

    color: str
    shape: str
    pair: tuple[str, str]
    motions: tuple[str, ...]


def plan_split(split: str, params: SynthParams) -> list[Clip]:
    """What a split contains, decided from the seed alone.

    train: ``params.videos`` videos, appearance and motion drawn at random;
    images: every appearance once (24 videos), for the validation stills of image-text pretraining;
    val and test: every colour with every motion pair, both directions (60 videos each), the
    shape of each (colour, pair) drawn at random among the shapes that can show the pair. A
    caption's colour and motion single out its video; the distractor that shares its whole
    appearance is the same clip played backwards, and the other motions of its colour follow.
    """
    rng = np.random.default_rng([params.seed, (*SPLITS, IMAGES).index(split), 0])
    if split == IMAGES:  # every appearance once, in a random motion of a random pair
        pairs = [valid_pairs(shape)[rng.integers(len(valid_pairs(shape)))] for _, shape in appearances()]
        return [
            Clip(color, shape, pair, (pair[rng.integers(2)],))
            for (color, shape), pair in zip(appearances(), pairs, strict=True)
        ]
    if split == "train":
        apps = appearances()
        clips = []
        for _ in range(params.videos):
            color, shape = apps[rng.integers(len(apps))]
            pairs = valid_pairs(shape)
            pair = pairs[rng.integers(len(pairs))]
            clips.append(Clip(color, shape, pair, (pair[rng.integers(2)],)))
        return clips
    clips = []
    for color in COLORS:
        for pair in MOTION_PAIRS:
            shapes = [s for s in SHAPES if pair in valid_pairs(s)]
            clips.append(Clip(color, shapes[rng.integers(len(shapes))], pair, pair))
    return clips


def caption(color: str, shape: str, motion: str, template: str, phrase: int) -> str:
    return template.format(app=f"{color} {shape}", motion=MOTION_PHRASES[motion][phrase])


def _stills(
    clip: Clip,
    video: str,
    layout: dict[str, np.ndarray],
    count: int,
    templates: Sequence[str],
    size: int,
    rng: np.random.Generator,
) -> list[dict]:
    """``count`` distinct visible frames of one video as image-text records, each captioned with
    what it shows (``describe_frame``) in a random template."""
    visible = visible_frames(layout)
    records = []
    for t in np.sort(rng.choice(visible, min(count, len(visible)), replace=False)).tolist():
        app = describe_frame(clip.color, clip.shape, layout, t, size)
        records.append(
            {
                "video": video,
                "caption": templates[rng.integers(len(templates))].format(app=app),
                "start": t / FPS,
                "end": (t + 1) / FPS,
            }
        )
    return records


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def generate(
    out_dir: str | Path, params: SynthParams = SynthParams(), overwrite: bool = False, progress: bool = True
) -> dict:
    """Render the benchmark into ``out_dir`` (or reuse it) and return its ``meta.json`` dict."""
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if meta_path.exists() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") == FORMAT_VERSION and meta.get("params") == asdict(params):
            return meta
        raise OutputExistsError(
            f"{out} already holds a synthetic dataset made with {meta.get('params')}, not {asdict(params)}; "
            "choose another folder or pass --overwrite to render it again"
        )
    if meta_path.exists():
        meta_path.unlink()  # a half-rewritten folder must not look complete
        shutil.rmtree(out / "videos", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(CLASS_NAMES[m] + "\n" for m in MOTIONS))

    plans = {split: plan_split(split, params) for split in (*SPLITS, IMAGES)}
    total = sum(len(c.motions) for clips in plans.values() for c in clips)
    bar = tqdm(total=total, desc=f"rendering synthetic videos into {out}", unit="video", disable=not progress)
    counts, images = {}, {"train": [], "val": []}
    for split, clips in plans.items():
        retrieval, recognition, index = [], [], 0
        for i, clip in enumerate(clips):
            rng = np.random.default_rng([params.seed, (*SPLITS, IMAGES).index(split), 1, i])
            forward, layout = render_clip(clip.color, clip.shape, clip.pair, params, rng)
            for motion in clip.motions:
                video = f"videos/{split}/{index:05d}.mp4"
                backwards = motion != clip.pair[0]
                write_video(out / video, forward[::-1] if backwards else forward, options=X264_TWIN_OPTIONS)
                index += 1
                bar.update()
                shown = {k: v[::-1] for k, v in layout.items()} if backwards else layout
                if split == IMAGES:  # validation stills: one fixed frame each, one template
                    images["val"] += _stills(clip, video, shown, 1, IMAGE_TEMPLATES[:1], params.size, rng)
                    continue
                if split == "train":
                    images["train"] += _stills(clip, video, shown, STILLS_PER_VIDEO, IMAGE_TEMPLATES, params.size, rng)
                    captions = [
                        caption(clip.color, clip.shape, motion, t, int(rng.integers(3))) for t in TRAIN_TEMPLATES
                    ]
                else:
                    template = TEST_TEMPLATES[index % len(TEST_TEMPLATES)]
                    captions = caption(clip.color, clip.shape, motion, template, int(rng.integers(2)))
                retrieval.append({"video": video, "caption": captions, "label": MOTIONS.index(motion)})
                recognition.append({"video": video, "label": MOTIONS.index(motion)})
        if split != IMAGES:
            _write_jsonl(out / f"{split}.jsonl", retrieval)
            _write_jsonl(out / f"recognition_{split}.jsonl", recognition)
            counts[split] = len(retrieval)
    for split, records in images.items():
        _write_jsonl(out / f"images_{split}.jsonl", records)
    counts["images_val"] = len(images["val"])
    bar.close()

    meta = {
        "generator": "mugstan.data.synthetic",
        "format_version": FORMAT_VERSION,
        "params": asdict(params),
        "fps": FPS,
        "counts": counts,
        "classes": [CLASS_NAMES[m] for m in MOTIONS],
        "motion_pairs": [[CLASS_NAMES[a], CLASS_NAMES[b]] for a, b in MOTION_PAIRS],
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks the folder complete
    return meta


# ----------------------------------------------------------------------------- CLI: mugstan data synth


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SynthParams()
    parser.add_argument("out_dir", help="folder to write the dataset into (reused when its meta.json matches)")
    parser.add_argument(
        "--videos", type=int, default=defaults.videos, help="number of training videos (default: %(default)s)"
    )
    parser.add_argument("--frames", type=int, default=defaults.frames, help="frames per video (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=defaults.size, help="frame width and height in pixels (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="render again even if the folder holds a dataset")


def main(args: argparse.Namespace) -> int:
    params = SynthParams(videos=args.videos, frames=args.frames, size=args.size, seed=args.seed)
    meta = generate(args.out_dir, params, overwrite=args.overwrite)
    counts = ", ".join(f"{split} {n}" for split, n in meta["counts"].items())
    print(f"synthetic benchmark in {args.out_dir}: {counts} videos, {len(meta['classes'])} motion classes")
    return 0
