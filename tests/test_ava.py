"""AVA detection: the frame-mAP evaluator by hand, the AVA v2.2 adapter on official-format fixtures,
the RoI head (shapes, known boxes, order-blindness), the loss, and `mugstan train` / `eval` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import AVA_LABEL_MAP, write_ava_fixtures, write_video

from mugstan.config import DataConfig, ModelConfig
from mugstan.data.datasets import build_dataset, collate, load_annotations
from mugstan.data.datasets.ava import keyframe_times, read_ava_csv, read_label_map, read_proposals, select_proposals
from mugstan.losses import DetectionLoss, build_loss
from mugstan.metrics import BoxSet, average_precision, frame_map, match_detections
from mugstan.models import build_model, model_inputs

A = ("vidA", 902)
B = ("vidB", 903)
C = ("vidC", 904)
BOX = [0.0, 0.0, 0.5, 0.5]  # area 0.25
FAR = [0.6, 0.6, 0.9, 0.9]


def boxset(rows, scores=False):
    """rows: (key, box, label[, score]) -> BoxSet."""
    return BoxSet(
        [r[0] for r in rows],
        np.array([r[1] for r in rows], dtype=float).reshape(-1, 4),
        np.array([r[2] for r in rows], dtype=np.int64),
        np.array([r[3] for r in rows], dtype=float) if scores else None,
    )


# ---- the evaluator, by hand ---------------------------------------------------------------------
def test_ap_by_hand_with_a_false_positive_between_two_hits():
    gt = boxset([(A, BOX, 1), (B, BOX, 1)])
    det = boxset([(A, BOX, 1, 0.9), (B, FAR, 1, 0.8), (B, BOX, 1, 0.7)], scores=True)
    # ranked: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    m = frame_map(gt, det, [1])
    assert m["mAP"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    assert m["counts"]["true_positives"] == 2 and m["counts"]["gt_boxes"] == 2


def test_precision_is_made_monotone_before_summing():
    """A false positive then two hits: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The official AP
    takes, at each recall step, the best precision at that recall or beyond: 1/2 * 2/3 + 1/2 * 2/3
    = 2/3; summing the raw precisions would give 1/2 * 1/2 + 1/2 * 2/3 = 7/12."""
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([False, True, True]), 2)
    assert ap == pytest.approx(2 / 3, abs=1e-12)
    # and through frame_map: the same ranking as boxes
    gt = boxset([(A, BOX, 1), (B, BOX, 1)])
    det = boxset([(A, FAR, 1, 0.9), (A, BOX, 1, 0.8), (B, BOX, 1, 0.7)], scores=True)
    assert frame_map(gt, det, [1])["mAP"] == pytest.approx(200 / 3, abs=1e-9)


def test_ties_count_against_the_model():
    gt = boxset([(A, BOX, 1), (B, BOX, 1)])
    det = boxset([(A, BOX, 1, 0.5), (B, FAR, 1, 0.5)], scores=True)
    # equal scores: the false positive ranks first -> precision 0 then 1/2 at recall 1/2 -> AP 1/4
    assert frame_map(gt, det, [1])["mAP"] == pytest.approx(25.0)
    assert average_precision(np.array([0.5, 0.5]), np.array([True, False]), 2) == pytest.approx(0.25)
    # the order the rows come in does not matter
    swapped = boxset([(B, FAR, 1, 0.5), (A, BOX, 1, 0.5)], scores=True)
    assert frame_map(gt, swapped, [1])["mAP"] == pytest.approx(25.0)


def test_no_detections_and_classes_without_ground_truth():
    gt = boxset([(A, BOX, 1), (A, BOX, 3)])
    det = boxset([(A, BOX, 1, 0.9), (A, FAR, 5, 0.9)], scores=True)
    m = frame_map(gt, det, [1, 3, 5])
    # class 1: AP 1; class 3: ground truth, no detection: AP 0; class 5: no ground truth: left out
    assert m["per_class"] == {1: pytest.approx(100.0), 3: 0.0, 5: None}
    assert m["mAP"] == pytest.approx(50.0)
    nothing = BoxSet([], np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
    assert frame_map(gt, nothing, [1, 3])["mAP"] == 0.0 and frame_map(gt, nothing, [1, 3])["per_class"] == {
        1: 0.0,
        3: 0.0,
    }


def test_excluded_timestamps_leave_both_sides():
    gt = boxset([(A, BOX, 1), (C, BOX, 1)])
    det = boxset([(C, FAR, 1, 0.99), (A, BOX, 1, 0.9)], scores=True)
    # without the exclusion: FP then TP, the ground truth of C missed -> AP = 1/2 * 1/2
    assert frame_map(gt, det, [1])["mAP"] == pytest.approx(25.0)
    # excluding C removes its ground truth and its detection: one TP of one -> AP 1
    m = frame_map(gt, det, [1], excluded={("vidC", 904)})
    assert m["mAP"] == pytest.approx(100.0) and m["counts"]["gt_boxes"] == 1 and m["counts"]["detections"] == 1


def test_iou_just_above_and_below_one_half():
    gt = boxset([(A, BOX, 1)])
    above = boxset([(A, [0.0, 0.0, 0.5, 0.255], 1, 0.9)], scores=True)  # IoU 0.51
    below = boxset([(A, [0.0, 0.0, 0.5, 0.245], 1, 0.9)], scores=True)  # IoU 0.49
    exact = boxset([(A, [0.0, 0.0, 0.5, 0.25], 1, 0.9)], scores=True)  # IoU 0.5: a hit (>=)
    assert frame_map(gt, above, [1])["mAP"] == pytest.approx(100.0)
    assert frame_map(gt, below, [1])["mAP"] == 0.0
    assert frame_map(gt, exact, [1])["mAP"] == pytest.approx(100.0)


def test_each_ground_truth_is_matched_once_and_by_its_best_detection():
    gt = boxset([(A, BOX, 1), (A, [0.0, 0.0, 0.5, 0.4], 1)])
    # detection 0 overlaps GT 0 best (IoU 1) and takes it; detection 1 (lower score) also overlaps
    # GT 0 best (IoU 0.9 vs 0.72 with GT 1): GT 0 is taken, so it is a false positive (PASCAL rule),
    # although GT 1 would fit; detection 2 is a duplicate of detection 0: false positive
    det_boxes = np.array([BOX, [0.0, 0.0, 0.5, 0.45], BOX])
    tp = match_detections(
        np.zeros(3, np.int64), det_boxes, np.array([0.9, 0.8, 0.7]), np.zeros(2, np.int64), np.array(gt.boxes)
    )
    assert tp.tolist() == [True, False, False]
    # another class or another keyframe never matches
    tp = match_detections(
        np.array([1, 2]), np.array([BOX, BOX]), np.array([0.9, 0.9]), np.array([0, 0]), np.array(gt.boxes)
    )
    assert tp.tolist() == [False, False]


def test_rows_of_actions_outside_the_label_map_are_ignored():
    gt = boxset([(A, BOX, 1), (A, BOX, 7)])
    det = boxset([(A, BOX, 1, 0.9), (A, BOX, 7, 0.95)], scores=True)
    m = frame_map(gt, det, [1])
    assert m["per_class"] == {1: pytest.approx(100.0)} and m["counts"]["detections"] == 1


def test_detections_without_area_are_dropped_before_matching():
    """As the official ``_remove_invalid_boxes``: a zero-width or zero-height detection is neither a
    true nor a false positive; a box with an area at the same place and score is a false positive."""
    gt = boxset([(A, BOX, 1), (B, BOX, 1)])
    flat = [(A, [0.2, 0.1, 0.2, 0.4], 1, 0.99), (B, [0.1, 0.3, 0.4, 0.3], 1, 0.98)]  # zero width, zero height
    det = boxset(flat + [(A, BOX, 1, 0.9), (B, BOX, 1, 0.8)], scores=True)
    m = frame_map(gt, det, [1])
    assert (
        m["mAP"] == pytest.approx(100.0)
        and m["counts"]["detections_without_area"] == 2
        and m["counts"]["detections"] == 2
    )
    thin = boxset([(A, [0.2, 0.1, 0.21, 0.4], 1, 0.99), (A, BOX, 1, 0.9), (B, BOX, 1, 0.8)], scores=True)
    assert frame_map(gt, thin, [1])["mAP"] == pytest.approx(100 * 2 / 3)  # FP, TP, TP: precision 2/3 at both recalls


def test_the_activitynet_script_keeps_the_top_detections_of_each_keyframe():
    """``max_per_keyframe`` (eval.detections_per_keyframe): only the N highest-scored rows of a keyframe
    count, over all its classes (get_ava_performance.py reads 50); 0 keeps all (mmaction2)."""
    gt = boxset([(A, BOX, 1), (A, FAR, 3), (B, BOX, 1)])
    det = boxset(
        [(A, BOX, 1, 0.9), (A, FAR, 1, 0.8), (A, FAR, 3, 0.3), (B, BOX, 1, 0.2), (B, FAR, 3, 0.1)], scores=True
    )
    every = frame_map(gt, det, [1, 3])
    assert every["per_class"] == {1: pytest.approx(100 * (0.5 + 0.5 * 2 / 3)), 3: pytest.approx(100.0)}
    top2 = frame_map(gt, det, [1, 3], max_per_keyframe=2)  # A keeps 0.9 and 0.8 (its class-3 hit goes), B keeps both
    assert top2["per_class"] == {1: pytest.approx(100 * (0.5 + 0.5 * 2 / 3)), 3: 0.0}
    assert top2["counts"]["detections_over_the_keyframe_limit"] == 1
    top1 = frame_map(gt, det, [1, 3], max_per_keyframe=1)  # A: 0.9 (TP); B: 0.2 (TP)
    assert top1["per_class"] == {1: pytest.approx(100.0), 3: 0.0}


def test_result_rows_without_score_and_coordinates_off_by_rounding(tmp_path):
    """The official reader: a 7-column result row scores 1.0; coordinates are used as written. A
    rounding error outside [0, 1] is accepted; a box clearly outside is refused (file and line)."""
    (tmp_path / "r.csv").write_text("v,0902,-0.004,0.2,1.003,0.4,1\nv,0902,0.1,0.2,0.3,0.4,1,0.25\n")
    rows, scores = read_ava_csv(tmp_path / "r.csv", scores=True)
    assert scores.tolist() == [1.0, 0.25] and rows.boxes[0].tolist() == [-0.004, 0.2, 1.003, 0.4]
    (tmp_path / "far.csv").write_text("v,0902,0.1,0.2,1.2,0.4,1,0.5\n")
    with pytest.raises(ValueError, match=r"far.csv:1: box .* in \[0, 1\]"):
        read_ava_csv(tmp_path / "far.csv", scores=True)
    (tmp_path / "ann7.csv").write_text("v,0902,0.1,0.2,0.3,0.4,1\n")  # annotations need the person id
    with pytest.raises(ValueError, match=r"ann7.csv:1: expected 8 columns .*person_id, got 7"):
        read_ava_csv(tmp_path / "ann7.csv")


def reference_frame_map(gt_rows, det_rows, class_ids, excluded=(), capacity=0):
    """The official evaluation written out per keyframe, as get_ava_performance.py and the TF object
    detection API's per_image_evaluation run it (rows: (key, box, label[, score]); no score ties)."""
    import heapq

    wanted, excluded = set(class_ids), set(excluded)
    kept: dict = {}
    for key, box, label, score in det_rows:  # read_csv: whitelist, then a heap of `capacity` per keyframe
        if label not in wanted:
            continue
        heap = kept.setdefault(key, [])
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, (score, label, *box))
        elif score > heap[0][0]:
            heapq.heapreplace(heap, (score, label, *box))
    truth: dict = {}
    for key, box, label in gt_rows:
        if label in wanted and key not in excluded:
            truth.setdefault(key, []).append((label, box))
    scores = {c: [] for c in class_ids}
    hits = {c: [] for c in class_ids}
    for key, entries in kept.items():
        if key in excluded:
            continue
        for c in class_ids:
            dets = sorted(
                [(e[0], e[2:]) for e in entries if e[1] == c and e[2] < e[4] and e[3] < e[5]], key=lambda d: -d[0]
            )
            gts = [b for label, b in truth.get(key, []) if label == c]
            taken = [False] * len(gts)
            for score, box in dets:
                tp = False
                if gts:
                    g = np.array(gts)
                    inter = np.clip(np.minimum(box[2], g[:, 2]) - np.maximum(box[0], g[:, 0]), 0, None) * np.clip(
                        np.minimum(box[3], g[:, 3]) - np.maximum(box[1], g[:, 1]), 0, None
                    )
                    ious = inter / (
                        (box[2] - box[0]) * (box[3] - box[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
                    )
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.5 and not taken[j]:
                        tp = taken[j] = True
                scores[c].append(score)
                hits[c].append(tp)
    aps = []
    for c in class_ids:
        n = sum(label == c for rows in truth.values() for label, _ in rows)
        if n == 0:
            continue
        order = np.argsort(-np.array(scores[c]))
        tp = np.array(hits[c], dtype=float)[order]
        if len(tp) == 0:
            aps.append(0.0)
            continue
        precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        recall = np.cumsum(tp) / n
        precision = np.concatenate([[0.0], precision, [0.0]])
        recall = np.concatenate([[0.0], recall, [1.0]])
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        steps = np.where(recall[1:] != recall[:-1])[0] + 1
        aps.append(float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps])))
    return 100.0 * float(np.mean(aps))


