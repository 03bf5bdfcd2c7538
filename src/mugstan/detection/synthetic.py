"""The detection comparison of ``mugstan bench synthetic --detection``: STAN vs the order-blind baseline.

For one seed: render the synthetic AVA-format detection set (``mugstan.data.synthetic_detection.generate_detection``:
several shapes per video, a box per shape and keyframe, the shape's motion as its action), then
fine-tune ``configs/synthetic/det_stan.yaml`` (STAN's patch tokens) and ``det_none.yaml`` (CLIP per
frame, time-pooled: order-blind) from the same pretrained CLIP through ``mugstan train``'s engine,
and score the best checkpoint of each on the test split with proposals (frame-mAP@0.5 over the ten
motions, and the AP of each motion).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from mugstan import demo

DETECTION_MODELS = ("det_none", "det_stan")
DETECTION_LABELS = {"det_none": "CLIP per frame, time-pooled (order-blind)", "det_stan": "STAN-self"}
QUICK = ["train.epochs=1", "train.max_steps=4"]


def finetune_detection(name: str, data: Path, clip: Optional[Path], out: Path, seed: int = 0, quick: bool = False,
                       progress: bool = True, overrides=()) -> dict:
    """Train configs/synthetic/NAME.yaml on the detection set in ``data`` from ``clip``; test its best checkpoint."""
    from mugstan.data.synthetic_detection import detection_paths
    from mugstan.engine.train import train

    paths = detection_paths(data)
    if clip:
        paths["model.weights"] = str(clip)
    cfg = demo.stage_config(name, paths, out, [f"train.seed={seed}", *(QUICK if quick else []), *overrides])
    start = time.time()
    results = train(cfg, progress=progress)
    seconds = time.time() - start
    test = results["test"]
    per_class = test["detection"]["per_class"]
    row = {"model": DETECTION_LABELS[name], "mAP@0.5": test["detection"]["mAP"], "train seconds": round(seconds)}
    return {"row": row, "per_class": per_class, "test": test, "best": results["best"], "train_seconds": seconds}


def markdown(rows: list[dict], per_class: dict[str, dict]) -> str:
    """The mAP table and the per-class AP table (one column per model)."""
    lines = [demo.markdown_table(rows, ("mAP@0.5", "train seconds")), "", "| action | " + " | ".join(per_class) + " |",
             "|---|" + "---:|" * len(per_class)]
    classes = list(next(iter(per_class.values())))
    for c in classes:
        cells = [per_class[m][c] for m in per_class]
        lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)
