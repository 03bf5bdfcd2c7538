"""The AVA detection protocol: classify every box of every keyframe, write the AVA result CSV, score it.

``evaluate_detection`` is what ``mugstan eval`` (``engine/evaluate.py``) runs for ``model.task:
detection``: each process classifies a contiguous shard of the keyframes; the sigmoid scores of every
(box, evaluated action) are written, in keyframe order, as the AVA result format

    video_id,timestamp,x1,y1,x2,y2,action_id,score        (no header; timestamp as 4 digits)

to ``eval.detections`` (default ``OUTPUT_DIR/detections_SPLIT.csv``), and that file is read back and
scored with ``mugstan.metrics.frame_map`` against the split's ground truth (excluded keyframes left
out), so the reported mAP is the mAP of the file. Keyframes whose video fails to decode get no
detections (their ground truth counts as missed) and are listed under ``dropped``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mugstan.config import ExperimentConfig
from mugstan.data.datasets import build_dataset, collate
from mugstan.data.datasets.ava import DetectionAnnotations, read_ava_csv
from mugstan.engine.distributed import DistInfo, ShardSampler, all_gather_objects, unwrap
from mugstan.engine.precision import autocast_for, linear_width
from mugstan.errors import MismatchError
from mugstan.metrics import frame_map
from mugstan.models import model_inputs


@torch.no_grad()
def detect(model, cfg: ExperimentConfig, ann: DetectionAnnotations, dist: DistInfo, split: str = "test",
           progress: bool = True) -> tuple[dict[int, np.ndarray], list]:
    """Scores of every box: ({keyframe index: float [N, C] sigmoid scores}, dropped [(index, "path: reason")])."""
    model = unwrap(model)
    width = linear_width(model)  # what train.precision: auto is decided for
    dataset = build_dataset(cfg.data, split, train=False, on_error="drop", ann=ann)
    loader = DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=ShardSampler(len(dataset), dist.world, dist.rank),
        num_workers=cfg.data.loader_workers,
        collate_fn=collate,
    )
    scores, dropped = {}, []
    for batch in tqdm(
        loader, desc=f"detecting on {split} keyframes", unit="batch", disable=not (progress and dist.main)
    ):
        dropped.extend(batch["failed"])
        if "frames" not in batch:
            continue
        with autocast_for(dist.device, cfg.train.precision, width):
            logits = model(**model_inputs(model, batch, dist.device))["logits"]
        probs = torch.sigmoid(logits.float()).cpu()
        counts = torch.bincount(batch["box_batch_index"], minlength=len(batch["index"])).tolist()
        scores.update(zip(batch["index"].tolist(), (p.numpy() for p in probs.split(counts)), strict=True))
    merged, all_dropped = {}, []
    for part, part_dropped in all_gather_objects((scores, dropped)):
        merged.update(part)
        all_dropped.extend(part_dropped)
    return merged, sorted(all_dropped)


def write_results(path: Path, ann: DetectionAnnotations, scores: dict[int, np.ndarray]) -> int:
    """The AVA result CSV: every (box, evaluated action) of every scored keyframe, keyframe order
    (outputs for actions outside the label map are not written: the evaluation ignores them).
    Returns the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [ann.class_ids.index(c) for c in ann.evaluated_ids]
    ids = np.asarray(ann.evaluated_ids, dtype=np.float64)
    rows = 0
    with path.open("w") as f:
        for i in sorted(scores):
            boxes, probs = ann.boxes[i], scores[i][:, columns]
            if len(boxes) == 0:
                continue
            c = len(ids)
            table = np.concatenate(
                [np.repeat(boxes, c, axis=0), np.tile(ids, len(boxes))[:, None], probs.reshape(-1, 1)], axis=1
            )
            video, ts = ann.keyframes[i]
            np.savetxt(f, table, fmt=f"{video.replace('%', '%%')},{ts:04d},%.4f,%.4f,%.4f,%.4f,%d,%.6f")
            rows += len(table)
    return rows


def evaluate_detection(
    model,
    cfg: ExperimentConfig,
    ann: DetectionAnnotations,
    split: str,
    dist: DistInfo,
    progress: bool = True,
    out: Optional[Path] = None,
) -> tuple[dict, list]:
    """Detect, write the result CSV (main process), score it. Returns (result entries, dropped)."""
    outputs = unwrap(model).classifier.out_features
    if outputs != len(ann.class_ids):
        raise MismatchError(
            f"the model has {outputs} action outputs, the data config {len(ann.class_ids)} (data.ava.num_actions="
            f"{cfg.data.ava.num_actions}): evaluate with the data.ava.num_actions the model was trained with"
        )
    scores, dropped = detect(model, cfg, ann, dist, split, progress)
    out = Path(out or cfg.eval.detections or Path(cfg.train.output_dir) / f"detections_{split}.csv")
    result: dict = {}
    if dist.main:
        rows = write_results(out, ann, scores)
        detections, _ = read_ava_csv(out, scores=True)
        metrics = frame_map(
            ann.gt, detections, ann.evaluated_ids, ann.excluded, max_per_keyframe=cfg.eval.detections_per_keyframe
        )
        names = dict(zip(ann.class_ids, ann.class_names, strict=True))
        metrics["per_class"] = {f"{c} {names[c]}": ap for c, ap in metrics["per_class"].items()}
        metrics["counts"].update(keyframes=len(ann.keyframes), keyframes_scored=len(scores), rows_written=rows)
        result = {"detection": metrics, "boxes": ann.box_source, "detections_csv": str(out)}
    result = all_gather_objects(result)[0]  # every process returns the main process's result
    return result, dropped