@pytest.mark.parametrize("seed", range(6))
def test_frame_map_equals_the_official_computation_on_random_fixtures(seed):
    """Random keyframes, boxes, classes and scores, with zero-area detections, rows of actions
    outside the label map and excluded keyframes; all rows and the script's top 50 per keyframe."""
    rng = np.random.default_rng(seed)
    keys = [(f"v{v}", 900 + t) for v in range(4) for t in range(5)]

    def box(near=None):
        corners = np.clip(np.asarray(near) + rng.normal(0, 0.05, 4), 0, 1) if near is not None else rng.random(4)
        (x1, x2), (y1, y2) = np.sort(corners[[0, 2]]), np.sort(corners[[1, 3]])
        return [float(x1), float(y1), float(x2), float(y2)]

    gt_rows, det_rows = [], []
    for key in keys:
        people = [box() for _ in range(int(rng.integers(0, 4)))]
        gt_rows += [
            (key, p, int(c))
            for p in people
            for c in rng.choice([1, 2, 3, 4, 9], int(rng.integers(1, 3)), replace=False)
        ]
        for found in [box(p) for p in people] + [box() for _ in range(3)]:
            if rng.random() < 0.1:
                found[2] = found[0]  # zero width
            det_rows += [(key, found, c, float(rng.random())) for c in (1, 2, 3, 4, 9)]
    excluded = {keys[int(rng.integers(len(keys)))]}
    gt = boxset(gt_rows)
    det = boxset(det_rows, scores=True)
    for capacity in (0, 50, 7):
        ours = frame_map(gt, det, [1, 2, 3, 4], excluded, max_per_keyframe=capacity)["mAP"]
        assert abs(ours - reference_frame_map(gt_rows, det_rows, [1, 2, 3, 4], excluded, capacity)) < 1e-10


