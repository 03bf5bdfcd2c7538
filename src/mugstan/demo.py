"""``mugstan demo``: the whole system on the built-in synthetic benchmark, on a laptop CPU.

1. Render the synthetic benchmark (or reuse it): coloured shapes doing time-reversible motions.
2. Pretrain a small CLIP from scratch on single frames with appearance-only captions: it learns
   colour and shape, nothing about motion (``configs/synthetic/pretrain_clip.yaml``).
3. Fine-tune video models from that CLIP on video-text pairs (meanP and STAN by default), through
   the same engine, data pipeline and checkpoints as real benchmarks.
4. Evaluate text-to-video retrieval on the motion-sensitive test set (every appearance with both
   motions of a pair), the pair accuracy (does the caption score its own video above the same
   clip played backwards?) and zero-shot motion recognition; print a table, write
   ``results.json``, ``results.png`` and contact sheets of example queries.

``mugstan bench synthetic`` runs every temporal module and head over several seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mugstan.config import ExperimentConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthetic"
DEMO_MODELS = ("meanp", "stan_self")
ALL_MODELS = ("meanp", "seqtransf", "tdb_tab", "stan_self", "stan_conv", "mugstan")
LABELS = {"meanp": "meanP (CLIP4Clip)", "seqtransf": "seqTransf (CLIP4Clip)", "tdb_tab": "TDB+TAB (CLIP2Video)",
          "stan_self": "STAN-self", "stan_conv": "STAN-conv", "mugstan": "Mug-STAN"}


def config_dir() -> Path:
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"{CONFIG_DIR} is missing: the synthetic configs ship in the repository's configs/synthetic/")
    return CONFIG_DIR


def stage_config(name: str, data: Path, out: Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """configs/synthetic/NAME.yaml with DATA / OUT filled in, plus overrides."""
    text = (config_dir() / f"{name}.yaml").read_text().replace("DATA", str(data)).replace("OUT", str(out))
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_config(path, overrides)


def export_clip(checkpoint: Path, dest: Path) -> Path:
    """The CLIP of a trained meanP checkpoint as an open_clip-layout file (with its learned scale)."""
    from safetensors.torch import load_file

    from mugstan.backbones.convert import save_safetensors

    state = load_file(str(checkpoint / "model.safetensors"))
    clip = {k[len("backbone.clip."):]: v for k, v in state.items() if k.startswith("backbone.clip.")}
    clip["logit_scale"] = state["logit_scale.log_scale"].clone()
    save_safetensors(clip, dest, {"format": "open_clip", "source": str(checkpoint)})
    return dest


def twins(data: Path, split: str = "test") -> np.ndarray:
    """For each video of the split, the index of the same clip played backwards."""
    from mugstan.data.synthetic import SynthParams, plan_split

    params = SynthParams(**json.loads((data / "meta.json").read_text())["params"])
    index, out = 0, []
    for clip in plan_split(split, params):
        ids = list(range(index, index + len(clip.motions)))
        out.extend(reversed(ids) if len(ids) == 2 else ids)
        index += len(ids)
    return np.array(out)


@torch.no_grad()
def pair_accuracy(model, cfg: ExperimentConfig, data: Path) -> tuple[float, torch.Tensor, list]:
    """Share of test captions that score their video above its time-reversed twin (ties fail).
    Also returns the score matrix and the test annotations' captions."""
    from mugstan.data.datasets import load_annotations
    from mugstan.engine.distributed import DistInfo
    from mugstan.engine.evaluate import _stack, embed_clips, embed_texts
    from mugstan.models import Embeddings

    ann = load_annotations(cfg.data, "test")
    videos, _ = embed_clips(model, cfg, ann, DistInfo(), "test", progress=False)
    video = _stack([videos[i] for i in range(len(ann.clips))])
    text = embed_texts(model, ann.captions, torch.device("cpu"))
    scores = model.similarity(Embeddings(text.x, text.mask), Embeddings(video.x, video.mask)).float()
    own = torch.tensor(ann.caption_clip)
    twin = torch.as_tensor(twins(data))[own]
    rows = torch.arange(len(own))
    correct = scores[rows, own] > scores[rows, twin]
    return 100.0 * correct.float().mean().item(), scores, ann


