"""The synthetic detection set: the temporal benchmark's shapes, several per video, in AVA formats.

Videos with several shapes, each doing its own motion over the whole video; the action of a shape
is its motion, its box at a keyframe the tight box of its pixels there. Written in the AVA v2.2
formats (``mugstan.data.datasets.ava``), so detection runs through the same adapter as AVA:

    detection/meta.json                 parameters, counts, classes
    detection/label_map.pbtxt           label { name: "moving left" label_id: 1 } ... (10 motions)
    detection/{train,val,test}.csv      video_id,timestamp,x1,y1,x2,y2,action_id,person_id (0-1 boxes)
    detection/{val,test}_proposals.csv  video_id,timestamp,x1,y1,x2,y2,score: every box jittered
                                        (score 0.9-1) plus one stray box (score below 0.9, dropped)
    detection/videos/{split}/det_{split}_NNNNN.mp4

Keyframes are at seconds 1 .. K of a video of K + 1 seconds (FPS frames a second, timestamps
start at 0), symmetric about the middle of the video. Motions are the time-reversible pairs of
the retrieval benchmark: the second of a pair is the first one's trajectory played backwards,
and with keyframe clips centred on their keyframe (an odd number of frames) the frames a clip
shows, taken as a set, are distributed alike for both motions of a pair over the keyframes: a
model that pools frames without their order can tell the axis of a motion, not its direction.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mugstan.data.synthetic import (
    CLASS_NAMES,
    COLORS,
    FPS,
    MOTION_PAIRS,
    MOTIONS,
    SHAPES,
    SPLITS,
    _background,
    _trajectory,
    paint,
    shape_coverage,
    valid_pairs,
    write_video,
)
from mugstan.errors import ArgumentError

DETECTION_FORMAT_VERSION = 2  # 2: rotating shapes are bigger and carry a dot (the retrieval format 5)
DETECTION_DIR = "detection"


@dataclass(frozen=True)
class DetectionParams:
    """What identifies a generated detection set (stored in ``detection/meta.json``)."""

    videos: int = 300  # training videos; val and test have test_videos each
    test_videos: int = 60
    shapes: int = 2  # shapes per video (each a "person" with one action)
    keyframes: int = 2  # annotated keyframes per video, at seconds 1..keyframes
    size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name, low in (("videos", 1), ("test_videos", 1), ("shapes", 1), ("keyframes", 1), ("size", 16)):
            if getattr(self, name) < low:
                raise ArgumentError(
                    f"synthetic detection data: {name} must be at least {low}, got {getattr(self, name)}"
                )
        if self.size % 2:
            raise ArgumentError(
                f"synthetic detection data: size must be even (H.264 uses 4:2:0 chroma), got {self.size}"
            )

    @property
    def frames(self) -> int:
        return (self.keyframes + 1) * FPS + 1


def plan_detection_video(
    split: str, index: int, params: DetectionParams
) -> list[tuple[str, str, tuple[str, str], str]]:
    """The shapes of one video: [(colour, shape, motion pair, motion)], distinct colours, from the seed."""
    rng = np.random.default_rng([params.seed, SPLITS.index(split), 2, index])
    colors = rng.choice(list(COLORS), params.shapes, replace=params.shapes > len(COLORS))
    out = []
    for color in colors:
        shape = SHAPES[rng.integers(len(SHAPES))]
        pairs = valid_pairs(shape)
        pair = pairs[rng.integers(len(pairs))]
        out.append((str(color), shape, pair, pair[rng.integers(2)]))
    return out


def _first(m: np.ndarray) -> np.ndarray:
    """Index of the first True of each row of ``m`` [F, N]."""
    return m.argmax(1)


def _last(m: np.ndarray) -> np.ndarray:
    """Index of the last True of each row of ``m`` [F, N]."""
    return m.shape[1] - 1 - m[:, ::-1].argmax(1)


def render_detection_video(
    plan: list, params: DetectionParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shapes composited in plan order over one background: (uint8 frames [F, H, W, 3], boxes
    [S, F, 4] x1, y1, x2, y2 in 0-1: the tight box of each shape's pixels, whatever its opacity)."""
    size, frames = params.size, params.frames
    video = _background(size, frames, rng)
    boxes = np.zeros((len(plan), frames, 4))
    for s, (color, shape, pair, motion) in enumerate(plan):
        layout = _trajectory(pair, size, frames, rng)
        if motion != pair[0]:
            layout = {k: v[::-1] for k, v in layout.items()}
        body, dot = shape_coverage(shape, layout, size)  # [F, H, W] each
        video = paint(video, color, body, dot, layout["alpha"])
        inside = body > 0.5
        cols, rows = inside.any(1), inside.any(2)  # [F, W], [F, H]
        boxes[s] = np.stack([_first(cols), _first(rows), _last(cols) + 1, _last(rows) + 1], axis=1) / size
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), boxes