# ---- the adapter on the official formats --------------------------------------------------------
@pytest.fixture(scope="module")
def ava_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava")
    # 5 s at 8 fps; frame i's lower part has value (9 i) % 256, so sampled frames can be identified
    for i, v in enumerate(("video0", "video1")):
        write_video(root / f"{v}.mp4", frames=40, size=(64, 48), fps=8, seed=i)
    return root, write_ava_fixtures(root)


def ava_data(root, files, **kw) -> DataConfig:
    """The data config of the fixtures: 4 frames 2 apart at 8 fps, files starting at timestamp 900;
    the model's outputs are the label map's actions unless ``ava={"num_actions": N}``."""
    from mugstan.config import AVAConfig

    ava = {"timestamp_start": 900.0, "source_fps": 8.0, "frame_interval": 2, "num_actions": 0, **kw.pop("ava", {})}
    extra = {k: files[k] for k in ("label_map", "train_exclusions", "val_exclusions", "val_proposals")}
    return DataConfig(
        dataset="ava",
        root=str(root),
        train_ann=files["train"],
        val_ann=files["val"],
        test_ann=files["val"],
        extra={**extra, **kw.pop("extra", {})},
        num_frames=4,
        image_size=32,
        num_workers=0,
        ava=AVAConfig(**ava),
        **kw,
    )