def contact_sheet(video_paths: list[str], query: str, truth: int, ranked: list[int], scores: list[float], dest: Path, frames: int = 8) -> None:
    """One row per retrieved video: its sampled frames, score, and whether it is the right one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mugstan.data.video import read_clip

    fig, axes = plt.subplots(len(ranked), 1, figsize=(frames * 0.9, len(ranked) * 1.15 + 0.5))
    for ax, idx, score in zip(np.atleast_1d(axes), ranked, scores):
        clip = read_clip(video_paths[idx], frames).permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
        ax.imshow(np.concatenate(list(clip), axis=1))
        ax.set_xticks([])
        ax.set_yticks([])
        ok = idx == truth
        ax.set_ylabel(f"{score:.1f}", rotation=0, labelpad=18, va="center")
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:green" if ok else "tab:red")
            spine.set_linewidth(3 if ok else 1)
    fig.suptitle(f'"{query}"  (green: the right video; time runs left to right)', fontsize=9)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def bar_chart(rows: list[dict], dest: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["model"] for r in rows]
    metrics = [("t2v R@1", "text-to-video R@1"), ("pair accuracy", "pair accuracy (own clip vs reversed)"), ("zero-shot motion top-1", "zero-shot motion top-1")]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.8))
    for k, (key, legend) in enumerate(metrics):
        vals = [r[key] for r in rows]
        ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=legend)
    ax.axhline(50, color="grey", ls="--", lw=0.8)
    ax.text(len(labels) - 0.5, 51, "pair chance", color="grey", fontsize=8, ha="right")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    keys = ["t2v R@1", "t2v R@5", "v2t R@1", "pair accuracy", "zero-shot motion top-1", "train seconds"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def run(out: Path, models: Sequence[str] = DEMO_MODELS, seed: int = 0, quick: bool = False, progress: bool = True,
        videos: Optional[int] = None, examples: int = 3) -> dict:
    """Generate, pretrain, fine-tune, evaluate. Returns the results dict (also in out/results.json)."""
    from mugstan.data.synthetic import SynthParams, generate
    from mugstan.engine.checkpoint import load_model
    from mugstan.engine.evaluate import evaluate
    from mugstan.engine.train import train

    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size_overrides = ["train.epochs=1", "train.max_steps=6", "data.num_frames=4"] if quick else []
    params = SynthParams(videos=videos or (64 if quick else 1200), frames=8 if quick else 16, size=32 if quick else 64, seed=seed)
    data = out / f"data_v{params.videos}_f{params.frames}_s{params.size}_seed{seed}"

    def stage(title: str) -> None:
        print(f"\n== [{time.time() - start:6.1f} s] {title}", flush=True)

    stage(f"1/4 synthetic benchmark ({params.videos} training videos, {params.frames} frames of {params.size} px, seed {seed})")
    meta = generate(data, params, progress=progress)
    print(f"   {meta['counts']} videos in {data}")

    stage("2/4 pretraining a small CLIP from scratch on single frames with appearance-only captions")
    pre = stage_config("pretrain_clip", data, out, [f"train.seed={seed}", *(["train.max_steps=6", "train.epochs=1"] if quick else [])])
    t0 = time.time()
    pre_results = train(pre, progress=progress)
    clip_file = export_clip(Path(pre.train.output_dir) / "checkpoints" / "best", out / "pretrain_clip" / "clip.safetensors")
    print(f"   pretrained in {time.time() - t0:.0f} s -> {clip_file}")

    rows, per_model = [], {}
    for k, name in enumerate(models):
        stage(f"3/4 fine-tuning {LABELS[name]} from the pretrained CLIP ({k + 1}/{len(models)})")
        cfg = stage_config(name, data, out, [f"train.seed={seed}", *size_overrides])
        t0 = time.time()
        results = train(cfg, progress=progress)
        seconds = time.time() - t0
        model, _ = load_model(Path(cfg.train.output_dir) / "checkpoints" / "best")
        pair, scores, ann = pair_accuracy(model, cfg, data)
        rec_cfg = stage_config(name, data, out, [f"train.seed={seed}", *size_overrides, f"data.test_ann={data / 'recognition_test.jsonl'}"])
        rec = evaluate(model, rec_cfg, "test", progress=False)
        test = results["test"]["retrieval"]
        rows.append({"model": LABELS[name], "t2v R@1": test["t2v"]["R@1"], "t2v R@5": test["t2v"]["R@5"], "v2t R@1": test["v2t"]["R@1"],
                     "pair accuracy": pair, "zero-shot motion top-1": rec["recognition"]["top1"], "train seconds": round(seconds)})
        per_model[name] = {"test": results["test"], "zero_shot_recognition": rec["recognition"], "pair_accuracy": pair,
                           "best": results["best"], "train_seconds": seconds, "scores": scores, "ann": ann}
        print(f"   {LABELS[name]}: t2v R@1 {rows[-1]['t2v R@1']:.1f}, pair accuracy {pair:.1f}, zero-shot motion top-1 {rows[-1]['zero-shot motion top-1']:.1f}")

    stage("4/4 results")
    table = markdown_table(rows)
    print(table)
    elapsed = time.time() - start
    print(f"\nfinished in {elapsed / 60:.1f} min; pair chance = 50%, t2v R@1 chance = {100 / meta['counts']['test']:.1f}%")
    bar_chart(rows, out / "results.png", f"synthetic temporal benchmark (seed {seed})")
    sheets = []
    last = models[-1]
    scores, ann = per_model[last]["scores"], per_model[last]["ann"]
    paths = [c.path for c in ann.clips]
    for q in np.linspace(0, len(ann.captions) - 1, examples).astype(int):
        ranked = scores[q].argsort(descending=True)[:4].tolist()
        dest = out / f"query_{q:03d}.png"
        contact_sheet(paths, ann.captions[q], ann.caption_clip[q], ranked, scores[q, ranked].tolist(), dest)
        sheets.append({"query": ann.captions[q], "truth": paths[ann.caption_clip[q]], "top": [paths[i] for i in ranked], "image": dest.name})
    summary = {
        "dataset": {"folder": str(data), **meta}, "pretraining": {k: pre_results[k] for k in ("steps", "best")},
        "rows": rows, "examples": {"model": LABELS[last], "queries": sheets}, "seconds": round(elapsed, 1),
        "models": {n: {k: v for k, v in m.items() if k not in ("scores", "ann")} for n, m in per_model.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out / 'results.json'}, {out / 'results.png'} and {len(sheets)} example queries ({', '.join(s['image'] for s in sheets)})")
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="mugstan_demo", help="output folder (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), choices=list(ALL_MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=int, default=None, help="training videos to render (default 1200)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline in about a minute, numbers mean nothing")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    run(Path(args.out), args.models, args.seed, args.quick, not args.no_progress, args.videos)
    return 0
