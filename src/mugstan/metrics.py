"""Retrieval and recognition metrics (methods.md §6).

Ranks are 0-based and ties count against the model: the rank of the truth is the number of
other candidates scoring at least as high. (CLIP4Clip's evaluation breaks ties in the model's
favour; with ours a model that scores everything equally ranks every truth last, as it should.)

- 1:1 retrieval (MSR-VTT 1k-A, LSMDC, DiDeMo, ActivityNet paragraphs): truth on the diagonal.
- Multi-caption (MSVD, VATEX, MSR-VTT full): text-to-video ranks each caption among all
  videos. Video-to-text, two labelled conventions: "lenient" ranks the video's best caption
  against the best caption of every other video (V groups; what CLIP4Clip-derived code reports),
  "strict" ranks it among all captions (a hit at K if any own caption is in the top K).
- DSL (dual softmax, test time only, labelled): S' = S * softmax(S over the query axis).
- Recognition: top-1 / top-5 of softmax probabilities averaged over views.
- AVA frame-mAP@0.5 (spatio-temporal action detection): per-class PASCAL VOC average precision
  over every (keyframe, box, action) detection, as the official AVA evaluation computes it
  (``frame_map`` below).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch


def summarize(ranks: torch.Tensor) -> dict[str, float]:
    """0-based ranks [Q] -> R@1/5/10 (percent), MdR and MnR (1-based)."""
    ranks = ranks.float()
    out = {f"R@{k}": 100.0 * (ranks < k).float().mean().item() for k in (1, 5, 10)}
    out["MdR"] = ranks.quantile(0.5).item() + 1  # the midpoint for an even count, as numpy.median
    out["MnR"] = ranks.mean().item() + 1
    return out


def ranks_of_truth(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """scores [Q, C], truth [Q] candidate index -> 0-based ranks [Q] (ties against the model)."""
    target = scores.gather(1, truth[:, None])
    return (scores >= target).sum(1) - 1


def dual_softmax(scores: torch.Tensor) -> torch.Tensor:
    """DSL re-ranking of query x candidate scores [Q, C]: S * softmax(S over the query axis)."""
    return scores * torch.softmax(scores.float(), dim=0)


def retrieval_metrics(
    scores: torch.Tensor, caption_video: Sequence[int], dsl: bool = False
) -> dict[str, dict[str, float]]:
    """Text x video scores [N_text, N_video] (already scaled) and each caption's video index.

    Returns {"t2v": ..., "v2t": ...} for 1:1 sets, and for multi-caption sets
    {"t2v": ..., "v2t_lenient": ..., "v2t_strict": ...}; with ``dsl`` the keys end in "_dsl".
    """
    scores = scores.float()
    link = torch.as_tensor(list(caption_video), dtype=torch.long)
    n_text, n_video = scores.shape
    if len(link) != n_text:
        raise ValueError(f"{len(link)} caption links for {n_text} texts")
    suffix = "_dsl" if dsl else ""
    t2v_scores = dual_softmax(scores) if dsl else scores
    out = {f"t2v{suffix}": summarize(ranks_of_truth(t2v_scores, link))}
    v2t_scores = dual_softmax(scores.t()) if dsl else scores.t()  # [N_video, N_text]
    if n_text == n_video and torch.equal(link, torch.arange(n_video)):
        out[f"v2t{suffix}"] = summarize(ranks_of_truth(v2t_scores, torch.arange(n_video)))
        return out
    own = link[None, :] == torch.arange(n_video)[:, None]  # [V, N_text]: caption c is video v's
    if not own.any(1).all():
        raise ValueError("every video needs at least one caption for video-to-text retrieval")
    # lenient: each caption group is represented by its best caption
    groups = torch.full((n_video, n_video), float("-inf"))
    groups.scatter_reduce_(1, link[None, :].expand(n_video, -1), v2t_scores, reduce="amax")
    out[f"v2t_lenient{suffix}"] = summarize(ranks_of_truth(groups, torch.arange(n_video)))
    # strict: the best own caption among all captions of other videos
    best_own = v2t_scores.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
    strict_ranks = ((v2t_scores >= best_own) & ~own).sum(1)
    out[f"v2t_strict{suffix}"] = summarize(strict_ranks)
    return out


def recognition_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, C] or [N, V, C] (views), labels [N] -> top-1 / top-5 accuracy (percent).

    With views, per-view softmax probabilities are averaged before ranking.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if probs.dim() == 3:
        probs = probs.mean(1)
    labels = labels.long()
    truth = probs.gather(1, labels[:, None])
    rank = (probs >= truth).sum(1) - 1  # ties against the model
    return {"top1": 100.0 * (rank < 1).float().mean().item(), "top5": 100.0 * (rank < 5).float().mean().item()}


# ---- AVA frame-mAP ------------------------------------------------------------------------------
class BoxSet(NamedTuple):
    """Boxes of one kind over many keyframes, one row per (box, action).

    keys: [N] keyframe of each row, ``(video_id, timestamp)``; boxes: float [N, 4] x1, y1, x2, y2
    (any consistent unit, AVA's are 0-1); labels: int [N] action id; scores: float [N] for
    detections, None for ground truth.
    """

    keys: list
    boxes: np.ndarray
    labels: np.ndarray
    scores: Optional[np.ndarray] = None


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row i of ``a`` [N, 4] with row i of ``b`` [N, 4] (x1, y1, x2, y2; no +1) -> [N]."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih

    def area(x: np.ndarray) -> np.ndarray:
        return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])

    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    det_group: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_group: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """True positives of detections [D] against ground truth [G], both grouped by (keyframe, class).

    The PASCAL rule of the official evaluation (``per_image_evaluation``), batched over every group:
    each detection takes its highest-IoU ground truth of the same group (the first on equal IoU);
    it is a true positive when that IoU is >= ``iou_threshold`` and no higher-scored detection took
    the same ground truth first. A detection whose best box is taken is a false positive, even if
    another box of the group would fit. Returns bool [D].
    """
    d = len(det_group)
    tp = np.zeros(d, dtype=bool)
    if d == 0 or len(gt_group) == 0:
        return tp
    order = np.argsort(gt_group, kind="stable")
    gt_group, gt_boxes = gt_group[order], gt_boxes[order]
    groups = int(max(det_group.max(), gt_group.max())) + 1
    gt_count = np.bincount(gt_group, minlength=groups)
    gt_start = np.cumsum(gt_count) - gt_count
    counts = gt_count[det_group]  # [D] candidates per detection
    pair_det = np.repeat(np.arange(d), counts)  # [P] every (detection, candidate) pair
    first_pair = np.cumsum(counts) - counts
    within = np.arange(len(pair_det)) - first_pair[pair_det]
    pair_gt = gt_start[det_group[pair_det]] + within
    iou = box_iou_pairs(det_boxes[pair_det], gt_boxes[pair_gt])
    has = counts > 0
    best = np.full(d, -1.0)
    best[has] = np.maximum.reduceat(iou, first_pair[has])
    # the first candidate reaching the best IoU (np.argmax), as a global ground-truth index
    at_best = np.where(iou == best[pair_det], within, np.iinfo(np.int64).max)
    best_within = np.zeros(d, dtype=np.int64)
    best_within[has] = np.minimum.reduceat(at_best, first_pair[has])
    target = gt_start[det_group] + best_within
    valid = has & (best >= iou_threshold)
    # among valid detections of the same ground truth, the highest score takes it
    idx = np.flatnonzero(valid)
    idx = idx[np.lexsort((-det_scores[idx], target[idx]))]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = target[idx][1:] != target[idx][:-1]
    tp[idx[first]] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """PASCAL VOC (2010+) AP of one class: detections ranked by score, precision made monotone,
    summed over the recall steps (``metrics.compute_average_precision`` of the official code).

    Ties count against the model: among equal scores the false positives rank first (the official
    code orders ties as numpy's argsort happens to; without ties the two are identical). No
    detections: AP 0. No ground truth: NaN (the class is left out of the mean).
    """
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.lexsort((tp, -scores))  # score descending, false positives first on ties
    hits = tp[order].astype(np.float64)
    cum_tp, cum_fp = np.cumsum(hits), np.cumsum(1.0 - hits)
    precision = cum_tp / (cum_tp + cum_fp)
    recall = cum_tp / num_gt
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def top_per_keyframe(frame: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """bool [D]: the ``k`` highest-scored rows of each keyframe (``frame`` [D] keyframe index; on
    equal scores the earlier row)."""
    order = np.lexsort((np.arange(len(frame)), -scores, frame))  # by keyframe, score descending, row order
    counts = np.bincount(frame[order], minlength=int(frame.max()) + 1 if len(frame) else 0)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = np.zeros(len(frame), dtype=bool)
    keep[order[rank < k]] = True
    return keep


def frame_map(
    gt: BoxSet,
    detections: BoxSet,
    class_ids: Sequence[int],
    excluded=(),
    iou_threshold: float = 0.5,
    max_per_keyframe: int = 0,
) -> dict:
    """AVA frame-level mAP@``iou_threshold`` (the official ``get_ava_performance``), in percent.

    gt, detections: ``BoxSet``s (a person with several actions is one row per action); class_ids:
    the evaluated actions (the label map; rows of other actions are ignored); excluded: keyframes
    ``(video_id, timestamp)`` left out of both sides. Detections on keyframes without ground truth
    are false positives. As in the official code, ``max_per_keyframe`` > 0 keeps only that many
    highest-scored detection rows of each keyframe (the ActivityNet script reads 50; mmaction2's
    evaluation, 0: all), and then detections with zero or negative width or height are dropped
    (``per_image_evaluation._remove_invalid_boxes``: neither true nor false positives). Returns
    {"mAP": mean over classes with ground truth, "per_class": {id: AP or None when the class has no
    ground truth}, "counts": {...}}.
    """
    if detections.scores is None:
        raise ValueError("detections need scores")
    classes = {int(c): k for k, c in enumerate(class_ids)}
    excluded = {(str(v), int(t)) for v, t in excluded}

    def keep(rows: BoxSet) -> np.ndarray:
        labels = np.asarray(rows.labels, dtype=np.int64)
        known = np.isin(labels, list(classes))
        kept = (
            np.array([(str(v), int(t)) not in excluded for v, t in rows.keys], dtype=bool)
            if len(rows.keys)
            else np.zeros(0, bool)
        )
        return known & kept

    gk, dk = keep(gt), keep(detections)
    frames: dict = {}
    gt_frame = np.array(
        [frames.setdefault((str(v), int(t)), len(frames)) for (v, t), k in zip(gt.keys, gk, strict=True) if k],
        dtype=np.int64,
    )
    det_frame = np.array(
        [frames.setdefault((str(v), int(t)), len(frames)) for (v, t), k in zip(detections.keys, dk, strict=True) if k],
        dtype=np.int64,
    )
    lookup = np.vectorize(classes.get, otypes=[np.int64])
    gt_class = lookup(np.asarray(gt.labels, dtype=np.int64)[gk]) if gk.any() else np.zeros(0, np.int64)
    det_class = lookup(np.asarray(detections.labels, dtype=np.int64)[dk]) if dk.any() else np.zeros(0, np.int64)
    gt_boxes = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)[gk]
    det_boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)[dk]
    det_scores = np.asarray(detections.scores, dtype=np.float64)[dk]
    kept = np.ones(len(det_frame), dtype=bool)
    if max_per_keyframe > 0:
        kept = top_per_keyframe(det_frame, det_scores, max_per_keyframe)
    valid = (det_boxes[:, 0] < det_boxes[:, 2]) & (det_boxes[:, 1] < det_boxes[:, 3])
    dropped = {
        "detections_over_the_keyframe_limit": int((~kept).sum()),
        "detections_without_area": int((kept & ~valid).sum()),
    }
    kept &= valid
    det_frame, det_class, det_boxes, det_scores = det_frame[kept], det_class[kept], det_boxes[kept], det_scores[kept]
    n = len(classes)
    tp = match_detections(
        det_frame * n + det_class, det_boxes, det_scores, gt_frame * n + gt_class, gt_boxes, iou_threshold
    )
    num_gt = np.bincount(gt_class, minlength=n)
    per_class = {}
    for cid, k in classes.items():
        mine = det_class == k
        per_class[cid] = average_precision(det_scores[mine], tp[mine], int(num_gt[k]))
    aps = [ap for ap in per_class.values() if not np.isnan(ap)]
    return {
        "mAP": 100.0 * float(np.mean(aps)) if aps else float("nan"),
        "per_class": {c: (None if np.isnan(ap) else 100.0 * ap) for c, ap in per_class.items()},
        "counts": {
            "keyframes_with_gt": int(len(np.unique(gt_frame))),
            "gt_boxes": int(len(gt_frame)),
            "detections": int(len(det_frame)),
            "true_positives": int(tp.sum()),
            **dropped,
        },
    }