def test_label_map_both_spellings(tmp_path):
    ids, names = read_label_map(write_ava_fixtures(tmp_path, ("a", "b"))["label_map"])
    assert ids == [1, 3, 8] and names == ["bend/bow (at the waist)", "crawl", "dance"]
    (tmp_path / "old.pbtxt").write_text('item {\n  name: "stand"\n  id: 12\n}\nitem {\n  name: "sit"\n  id: 11\n}\n')
    assert read_label_map(tmp_path / "old.pbtxt") == ([12, 11], ["stand", "sit"])
    (tmp_path / "bad.pbtxt").write_text(AVA_LABEL_MAP + 'label {\n  name: "jump"\n}\n')
    with pytest.raises(ValueError, match=r"bad.pbtxt:16: .*label_id"):
        read_label_map(tmp_path / "bad.pbtxt")


def test_training_keyframes_group_actions_per_person_and_honour_exclusions(ava_files):
    root, files = ava_files
    ann = load_annotations(ava_data(root, files), "train")
    # video1,0901 is excluded; the row of action 2 (not in the label map) is dropped, which leaves
    # video0,0901 with one person (two actions: crawl and dance)
    assert ann.keyframes == [("video0", 900), ("video0", 901), ("video1", 900)]
    assert ann.class_ids == [1, 3, 8] and ann.dropped_rows == 1 and ann.box_source == "ground truth"
    np.testing.assert_allclose(ann.boxes[0], [[0.1, 0.2, 0.4, 0.9], [0.5, 0.1, 0.9, 0.8]], atol=1e-6)
    np.testing.assert_array_equal(ann.box_labels[0], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(ann.box_labels[1], [[0, 1, 1]])
    assert ann.clips[0].path.endswith("video0.mp4") and ann.times == [0.0, 1.0, 0.0]


def test_evaluation_keyframes_use_proposals_above_the_score_threshold(ava_files):
    root, files = ava_files
    ann = load_annotations(ava_data(root, files), "val")
    assert ann.box_source == "proposals" and ann.keyframes == [("video0", 900), ("video0", 901), ("video1", 900)]
    np.testing.assert_allclose(ann.boxes[0], [[0.11, 0.21, 0.41, 0.88]], atol=1e-6)  # the 0.40 box is dropped
    assert [len(b) for b in ann.boxes] == [1, 1, 1] and ann.gt.keys == [
        ("video0", 900),
        ("video0", 901),
        ("video1", 900),
    ]
    lower = load_annotations(ava_data(root, files, ava={"proposal_score": 0.3}), "val")
    assert [len(b) for b in lower.boxes] == [2, 1, 1]
    gt_boxes = load_annotations(ava_data(root, files, extra={"val_proposals": ""}), "val")
    assert gt_boxes.box_source == "ground truth" and [len(b) for b in gt_boxes.boxes] == [1, 1, 1]


def test_proposals_as_mmaction2_picks_them(ava_files, tmp_path):
    """A keyframe whose proposals all score below the threshold keeps its best one(s); a keyframe
    without proposals is classified as one whole-frame box (mmaction2's AVADataset)."""
    root, files = ava_files
    (tmp_path / "p.csv").write_text(
        "video0,0900,0.1,0.2,0.4,0.9,0.5\nvideo0,0900,0.5,0.1,0.9,0.8,0.7\n"
        "video1,0900,0.2,0.2,0.6,0.7,0.95\nvideo1,0900,0.1,0.1,0.3,0.3,0.92\n"
    )
    ann = load_annotations(ava_data(root, files, extra={"val_proposals": str(tmp_path / "p.csv")}), "val")
    assert ann.keyframes == [("video0", 900), ("video0", 901), ("video1", 900)]
    np.testing.assert_allclose(ann.boxes[0], [[0.5, 0.1, 0.9, 0.8]])  # none >= 0.9: the best (0.7)
    np.testing.assert_allclose(ann.boxes[1], [[0.0, 0.0, 1.0, 1.0]])  # no proposal: the whole frame
    np.testing.assert_allclose(ann.boxes[2], [[0.2, 0.2, 0.6, 0.7], [0.1, 0.1, 0.3, 0.3]])  # both >= 0.9
    assert [b.shape for b in ann.box_labels] == [(1, 3), (1, 3), (2, 3)]
    assert select_proposals(np.array([[0, 0, 0.5, 0.5, 0.8], [0.5, 0.5, 1, 1, 0.8]]), 0.9).shape == (
        2,
        4,
    )  # ties at the best


def test_the_documented_pickle_conversion_keeps_scores_exact(tmp_path):
    """The conversion snippet of docs/detection.md, run on a pickle made here (a trusted one): a score
    of 0.89996 stays below the 0.9 threshold, the proposals read back equal the pickle's."""
    import pickle
    import re

    doc = (Path(__file__).parents[1] / "docs" / "detection.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "pickle.load" in block)
    name = "ava_dense_proposals_val.FAIR.recall_93.9"
    proposals = {"v,0902": np.array([[0.1, 0.2, 0.3, 0.4, 0.89996], [0.5, 0.5, 0.6, 0.7, 0.95]], dtype=np.float32)}
    (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(proposals))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(snippet, {})
    finally:
        os.chdir(cwd)
    written = [p for p in tmp_path.iterdir() if p.name.startswith(name) and p.suffix != ".pkl"]
    assert len(written) == 1
    read = read_proposals(written[0])[("v", 902)]
    np.testing.assert_array_equal(read, proposals["v,0902"].astype(np.float64))
    np.testing.assert_array_equal(
        select_proposals(read, 0.9), proposals["v,0902"][1:, :4]
    )  # the 0.89996 box is dropped


def test_all_actions_are_trained_and_the_label_map_ones_evaluated(ava_files, tmp_path):
    """data.ava.num_actions = N: one output per action id 1..N, trained on every row of them (the
    fixtures' action 2 is not in the label map); the result CSV and the mAP cover the label map's."""
    root, files = ava_files
    ann = load_annotations(ava_data(root, files, ava={"num_actions": 8}), "train")
    assert ann.class_ids == list(range(1, 9)) and ann.evaluated_ids == [1, 3, 8] and ann.dropped_rows == 0
    assert ann.class_names[:3] == ["bend/bow (at the waist)", "action 2", "crawl"]
    np.testing.assert_array_equal(
        ann.box_labels[1], [[0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 1]]
    )  # action 2 is a target
    val = load_annotations(ava_data(root, files, ava={"num_actions": 8}), "val")
    assert val.gt.labels.tolist() == [1, 8, 3]
    from mugstan.detection.evaluate import write_results

    scores = {i: np.tile(np.arange(1, 9) / 10, (len(b), 1)) for i, b in enumerate(val.boxes)}
    rows = write_results(tmp_path / "d.csv", val, scores)
    table = [line.split(",") for line in (tmp_path / "d.csv").read_text().splitlines()]
    assert rows == len(table) == 3 * 3 and {r[6] for r in table} == {"1", "3", "8"}
    assert all(float(r[7]) == int(r[6]) / 10 for r in table)  # each action's own output
    with pytest.raises(ValueError, match=r"action ids \[8\] are outside 1..5 \(data.ava.num_actions=5\)"):
        load_annotations(ava_data(root, files, ava={"num_actions": 5}), "train")


def test_proposals_csv_and_json_agree_and_pickles_are_refused(tmp_path):
    (tmp_path / "p.csv").write_text("v,0902,0.1,0.2,0.3,0.4,0.95\nv,0902,0.5,0.5,0.6,0.7,0.5\nw,0903,0,0,1,1,1.0\n")
    (tmp_path / "p.json").write_text(
        json.dumps({"v,0902": [[0.1, 0.2, 0.3, 0.4, 0.95], [0.5, 0.5, 0.6, 0.7, 0.5]], "w,0903": [[0, 0, 1, 1, 1.0]]})
    )
    a, b = read_proposals(tmp_path / "p.csv"), read_proposals(tmp_path / "p.json")
    assert a.keys() == b.keys() == {("v", 902), ("w", 903)}
    for k in a:
        np.testing.assert_allclose(a[k], b[k])
    (tmp_path / "p.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="does not unpickle"):
        read_proposals(tmp_path / "p.pkl")
    (tmp_path / "short.csv").write_text("v,0902,0.1,0.2,0.3\n")
    with pytest.raises(ValueError, match=r"short.csv:1: expected 7 columns"):
        read_proposals(tmp_path / "short.csv")
    # proposals without scores (mmaction2 takes [N, 4] arrays whole): score 1.0
    (tmp_path / "four.csv").write_text("v,0902,0.1,0.2,0.3,0.4\n")
    (tmp_path / "four.json").write_text(json.dumps({"v,0902": [[0.1, 0.2, 0.3, 0.4]]}))
    for name in ("four.csv", "four.json"):
        np.testing.assert_allclose(read_proposals(tmp_path / name)[("v", 902)], [[0.1, 0.2, 0.3, 0.4, 1.0]])
    (tmp_path / "ragged.json").write_text(json.dumps({"v,0902": [[0.1, 0.2, 0.3, 0.4, 0.9], [0.1]]}))
    with pytest.raises(ValueError, match=r"ragged.json: entry 'v,0902' must be a list of \[x1, y1, x2, y2, score\]"):
        read_proposals(tmp_path / "ragged.json")


def test_malformed_annotation_rows_name_file_line_and_field(tmp_path):
    (tmp_path / "a.csv").write_text("v,0902,0.1,0.2,0.3,0.4,1,0\nv,0902,0.1,0.2,1.3,0.4,1,0\n")
    with pytest.raises(ValueError, match=r"a.csv:2: box .* normalised"):
        read_ava_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("v,09x2,0.1,0.2,0.3,0.4,1,0\n")
    with pytest.raises(ValueError, match=r"b.csv:1: column 2 \(timestamp\)"):
        read_ava_csv(tmp_path / "b.csv")


def test_keyframe_clip_samples_frames_around_the_keyframe(ava_files):
    root, files = ava_files
    # T = 4, 2 source frames apart at 8 fps: frame T // 2 is the keyframe (second 1 -> frame 8)
    assert keyframe_times(1.0, 4, 2, 8.0).tolist() == [0.5, 0.75, 1.0, 1.25]
    # training jitter: each frame moves by its own randint(-interval // 2, (interval + 1) // 2) source
    # frames, as mmaction2's SampleAVAFrames: -2..1 for interval 4, -1..0 for 2, -2..1 for 3
    for interval, expected in ((4, {-2, -1, 0, 1}), (2, {-1, 0}), (3, {-2, -1, 0, 1})):
        rng = np.random.default_rng(0)
        moved = np.concatenate(
            [keyframe_times(1.0, 4, interval, 8.0, rng) - keyframe_times(1.0, 4, interval, 8.0) for _ in range(50)]
        )
        assert set(np.round(moved * 8).astype(int).tolist()) == expected
    cfg = ava_data(root, files)
    ds = build_dataset(cfg, "val", train=False)
    item = ds[1]  # video0, 0901: second 1 of the file
    assert (
        item["frames"].shape == (4, 3, 32, 32) and item["boxes"].shape == (1, 4) and item["box_labels"].shape == (1, 3)
    )
    from mugstan.data.transforms import CLIP_MEAN, CLIP_STD

    pixel = item["frames"][:, 0, 20:, :].mean((1, 2)) * CLIP_STD[0] + CLIP_MEAN[0]  # lower part, red channel, 0-1
    np.testing.assert_allclose((pixel * 255).numpy(), [(9 * i) % 256 for i in (4, 6, 8, 10)], atol=4)
    # a clip running past the start repeats the first frame (second 0 = frame 0)
    first = ds[0]["frames"][:, 0, 20:, :].mean((1, 2)) * CLIP_STD[0] + CLIP_MEAN[0]
    np.testing.assert_allclose((first * 255).numpy(), [0, 0, 0, 18], atol=4)


def test_flip_moves_the_boxes_with_the_frames(ava_files):
    root, files = ava_files
    cfg = ava_data(root, files, hflip=True)
    ds = build_dataset(cfg, "train", train=True)
    flipped = [ds.get(0) for ds.reader.epoch in range(8)]
    boxes = {tuple(np.round(it["boxes"][0].numpy().astype(float), 4).tolist()) for it in flipped}
    assert boxes == {(0.1, 0.2, 0.4, 0.9), (0.6, 0.2, 0.9, 0.9)}  # x1, x2 -> 1 - x2, 1 - x1


# ---- the model ----------------------------------------------------------------------------------
def tiny_detector(branch="stan", classes=3, roi_size=2):
    from mugstan.config import DetectionConfig, STANConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="mugstan-tiny",
        branch=branch,
        head="mean",
        task="detection",
        class_names=["a", "b", "c"][:classes],
        stan=STANConfig(depth=2, drop_path=0.0),
        detection=DetectionConfig(roi_size=roi_size, dropout=0.0),
    )
    return build_model(cfg).eval(), cfg


def test_detector_shapes_and_frozen_parts():
    model, cfg = tiny_detector()
    frames, mask = torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4, dtype=torch.bool)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]])
    index = torch.tensor([0, 1, 1])
    assert model.feature_map(frames, mask).shape == (2, 64, 4, 4)  # [B, D, g, g]: width 64, 32 px / patch 8
    out = model(frames, mask, boxes, index)
    assert out["logits"].shape == (3, 3)
    assert model(frames, mask, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))["logits"].shape == (0, 3)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.branch" in trainable and "classifier.weight" in trainable
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(("encoder.head", "encoder.logit_scale"))
    )
    assert not any(
        p.requires_grad for n, p in model.encoder.backbone.clip.named_parameters() if not n.startswith("visual.")
    )


