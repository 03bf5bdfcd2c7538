"""AVA v2.2 (spatio-temporal action detection): the files as distributed -> keyframe clips with boxes.

Files (``data.*`` keys), as the AVA v2.2 release and mmaction2's AVA recipes name them:

- ``data.{train,val,test}_ann``: ``ava_{train,val}_v2.2.csv``, rows without a header
  ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` (box corners normalised to 0-1;
  a person doing several actions has one row per action);
- ``data.extra.label_map``: ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``, blocks
  ``label { name: "..." label_id: N }`` (or ``item { name: "..." id: N }``); its 60 classes are the
  evaluated ones, rows of other actions are ignored (as the official evaluation ignores them);
- ``data.extra.{train,val,test}_exclusions`` (optional): ``ava_{train,val}_excluded_timestamps_v2.2.csv``,
  rows ``video_id, timestamp``: keyframes left out of training and of the evaluation;
- ``data.extra.{val,test}_proposals`` (optional): person boxes from a detector, as CSV rows
  ``video_id, timestamp, x1, y1, x2, y2, score`` or JSON ``{"video_id,timestamp": [[x1, y1, x2, y2,
  score], ...]}``. The official proposals are Python pickles; mugstan never unpickles a file (a
  pickle can run code): convert one you trust yourself (docs/detection.md shows the three lines).
  Proposals scoring below ``data.ava.proposal_score`` (0.9) are dropped. Without proposals the
  evaluation classifies the ground-truth boxes (labelled as such in the result).
- ``data.root``: the videos, found by file stem (``<video_id>.mp4``, ``.mkv``, ...).

A keyframe clip is ``data.num_frames`` frames ``data.ava.frame_interval`` source frames apart
(``data.ava.source_fps``, 30 for AVA) centred on the keyframe, frame ``T // 2`` being the keyframe
(mmaction2's ``SampleAVAFrames``); training adds a random offset below the interval to each
frame. The keyframe of timestamp ``ts`` is at second ``ts - data.ava.timestamp_start`` of the file.
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
            raise AnnotationError(f"{path}:{line}: a label block needs name: \"...\" and label_id: N (or id: N), got {body.strip()!r}")
        if int(number.group(1)) in ids:
            raise AnnotationError(f"{path}:{line}: class id {number.group(1)} appears twice")
        ids.append(int(number.group(1)))
        names.append(name.group(1))
    if not ids:
        raise AnnotationError(f"{path}: no label blocks; expected the AVA label map (label {{ name: \"...\" label_id: N }})")
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
        raise AnnotationError(f"{path}:{n}: column {column + 1} ({name}) must be a number, got "
                         f"{row[column] if column < len(row) else 'nothing'!r}") from None


def read_ava_csv(path, scores: bool = False) -> tuple[BoxSet, np.ndarray]:
    """AVA rows ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` (annotations) or
    ``..., action_id, score`` (results, ``scores=True``) -> (BoxSet, the last column [N])."""
    path = Path(path)
    last = "score" if scores else "person_id"
    keys, boxes, labels, extra = [], [], [], []
    for n, row in _rows(path, "AVA"):
        if len(row) != 8:
            raise AnnotationError(f"{path}:{n}: expected 8 columns video_id,timestamp,x1,y1,x2,y2,action_id,{last}, got {len(row)}")
        box = [_number(path, n, row, c, name) for c, name in zip(range(2, 6), ("x1", "y1", "x2", "y2"))]
        if not (0.0 <= box[0] <= box[2] <= 1.0 and 0.0 <= box[1] <= box[3] <= 1.0):
            raise AnnotationError(f"{path}:{n}: box {box} must be normalised corners with 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1")
        keys.append((row[0], _number(path, n, row, 1, "timestamp", int)))
        boxes.append(box)
        labels.append(_number(path, n, row, 6, "action_id", int))
        extra.append(_number(path, n, row, 7, last, float if scores else int))
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

    CSV rows ``video_id, timestamp, x1, y1, x2, y2, score`` or JSON ``{"video_id,timestamp":
    [[x1, y1, x2, y2, score], ...]}``. Pickles are refused (see the module docstring).
    """
    path = Path(path)
    if path.suffix in (".pkl", ".pickle"):
        raise AnnotationError(f"{path}: mugstan does not unpickle files (a pickle can run code); convert the proposals of a "
                         "source you trust to CSV or JSON as docs/detection.md shows, and name that file instead")
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
            array = np.asarray(boxes, dtype=np.float64)
            if array.size and (array.ndim != 2 or array.shape[1] != 5):
                raise AnnotationError(f"{path}: entry {key!r} must be a list of [x1, y1, x2, y2, score], got shape {array.shape}")
            groups[(video, int(ts))] = list(array.reshape(-1, 5))
    else:
        for n, row in _rows(path, "proposals"):
            if len(row) != 7:
                raise AnnotationError(f"{path}:{n}: expected 7 columns video_id,timestamp,x1,y1,x2,y2,score, got {len(row)}")
            values = [_number(path, n, row, c, name) for c, name in zip(range(2, 7), ("x1", "y1", "x2", "y2", "score"))]
            groups.setdefault((row[0], _number(path, n, row, 1, "timestamp", int)), []).append(values)
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in groups.items()}


# ---- annotations --------------------------------------------------------------------------------
@dataclass
class DetectionAnnotations(Annotations):
    """One split of an AVA-format dataset: one clip per keyframe.

    keyframes[i]: (video_id, timestamp) of clips[i]; boxes[i]: float [N_i, 4] the boxes to
    classify (training: ground-truth persons; evaluation: proposals or ground truth);
    box_labels[i]: float [N_i, C] multi-hot over ``class_ids`` (zeros for proposals); gt: every
    ground-truth row of the split's kept keyframes (for the evaluator); excluded: the excluded
    keyframes; box_source: "ground truth" or "proposals".
    """

    keyframes: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    box_labels: list = field(default_factory=list)
    class_ids: list = field(default_factory=list)
    gt: Optional[BoxSet] = None
    excluded: set = field(default_factory=set)
    box_source: str = "ground truth"
    times: list = field(default_factory=list)  # second of the keyframe in its video file
    dropped_rows: int = 0  # annotation rows of actions outside the label map


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
        raise ConfigError("data.extra.label_map is not set: give the AVA label map, e.g. ava_action_list_v2.2_for_activitynet_2019.pbtxt")
    class_ids, names = read_label_map(label_map)
    column = {c: k for k, c in enumerate(class_ids)}
    rows, persons = read_ava_csv(path)
    exclusions = _extra_file(cfg, f"{split}_exclusions")
    excluded = read_exclusions(exclusions) if exclusions else set()
    known = np.isin(rows.labels, class_ids)
    kept = known & np.array([k not in excluded for k in rows.keys], dtype=bool)
    gt = BoxSet([k for k, ok in zip(rows.keys, kept) if ok], rows.boxes[kept], rows.labels[kept])

    # one entry per person box of a keyframe, its actions multi-hot
    frames: dict[Key, dict] = {}
    for key, box, label in zip(gt.keys, gt.boxes, gt.labels):
        people = frames.setdefault(key, {})
        people.setdefault(tuple(np.round(box, 6)), np.zeros(len(class_ids), dtype=np.float32))[column[int(label)]] = 1.0
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
            found = proposals.get(key, np.zeros((0, 5)))
            found = found[found[:, 4] >= cfg.ava.proposal_score]
            boxes.append(np.clip(found[:, :4], 0.0, 1.0).astype(np.float32))
            labels.append(np.zeros((len(found), len(class_ids)), np.float32))
    finder = _Finder(cfg.root)
    videos = {v: finder(v) for v in sorted({v for v, _ in keyframes})}
    times = [ts - cfg.ava.timestamp_start for _, ts in keyframes]
    clips = [Clip(videos[v], t, t) for (v, _), t in zip(keyframes, times)]
    if not clips:
        raise AnnotationError(f"{path}: no keyframes left (every row excluded or of an action outside {label_map})")
    return DetectionAnnotations(clips, class_names=names, source=str(path), keyframes=keyframes, boxes=boxes, box_labels=labels,
                                class_ids=class_ids, gt=gt, excluded=excluded,
                                box_source="ground truth" if proposals is None else "proposals",
                                times=times, dropped_rows=int((~known).sum()))


# ---- the torch dataset --------------------------------------------------------------------------
def keyframe_times(center: float, num_frames: int, interval: int, source_fps: float,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Seconds of the ``num_frames`` frames of a keyframe clip (frame ``T // 2`` at ``center``),
    ``interval`` source frames apart; with ``rng`` each frame moves by a random 0..interval-1
    source frames (training)."""
    steps = (np.arange(num_frames) - num_frames // 2) * interval
    if rng is not None:
        steps = steps + rng.integers(0, interval, num_frames)
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
        frames = TF.resize(frames, [cfg.image_size, cfg.image_size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        boxes = torch.from_numpy(ann.boxes[index]).clone()
        if self.train and cfg.hflip and rng.random() < 0.5:
            frames = frames.flip(-1)
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        return {"frames": normalize(frames), "frame_mask": torch.ones(num, dtype=torch.bool), "boxes": boxes,
                "box_labels": torch.from_numpy(ann.box_labels[index]), "index": index}
