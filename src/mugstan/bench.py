"""``mugstan bench synthetic``: every temporal module and head on the synthetic benchmark, several seeds.

    mugstan bench synthetic [--models meanP seqTransf tdb_tab stan stan_conv mugstan]
                            [--seeds 0 1 2] [--out bench_synthetic] [--videos 600] [--quick]

For each seed: render the benchmark with that seed, fine-tune every model of ``configs/synthetic/``
from the packaged small CLIP (``--pretrain``: from one pretrained on that seed's stills) and evaluate
it, exactly as ``mugstan demo`` does for two (``mugstan.demo.prepare`` / ``finetune``). Writes, in
``--out``:

    seed{K}/...          each seed's data, runs and checkpoints
    runs.jsonl           one line per (seed, model): the table row and its pair accuracy per motion pair
    summary.md           mean ± sample standard deviation over the seeds, per model; the mean pair
                         accuracy of each motion pair
    summary.json         the same numbers, the seeds and the chance levels
    summary.png          the chart, with the spread as error bars

A seed whose runs are all in ``runs.jsonl`` already is not run again, so an interrupted benchmark
continues where it stopped.

    mugstan bench synthetic --detection [--seeds 0] [--out bench_detection] [--quick]

runs the detection comparison instead (``mugstan.detection.synthetic``): per seed, a small CLIP
pretrained on that seed's stills (as when its figures were measured), the synthetic AVA-format
detection set, STAN and the order-blind baseline (CLIP per frame, time-pooled) trained and tested;
``detection_runs.jsonl``, ``detection.md`` (mAP mean ± std over the seeds, and per-class AP of the
last seed) and ``detection.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from mugstan import demo

logger = logging.getLogger(__name__)


def aggregate(runs: list[dict], models: list[str]) -> list[dict]:
    """Rows of mean and sample std (0 for one seed) per model, in ``models`` order."""
    rows = []
    for name in models:
        mine = [r for r in runs if r["name"] == name]
        row = {"model": demo.LABELS[name], "seeds": len(mine)}
        for key in (*demo.METRICS, "train seconds"):
            values = [float(r[key]) for r in mine]
            row[key] = statistics.fmean(values)
            row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def pair_means(runs: list[dict], models: list[str]) -> list[dict]:
    """Per model, the mean pair accuracy of each motion pair over the seeds that recorded it (runs
    logged before the breakdown existed have none); [] when no run has it."""
    rows = []
    for name in models:
        mine = [r["pair accuracy by motion"] for r in runs if r["name"] == name and "pair accuracy by motion" in r]
        if mine:
            rows.append(
                {
                    "model": demo.LABELS[name],
                    "seeds": len(mine),
                    **{k: statistics.fmean(m[k] for m in mine) for k in mine[0]},
                }
            )
    return rows


def synthetic(
    out: Path,
    models: list[str],
    seeds: list[int],
    videos=None,
    quick: bool = False,
    progress: bool = True,
    pretrain: bool = False,
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "runs.jsonl"
    runs = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    start = time.time()
    for seed in seeds:
        todo = [m for m in models if not any(r["seed"] == seed and r["name"] == m for r in runs)]
        if not todo:
            logger.info(f"seed {seed}: every model already in {log_path}")
            continue
        logger.info(f"\n=== seed {seed} ({len(todo)} models) [{(time.time() - start) / 60:.1f} min]")
        prep = demo.prepare(out / f"seed{seed}", seed, quick, videos, progress, pretrain=pretrain)
        for name in todo:
            logger.info(f"\n--- seed {seed}: {demo.LABELS[name]} [{(time.time() - start) / 60:.1f} min]")
            done = demo.finetune(name, prep, out / f"seed{seed}", seed, quick, progress)
            row = done["row"]
            record = {
                "seed": seed,
                "name": name,
                **row,
                "pair accuracy by motion": done["details"]["pair_accuracy_by_motion"],
            }
            runs.append(record)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            logger.info(
                f"    t2v R@1 {row['t2v R@1']:.1f}, pair accuracy {row['pair accuracy']:.1f}, zero-shot motion top-1 "
                f"{row['zero-shot motion top-1']:.1f}"
            )
    runs = [r for r in runs if r["seed"] in seeds and r["name"] in models]
    rows = aggregate(runs, models)
    meta = json.loads(next((out / f"seed{seeds[0]}").glob("data_*/meta.json")).read_text())
    chance = demo.chance_levels(meta)
    table = demo.markdown_table(rows)
    by_pair = pair_means(runs, models)
    if by_pair:
        keys = [k for k in by_pair[0] if k not in ("model", "seeds")]
        table += f"\n\npair accuracy by motion pair, mean over seeds:\n\n{demo.markdown_table(by_pair, keys)}"
    header = (
        f"Synthetic temporal benchmark: mean ± std over seeds {', '.join(map(str, seeds))} "
        f"({meta['counts']['test']} test videos; chance: t2v R@1 {chance['t2v R@1']:.1f}, pair accuracy 50, "
        f"motion top-1 {chance['zero-shot motion top-1']:.0f})"
    )
    (out / "summary.md").write_text(f"{header}\n\n{table}\n")
    (out / "summary.json").write_text(
        json.dumps({"seeds": seeds, "chance": chance, "rows": rows, "pair_accuracy_by_motion": by_pair}, indent=2)
    )
    demo.bar_chart(rows, out / "summary.png", f"synthetic temporal benchmark, {len(seeds)} seed(s)", chance)
    logger.info(f"\n{header}\n\n{table}\n\nwrote {out / 'summary.md'}, summary.json and summary.png")
    return rows


def detection(out: Path, seeds: list[int], videos=None, quick: bool = False, progress: bool = True) -> list[dict]:
    """STAN vs the order-blind baseline on the synthetic detection set, several seeds."""
    from mugstan.data.synthetic_detection import DetectionParams, generate_detection
    from mugstan.detection.synthetic import DETECTION_LABELS, DETECTION_MODELS, finetune_detection, markdown

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "detection_runs.jsonl"
    runs = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    per_class = {}
    for seed in seeds:
        todo = [m for m in DETECTION_MODELS if not any(r["seed"] == seed and r["name"] == m for r in runs)]
        if not todo:
            continue
        # as when the detection figures were measured: a CLIP pretrained on the stills of 8-frame videos
        prep = demo.prepare(out / f"seed{seed}", seed, quick, None, progress, pretrain=True, frames=8)
        params = DetectionParams(videos=videos or (16 if quick else 300), test_videos=8 if quick else 60, seed=seed)
        generate_detection(out / f"seed{seed}", params, progress=progress)
        for name in todo:
            logger.info(f"\n--- seed {seed}: detection, {DETECTION_LABELS[name]}")
            done = finetune_detection(name, out / f"seed{seed}", prep.clip, out / f"seed{seed}", seed, quick, progress)
            record = {"seed": seed, "name": name, **done["row"], "per_class": done["per_class"]}
            runs.append(record)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
    runs = [r for r in runs if r["seed"] in seeds]
    rows = []
    for name in DETECTION_MODELS:
        mine = [r for r in runs if r["name"] == name]
        values = [r["mAP@0.5"] for r in mine]
        rows.append(
            {
                "model": DETECTION_LABELS[name],
                "seeds": len(mine),
                "mAP@0.5": statistics.fmean(values),
                "mAP@0.5 std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "train seconds": statistics.fmean(r["train seconds"] for r in mine),
            }
        )
        per_class[DETECTION_LABELS[name]] = mine[-1]["per_class"]
    header = (
        f"Synthetic detection (AVA format, frame-mAP@0.5 over 10 motions, proposals): mean ± std over seeds "
        f"{', '.join(map(str, seeds))}; per-class AP of seed {seeds[-1]}"
    )
    text = f"{header}\n\n{markdown(rows, per_class)}\n"
    (out / "detection.md").write_text(text)
    (out / "detection.json").write_text(json.dumps({"seeds": seeds, "rows": rows, "per_class": per_class}, indent=2))
    logger.info(f"\n{text}\nwrote {out / 'detection.md'} and detection.json")
    return rows


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    syn = sub.add_parser("synthetic", help="every temporal module and head on the synthetic benchmark, several seeds")
    syn.add_argument(
        "--models",
        "--heads",
        nargs="+",
        default=list(demo.ALL_MODELS),
        choices=list(demo.ALL_MODELS),
        help="configs/synthetic/ runs to compare (default: all)",
    )
    syn.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="data and training seeds (default: 0 1 2)")
    syn.add_argument("--out", default="bench_synthetic", help="output folder (default: %(default)s)")
    syn.add_argument("--videos", type=int, default=None, help="training videos per seed (default 600)")
    syn.add_argument("--quick", action="store_true", help="tiny sizes: checks every stage, numbers mean nothing")
    syn.add_argument(
        "--detection",
        action="store_true",
        help="the detection comparison instead (STAN vs the order-blind baseline on the synthetic AVA-format set)",
    )
    syn.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the small CLIP on each seed's stills instead of taking the packaged one (synthetic only)",
    )
    syn.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines and tables only)")


def main(args: argparse.Namespace) -> int:
    if args.detection:
        detection(Path(args.out), args.seeds, args.videos, args.quick, not args.no_progress)
        return 0
    synthetic(Path(args.out), args.models, args.seeds, args.videos, args.quick, not args.no_progress, args.pretrain)
    return 0