def test_roi_pooling_on_known_boxes():
    model, _ = tiny_detector(roi_size=2)
    fmap = torch.arange(2 * 2 * 16, dtype=torch.float32).view(
        2, 2, 4, 4
    )  # [B=2, D=2, 4, 4], value = 16 * channel + 4 * row + col (+ 32 for b=1)
    # the box of cells rows 1-2, columns 2-3 of clip 1: 2 x 2 bins, one cell each, sampled at the cell centres
    box = torch.tensor([[0.5, 0.25, 1.0, 0.75]])
    feats = model.roi_features(fmap, box, torch.tensor([1]))
    cells = fmap[1, :, 1:3, 2:4]
    assert torch.allclose(feats, cells.amax((1, 2))[None])  # max over the bins = the largest cell
    # one cell, roi_size 1: exactly that cell's value
    one, _ = tiny_detector(roi_size=1)
    cell = one.roi_features(fmap, torch.tensor([[0.25, 0.5, 0.5, 0.75]]), torch.tensor([0]))  # row 2, column 1
    assert torch.allclose(cell, fmap[0, :, 2, 1][None])


def test_order_blind_baseline_and_stan():
    """Reversing the frames leaves the baseline's scores unchanged (the map is a mean over time of
    per-frame tokens); STAN's temporal modules see the order (after one step away from the identity)."""
    frames, mask = torch.randn(1, 4, 3, 32, 32), torch.ones(1, 4, dtype=torch.bool)
    boxes, index = torch.tensor([[0.1, 0.1, 0.6, 0.6]]), torch.tensor([0])
    none, _ = tiny_detector("none")
    assert torch.allclose(
        none(frames, mask, boxes, index)["logits"], none(frames.flip(1), mask, boxes, index)["logits"], atol=1e-5
    )
    stan, _ = tiny_detector("stan")
    for fc in (m.temporal_fc for m in stan.encoder.branch.temporal):
        torch.nn.init.normal_(fc.weight, std=0.2)
    a, b = stan(frames, mask, boxes, index)["logits"], stan(frames.flip(1), mask, boxes, index)["logits"]
    assert not torch.allclose(a, b, atol=1e-4)