def _jitter(box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.clip(box + rng.uniform(-0.05, 0.05, 4) * np.array([w, h, w, h]), 0.0, 1.0)


def generate_detection(
    out_dir: str | Path, params: DetectionParams = DetectionParams(), overwrite: bool = False, progress: bool = True
) -> dict:
    """Render the detection set into ``out_dir/detection`` (or reuse it); returns its ``meta.json`` dict."""
    out = Path(out_dir) / DETECTION_DIR
    meta_path = out / "meta.json"
    if meta_path.exists() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") == DETECTION_FORMAT_VERSION and meta.get("params") == asdict(params):
            return meta
        raise FileExistsError(
            f"{out} already holds a synthetic detection set made with {meta.get('params')}, not "
            f"{asdict(params)}; choose another folder or pass overwrite=True"
        )
    if meta_path.exists():
        meta_path.unlink()
        shutil.rmtree(out / "videos", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_map.pbtxt").write_text(
        "".join(
            f'label {{\n  name: "{CLASS_NAMES[m]}"\n  label_id: {k + 1}\n  label_type: PERSON_MOVEMENT\n}}\n'
            for k, m in enumerate(MOTIONS)
        )
    )
    sizes = {"train": params.videos, "val": params.test_videos, "test": params.test_videos}
    bar = tqdm(
        total=sum(sizes.values()),
        desc=f"rendering synthetic detection videos into {out}",
        unit="video",
        disable=not progress,
    )
    counts = {}
    for split, n in sizes.items():
        rows, proposals = [], []
        for i in range(n):
            plan = plan_detection_video(split, i, params)
            rng = np.random.default_rng([params.seed, SPLITS.index(split), 3, i])
            frames, boxes = render_detection_video(plan, params, rng)
            video = f"det_{split}_{i:05d}"
            write_video(out / "videos" / split / f"{video}.mp4", frames)
            for ts in range(1, params.keyframes + 1):
                for person, (_, _, _, motion) in enumerate(plan):
                    box = boxes[person, ts * FPS]
                    rows.append(
                        f"{video},{ts:04d},{box[0]:.4f},{box[1]:.4f},{box[2]:.4f},{box[3]:.4f},"
                        f"{MOTIONS.index(motion) + 1},{person}\n"
                    )
                    jittered = _jitter(box, rng)
                    proposals.append(
                        f"{video},{ts:04d},{','.join(f'{v:.4f}' for v in jittered)},{rng.uniform(0.9, 1.0):.4f}\n"
                    )
                stray = np.sort(rng.uniform(0, 1, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]  # x1, y1, x2, y2
                proposals.append(
                    f"{video},{ts:04d},{','.join(f'{v:.4f}' for v in stray)},{rng.uniform(0.1, 0.85):.4f}\n"
                )
            bar.update()
        (out / f"{split}.csv").write_text("".join(rows))
        if split != "train":
            (out / f"{split}_proposals.csv").write_text("".join(proposals))
        counts[split] = {"videos": n, "keyframes": n * params.keyframes, "boxes": len(rows)}
    bar.close()
    meta = {
        "generator": "mugstan.data.synthetic_detection.generate_detection",
        "format_version": DETECTION_FORMAT_VERSION,
        "params": asdict(params),
        "fps": FPS,
        "frames": params.frames,
        "counts": counts,
        "classes": [CLASS_NAMES[m] for m in MOTIONS],
        "motion_pairs": [[CLASS_NAMES[a], CLASS_NAMES[b]] for a, b in MOTION_PAIRS],
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def detection_paths(data: Path) -> dict:
    """Config paths (``data.*``) of a detection stage on ``data/detection`` (from ``generate_detection``)."""
    d = (Path(data) / DETECTION_DIR if (Path(data) / DETECTION_DIR).is_dir() else Path(data)).absolute()
    return {
        "data.root": str(d / "videos"),
        "data.train_ann": str(d / "train.csv"),
        "data.val_ann": str(d / "val.csv"),
        "data.test_ann": str(d / "test.csv"),
        "data.extra": {
            "label_map": str(d / "label_map.pbtxt"),
            "val_proposals": str(d / "val_proposals.csv"),
            "test_proposals": str(d / "test_proposals.csv"),
        },
    }
