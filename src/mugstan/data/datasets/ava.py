"""AVA v2.2 (spatio-temporal action detection): the files as distributed -> keyframe clips with boxes.

Files (``data.*`` keys), as the AVA v2.2 release and mmaction2's AVA recipes name them:

- ``data.{train,val,test}_ann``: ``ava_{train,val}_v2.2.csv``, rows without a header
  ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` (box corners normalised to 0-1;
  a person doing several actions has one row per action);
- ``data.extra.label_map``: ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``, blocks
  ``label { name: "..." label_id: N }`` (or ``item { name: "..." id: N }``): the evaluated actions
  (60). The model has one output per action id 1..``data.ava.num_actions`` (80, all AVA actions,
  as mmaction2's ``num_classes=81`` trains them) and learns from every row of those; with
  ``num_actions: 0`` it has one output per label-map action and rows of other actions are ignored;
- ``data.extra.{train,val,test}_exclusions`` (optional): ``ava_{train,val}_excluded_timestamps_v2.2.csv``,
  rows ``video_id, timestamp``: keyframes left out of training and of the evaluation;
- ``data.extra.{val,test}_proposals`` (optional): person boxes from a detector, as CSV rows
  ``video_id, timestamp, x1, y1, x2, y2, score`` or JSON ``{"video_id,timestamp": [[x1, y1, x2, y2,
  score], ...]}``. The official proposals are Python pickles; mugstan never unpickles a file (a
  pickle can run code): convert one you trust yourself (docs/detection.md shows the lines).
  As in mmaction2, a keyframe's proposals scoring at least ``data.ava.proposal_score`` (0.9) are
  classified, its best-scored ones when none reaches it, and the whole frame when it has none.
  Without a proposals file the evaluation classifies the ground-truth boxes (labelled as such).
- ``data.root``: the videos, found by file stem (``<video_id>.mp4``, ``.mkv``, ...).

A keyframe clip is ``data.num_frames`` frames ``data.ava.frame_interval`` source frames apart
(``data.ava.source_fps``, 30 for AVA) centred on the keyframe, frame ``T // 2`` being the keyframe
(mmaction2's ``SampleAVAFrames``); training moves each frame by a random -interval/2 ..
interval/2 - 1 source frames, as ``SampleAVAFrames`` does. The keyframe of timestamp ``ts`` is at
second ``ts - data.ava.timestamp_start`` of the file.
Frames are resized to ``data.image_size`` squared (whole frame, no crop: the boxes are normalised,
so they stay valid); training flips horizontally when ``data.hflip``.

Training items are the keyframes with ground truth (each person box once, its actions multi-hot);
evaluation items are every annotated keyframe that is not excluded, with the proposals (or the
ground-truth boxes) to classify.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from mugstan.config import ConfigError, DataConfig
from mugstan.data.datasets.base import Annotations, Clip, _Base
from mugstan.data.datasets.formats import _ann_file, _Finder
from mugstan.data.transforms import normalize
from mugstan.data.video import read_frames_at
from mugstan.errors import AnnotationError, MissingFileError
from mugstan.metrics import BoxSet

Key = tuple[str, int]  # (video_id, timestamp)
COORD_SLACK = 0.01  # box coordinates this far outside [0, 1] are rounding, accepted as written


# ---- the files ----------------------------------------------------------------------------------
def read_label_map(path) -> tuple[list[int], list[str]]:
    """A label map pbtxt -> (class ids, names) in file order. Accepts ``label { name, label_id }``
    (the v2.2 release) and ``item { name, id }`` blocks."""
    path = Path(path)
    text = path.read_text()
    ids, names = [], []
    for match in re.finditer(r"(?:label|item)\s*\{(.*?)\}", text, flags=re.S):
        body = match.group(1)
        line = text.count("\n", 0, match.start()) + 1
        name = re.search(r'\bname:\s*"([^"]*)"', body)
        number = re.search(r"\b(?:label_id|id):\s*(-?\d+)", body)
        if not name or not number:
            raise AnnotationError(
                f"{path}:{line}: a label block needs name: \"...\" and label_id: N (or id: N), got {body.strip()!r}"
            )
        if int(number.group(1)) in ids:
            raise AnnotationError(f"{path}:{line}: class id {number.group(1)} appears twice")
        ids.append(int(number.group(1)))
        names.append(name.group(1))
    if not ids:
        raise AnnotationError(
            f"{path}: no label blocks; expected the AVA label map (label {{ name: \"...\" label_id: N }})"
        )
    return ids, names


def _rows(path: Path, what: str):
    """Non-empty CSV rows with their line numbers."""
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if row and any(cell.strip() for cell in row):
                yield n, [cell.strip() for cell in row]


def _number(path: Path, n: int, row: list, column: int, name: str, kind=float):
    try:
        return kind(row[column])
    except (ValueError, IndexError):
        raise AnnotationError(
            f"{path}:{n}: column {column + 1} ({name}) must be a number, got "
            f"{row[column] if column < len(row) else 'nothing'!r}"
        ) from None


def read_ava_csv(path, scores: bool = False) -> tuple[BoxSet, np.ndarray]:
    """AVA rows ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` (annotations) or
    ``..., action_id, score`` (results, ``scores=True``) -> (BoxSet, the last column [N]).

    As the official reader: a result row without its score (7 columns) has score 1.0, and the
    coordinates are kept as written (a result box with x2 <= x1 or y2 <= y1 is read, and dropped by
    the evaluation). Coordinates up to ``COORD_SLACK`` outside [0, 1] (rounding) are accepted; an
    annotation box must have x1 <= x2 and y1 <= y2.
    """
    path = Path(path)
    columns, layout = (
        ((7, 8), "video_id,timestamp,x1,y1,x2,y2,action_id[,score]")
        if scores
        else ((8,), "video_id,timestamp,x1,y1,x2,y2,action_id,person_id")
    )
    keys, boxes, labels, extra = [], [], [], []
    for n, row in _rows(path, "AVA"):
        if len(row) not in columns:
            raise AnnotationError(
                f"{path}:{n}: expected {' or '.join(map(str, columns))} columns {layout}, got {len(row)}"
            )
        box = [_number(path, n, row, c, name) for c, name in zip(range(2, 6), ("x1", "y1", "x2", "y2"), strict=True)]
        inside = all(-COORD_SLACK <= v <= 1.0 + COORD_SLACK for v in box)
        if not inside or (not scores and (box[0] > box[2] or box[1] > box[3])):
            raise AnnotationError(
                f"{path}:{n}: box {box} must be normalised corners x1, y1, x2, y2 in [0, 1]"
                f"{'' if scores else ' with x1 <= x2 and y1 <= y2'} (divide pixel coordinates by the frame size)"
            )
        keys.append((row[0], _number(path, n, row, 1, "timestamp", int)))
        boxes.append(box)
        labels.append(_number(path, n, row, 6, "action_id", int))
        if scores:
            extra.append(_number(path, n, row, 7, "score") if len(row) == 8 else 1.0)
        else:
            extra.append(_number(path, n, row, 7, "person_id", int))
    box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    last_column = np.asarray(extra, dtype=np.float64 if scores else np.int64)
    return BoxSet(keys, box_array, np.asarray(labels, dtype=np.int64), last_column if scores else None), last_column


def read_exclusions(path) -> set[Key]:
    """``video_id, timestamp`` rows -> the set of excluded keyframes."""
    path = Path(path)
    out = set()
    for n, row in _rows(path, "exclusions"):
        if len(row) != 2:
            raise AnnotationError(f"{path}:{n}: expected 2 columns video_id,timestamp, got {len(row)}")
        out.add((row[0], _number(path, n, row, 1, "timestamp", int)))
    return out


def read_proposals(path) -> dict[Key, np.ndarray]:
    """Person proposals -> {(video_id, timestamp): float [N, 5] x1, y1, x2, y2, score}.

    CSV rows ``video_id, timestamp, x1, y1, x2, y2[, score]`` or JSON ``{"video_id,timestamp":
    [[x1, y1, x2, y2[, score]], ...]}``; a proposal without a score has score 1.0 (mmaction2 takes
    [N, 4] proposals whole). Pickles are refused (see the module docstring).
    """
    path = Path(path)
    if path.suffix in (".pkl", ".pickle"):
        raise AnnotationError(
            f"{path}: mugstan does not unpickle files (a pickle can run code); convert the proposals of a "
            "source you trust to CSV or JSON as docs/detection.md shows, and name that file instead"
        )
    groups: dict[Key, list] = {}
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: invalid JSON ({err})") from None
        if not isinstance(data, dict):
            raise AnnotationError(f"{path}: expected {{\"video_id,timestamp\": [[x1, y1, x2, y2, score], ...]}}")
        for key, boxes in data.items():
            video, _, ts = key.rpartition(",")
            if not video or not ts.strip().lstrip("-").isdigit():
                raise AnnotationError(f"{path}: key {key!r} must be \"video_id,timestamp\" (e.g. \"1j20qq1JyX4,0902\")")
            try:
                array = np.asarray(boxes, dtype=np.float64)
                ok = array.size == 0 or (array.ndim == 2 and array.shape[1] in (4, 5))
            except (TypeError, ValueError):  # ragged lists, strings
                ok = False
            if not ok:
                raise AnnotationError(
                    f"{path}: entry {key!r} must be a list of [x1, y1, x2, y2, score] (or [x1, y1, x2, y2]), "
                    f"got {json.dumps(boxes)[:80]}"
                )
            if array.size and array.shape[1] == 4:
                array = np.concatenate([array, np.ones((len(array), 1))], axis=1)
            groups[(video, int(ts))] = list(array.reshape(-1, 5))
    else:
        for n, row in _rows(path, "proposals"):
            if len(row) not in (6, 7):
                raise AnnotationError(
                    f"{path}:{n}: expected 7 columns video_id,timestamp,x1,y1,x2,y2,score (or 6, without the "
                    f"score), got {len(row)}"
                )
            names = ("x1", "y1", "x2", "y2", "score")  # a 6-column row has no score: zip stops at its last column
            values = [_number(path, n, row, c, name) for c, name in zip(range(2, len(row)), names, strict=False)]
            groups.setdefault((row[0], _number(path, n, row, 1, "timestamp", int)), []).append(
                values + [1.0] * (7 - len(row))
            )
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in groups.items()}


def select_proposals(found: Optional[np.ndarray], threshold: float) -> np.ndarray:
    """The boxes to classify on a keyframe, as mmaction2's ``AVADataset`` picks them: the proposals
    [N, 5] scoring at least ``threshold``, or, when none does, those at the best score; the whole
    frame when the keyframe has none. -> float [M, 4] corners clipped to [0, 1]."""
    if found is None or len(found) == 0:
        return np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    found = found[found[:, 4] >= min(threshold, found[:, 4].max())]
    return np.clip(found[:, :4], 0.0, 1.0).astype(np.float32)


# ---- annotations --------------------------------------------------------------------------------
@dataclass
class DetectionAnnotations(Annotations):
    """One split of an AVA-format dataset: one clip per keyframe.

    keyframes[i]: (video_id, timestamp) of clips[i]; boxes[i]: float [N_i, 4] the boxes to
    classify (training: ground-truth persons; evaluation: proposals or ground truth);
    box_labels[i]: float [N_i, C] multi-hot over ``class_ids`` (zeros for proposals); class_ids:
    the action id of each of the model's C outputs (``class_names`` their names); evaluated_ids:
    the label map's actions, those the evaluation scores; gt: every ground-truth row of the
    evaluated actions on the split's kept keyframes; excluded: the excluded keyframes; box_source:
    "ground truth" or "proposals".
    """

    keyframes: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    box_labels: list = field(default_factory=list)
    class_ids: list = field(default_factory=list)
    evaluated_ids: list = field(default_factory=list)
    gt: Optional[BoxSet] = None
    excluded: set = field(default_factory=set)
    box_source: str = "ground truth"
    times: list = field(default_factory=list)  # second of the keyframe in its video file
    dropped_rows: int = 0  # annotation rows of actions the model has no output for


def _extra_file(cfg: DataConfig, key: str) -> Optional[Path]:
    value = cfg.extra.get(key)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise MissingFileError(f"data.extra.{key}: {path} does not exist")
    return path


def ava(cfg: DataConfig, split: str) -> DetectionAnnotations:
    """The AVA adapter (``data.dataset: ava``): see the module docstring."""
    path = _ann_file(cfg, split)
    label_map = _extra_file(cfg, "label_map")
    if label_map is None:
        raise ConfigError(
            "data.extra.label_map is not set: give the AVA label map, e.g. "
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
        )
    evaluated, evaluated_names = read_label_map(label_map)
    n = cfg.ava.num_actions
    if n and not all(1 <= c <= n for c in evaluated):
        raise AnnotationError(
            f"{label_map}: action ids {[c for c in evaluated if not 1 <= c <= n]} are outside 1..{n} "
            f"(data.ava.num_actions={n}); set data.ava.num_actions to the largest action id, or 0 to "
            "train on the label map's actions only"
        )
    named = dict(zip(evaluated, evaluated_names, strict=True))
    class_ids = list(range(1, n + 1)) if n else evaluated
    names = [named.get(c, f"action {c}") for c in class_ids]
    column = {c: k for k, c in enumerate(class_ids)}
    rows, _ = read_ava_csv(path)
    exclusions = _extra_file(cfg, f"{split}_exclusions")
    excluded = read_exclusions(exclusions) if exclusions else set()
    not_excluded = np.array([k not in excluded for k in rows.keys], dtype=bool)
    scored = np.isin(rows.labels, evaluated) & not_excluded
    gt = BoxSet([k for k, ok in zip(rows.keys, scored, strict=True) if ok], rows.boxes[scored], rows.labels[scored])

    # training targets: one entry per person box of a keyframe, its actions multi-hot
    known = np.isin(rows.labels, class_ids)
    frames: dict[Key, dict] = {}
    for i in np.flatnonzero(known & not_excluded):
        people = frames.setdefault(rows.keys[i], {})
        box = tuple(np.round(np.clip(rows.boxes[i], 0.0, 1.0), 6))
        people.setdefault(box, np.zeros(len(class_ids), dtype=np.float32))[column[int(rows.labels[i])]] = 1.0
    # evaluation covers every annotated keyframe that is not excluded (including those whose rows
    # are all of other actions: their detections are false positives there, as in the official code)
    if split != "train":
        for key in rows.keys:
            if key not in excluded:
                frames.setdefault(key, {})
    keyframes = sorted(frames)
    proposals_file = None if split == "train" else _extra_file(cfg, f"{split}_proposals")
    proposals = read_proposals(proposals_file) if proposals_file else None
    boxes, labels = [], []
    for key in keyframes:
        if proposals is None:
            people = frames[key]
            boxes.append(np.asarray(list(people), dtype=np.float32).reshape(-1, 4))
            labels.append(np.stack(list(people.values())) if people else np.zeros((0, len(class_ids)), np.float32))
        else:
            boxes.append(select_proposals(proposals.get(key), cfg.ava.proposal_score))
            labels.append(np.zeros((len(boxes[-1]), len(class_ids)), np.float32))
    finder = _Finder(cfg.root)
    videos = {v: finder(v) for v in sorted({v for v, _ in keyframes})}
    times = [ts - cfg.ava.timestamp_start for _, ts in keyframes]
    clips = [Clip(videos[v], t, t) for (v, _), t in zip(keyframes, times, strict=True)]
    if not clips:
        raise AnnotationError(
            f"{path}: no keyframes left (every row excluded or of an action the model has no output for)"
        )
    return DetectionAnnotations(
        clips,
        class_names=names,
        source=str(path),
        keyframes=keyframes,
        boxes=boxes,
        box_labels=labels,
        class_ids=class_ids,
        evaluated_ids=evaluated,
        gt=gt,
        excluded=excluded,
        box_source="ground truth" if proposals is None else "proposals",
        times=times,
        dropped_rows=int((~known).sum()),
    )


# ---- the torch dataset --------------------------------------------------------------------------
def keyframe_times(
    center: float, num_frames: int, interval: int, source_fps: float, rng: Optional[np.random.Generator] = None
) -> np.ndarray:
    """Seconds of the ``num_frames`` frames of a keyframe clip (frame ``T // 2`` at ``center``),
    ``interval`` source frames apart; with ``rng`` each frame moves by its own random offset of
    ``floor(-interval / 2)`` .. ``ceil(interval / 2) - 1`` source frames (-2..1 for 4; training), as
    mmaction2's ``SampleAVAFrames`` draws ``randint(-interval // 2, (interval + 1) // 2)``."""
    steps = (np.arange(num_frames) - num_frames // 2) * interval
    if rng is not None:
        steps = steps + rng.integers(-interval // 2, (interval + 1) // 2, num_frames)
    return center + steps / source_fps


class DetectionDataset(_Base):
    """One item per keyframe: ``frames`` float [T, 3, S, S], ``frame_mask`` bool [T], ``boxes`` float
    [N, 4] (0-1 corners), ``box_labels`` float [N, C] (multi-hot), ``index``. ``collate``
    concatenates the boxes of a batch and adds ``box_batch_index`` [sum N]."""

    def __len__(self) -> int:
        return len(self.ann.clips)

    def get(self, index: int) -> dict:
        cfg, ann = self.cfg, self.ann
        num = cfg.num_frames if self.train else (cfg.test_num_frames or cfg.num_frames)
        rng = np.random.default_rng([self.reader.seed, self.reader.epoch, index]) if self.train else None
        times = keyframe_times(ann.times[index], num, cfg.ava.frame_interval, cfg.ava.source_fps, rng)
        frames = read_frames_at(ann.clips[index].path, times, cfg.resize_short or cfg.image_size)
        frames = TF.resize(
            frames, [cfg.image_size, cfg.image_size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
        )
        boxes = torch.from_numpy(ann.boxes[index]).clone()
        if self.train and cfg.hflip and rng.random() < 0.5:
            frames = frames.flip(-1)
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        return {
            "frames": normalize(frames),
            "frame_mask": torch.ones(num, dtype=torch.bool),
            "boxes": boxes,
            "box_labels": torch.from_numpy(ann.box_labels[index]),
            "index": index,
        }