def test_detection_loss_is_binary_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (
        -(
            torch.log(torch.sigmoid(torch.tensor(2.0)))
            + torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))
            + torch.log(torch.tensor(0.5))
            + torch.log(torch.sigmoid(torch.tensor(3.0)))
        )
        / 4
    )
    assert DetectionLoss()({"logits": logits}, {"box_labels": labels}).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="do not match"):
        DetectionLoss()({"logits": logits}, {"box_labels": labels[:1]})


def test_collated_batch_trains_the_detector(ava_files):
    root, files = ava_files
    data = ava_data(root, files)
    ann = load_annotations(data, "train")
    model, cfg = tiny_detector()
    model.train()
    batch = collate([build_dataset(data, "train", train=True, ann=ann)[i] for i in range(3)])
    assert batch["box_batch_index"].tolist() == [0, 0, 1, 2] and batch["boxes"].shape == (4, 4)
    loss_fn = build_loss(cfg, model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        loss = loss_fn(model(**model_inputs(model, batch, torch.device("cpu"))), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first  # the same batch 15 steps later: measured 0.19 of the first loss


# ---- the CLI end to end -------------------------------------------------------------------------
def test_train_and_eval_through_the_cli(tmp_path):
    from mugstan.data.synthetic_detection import DetectionParams, detection_paths, generate_detection

    meta = generate_detection(tmp_path / "data", DetectionParams(videos=6, test_videos=3, seed=1), progress=False)
    assert meta["counts"]["test"] == {"videos": 3, "keyframes": 6, "boxes": 12}
    paths = detection_paths(tmp_path / "data")
    config = yaml.safe_load((Path(__file__).parents[1] / "src/mugstan/configs/synthetic/det_stan.yaml").read_text())
    config["data"].update(
        root=paths["data.root"],
        train_ann=paths["data.train_ann"],
        val_ann=paths["data.val_ann"],
        test_ann=paths["data.test_ann"],
        extra=paths["data.extra"],
        num_workers=0,
        num_frames=3,
    )
    config["train"].update(output_dir=str(tmp_path / "run"), epochs=1, batch_size=4)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    def run(*a):
        return subprocess.run([sys.executable, "-m", "mugstan.cli", *a], env=env, capture_output=True, text=True)
    trained = run("train", str(tmp_path / "c.yaml"), "--no-progress")
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    test = results["test"]
    assert test["boxes"] == "proposals" and results["best"]["metric"] == "mAP@0.5"
    out = run(
        "eval",
        str(tmp_path / "c.yaml"),
        "--checkpoint",
        str(tmp_path / "run" / "checkpoints" / "best"),
        "--json",
        str(tmp_path / "r.json"),
        f"eval.detections={tmp_path / 'dets.csv'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "frame-mAP@0.5" in out.stdout
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["detection"]["mAP"] == test["detection"]["mAP"]  # the best checkpoint again: the same number
    lines = (tmp_path / "dets.csv").read_text().splitlines()
    assert len(lines) == 6 * 2 * 10 == again["detection"]["counts"]["rows_written"]  # keyframes x proposals x classes
    # the reported mAP is the frame-mAP of the rows written, scored against the test CSV
    from mugstan.data.datasets.ava import read_ava_csv, read_label_map

    gt, _ = read_ava_csv(paths["data.test_ann"])
    written, _ = read_ava_csv(tmp_path / "dets.csv", scores=True)
    classes, _ = read_label_map(paths["data.extra"]["label_map"])
    assert again["detection"]["mAP"] == pytest.approx(frame_map(gt, written, classes)["mAP"], abs=1e-9)
    # a row per keyframe, proposal scoring at least data.ava.proposal_score (0.9) and action 1-10, in the order of
    # the proposals file, with the proposal's box as written there
    proposals = [row.split(",") for row in Path(paths["data.extra"]["test_proposals"]).read_text().splitlines()]
    kept = [p[:6] for p in proposals if float(p[6]) >= 0.9]
    assert [line.split(",")[:7] for line in lines] == [[*p, str(a)] for p in kept for a in range(1, 11)]
    assert all(0 < float(line.split(",")[7]) < 1 for line in lines)  # sigmoid scores


# ---- bad files through `mugstan data check` -----------------------------------------------------
@pytest.mark.parametrize("case", ["pickle_proposals", "seven_column_annotation", "text_action_id", "empty_label_map"])
def test_bad_ava_files_end_in_one_error_line(ava_files, tmp_path, capsys, case):
    """Each of these ended in a traceback: now one line `error: FILE...` with the fix, exit 2."""
    from mugstan import cli

    root, files = ava_files
    files = dict(files)
    if case == "pickle_proposals":
        (tmp_path / "p.pkl").write_bytes(b"\x80\x04N.")
        files["val_proposals"], expected = str(tmp_path / "p.pkl"), ("p.pkl", "does not unpickle", "docs/detection.md")
    elif case == "seven_column_annotation":
        (tmp_path / "v.csv").write_text("video0,0900,0.1,0.2,0.4,0.9,1,0\nvideo0,0901,0.1,0.2,0.4,0.9,1\n")
        files["val"], expected = str(tmp_path / "v.csv"), ("v.csv:2", "expected 8 columns", "person_id")
    elif case == "text_action_id":
        (tmp_path / "v.csv").write_text("video0,0900,0.1,0.2,0.4,0.9,stand,0\n")
        files["val"], expected = (
            str(tmp_path / "v.csv"),
            ("v.csv:1", "column 7 (action_id) must be a number", "'stand'"),
        )
    else:
        (tmp_path / "m.pbtxt").write_text("# no items\n")
        files["label_map"], expected = str(tmp_path / "m.pbtxt"), ("m.pbtxt", "no label blocks", "label_id")
    config = {
        "data": {
            "dataset": "ava",
            "root": str(root),
            "test_ann": files["val"],
            "extra": {"label_map": files["label_map"], "test_proposals": files["val_proposals"]},
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    rc = cli.main(["data", "check", str(tmp_path / "c.yaml")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (rc, out, err)
    assert all(text in err for text in expected), err


def test_evaluation_refuses_a_model_with_other_outputs(ava_files):
    """A checkpoint trained with the label map's 3 actions, evaluated with data.ava.num_actions=8:
    a one-line mismatch naming the setting, before anything runs."""
    from mugstan.config import ExperimentConfig
    from mugstan.detection.evaluate import evaluate_detection
    from mugstan.errors import MismatchError

    root, files = ava_files
    data = ava_data(root, files, ava={"num_actions": 8})
    model, _ = tiny_detector(classes=3)
    with pytest.raises(MismatchError, match=r"3 action outputs, the data config 8 \(data.ava.num_actions=8\)"):
        evaluate_detection(model, ExperimentConfig(data=data), load_annotations(data, "val"), "val", dist=None)
