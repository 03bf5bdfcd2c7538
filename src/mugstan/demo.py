"""``mugstan demo``: the whole system on the built-in synthetic benchmark, on a laptop CPU.

1. Render the synthetic benchmark (or reuse it): coloured shapes doing time-reversible motions.
2. Take the small CLIP that ships with the package (``configs/synthetic/clip.safetensors``): trained
   from scratch on single frames of seed 0's videos with appearance-only captions, so it knows what
   things look like and nothing about motion (``configs/synthetic/pretrain_clip.yaml``). ``--pretrain``
   trains one now instead, on this seed's frames (30-60 s on 2 cores); ``--export-clip FILE`` does
   that and writes the file as packaged: ``mugstan demo --export-clip
   src/mugstan/configs/synthetic/clip.safetensors`` made the one that ships.
3. Fine-tune video models from that CLIP on video-text pairs (meanP and STAN by default), through
   the same engine, data pipeline and checkpoints as real benchmarks.
4. Evaluate text-to-video retrieval on the motion-sensitive test set (every colour with every
   motion, each clip beside the same clip played backwards), the pair accuracy (does a caption
   score its own video above the same clip played backwards?, also per motion pair) and zero-shot
   motion recognition; print a table, write ``results.json``, ``results.md``, ``results.png``
   and contact sheets of example queries.

``prepare`` (steps 1-2) and ``finetune`` (step 3 and the evaluation of one model) are shared with
``mugstan bench synthetic``, which runs every temporal module and head over several seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mugstan.config import ExperimentConfig, load_config
from mugstan.errors import CorruptFileError

CONFIG_DIR = Path(__file__).parent / "configs" / "synthetic"  # package data: works from a wheel
logger = logging.getLogger(__name__)
PACKAGED_CLIP = CONFIG_DIR / "clip.safetensors"  # `mugstan demo --export-clip` on seed 0, stored in fp16
DEMO_MODELS = ("meanP", "stan")
ALL_MODELS = ("meanP", "seqTransf", "tdb_tab", "stan", "stan_conv", "mugstan")
LABELS = {"meanP": "meanP (CLIP4Clip)", "seqTransf": "seqTransf (CLIP4Clip)", "tdb_tab": "TDB+TAB (CLIP2Video)",
          "stan": "STAN-self", "stan_conv": "STAN-conv", "mugstan": "Mug-STAN"}
METRICS = ("t2v R@1", "t2v R@5", "v2t R@1", "pair accuracy", "zero-shot motion top-1")
# --quick: tiny sizes that run every stage in about a minute; the numbers mean nothing.
QUICK = ["train.epochs=1", "train.max_steps=6"]
# Frames rendered per video, all of them sampled (the configs' data.num_frames): a clip played
# backwards then shows exactly the same frames, so order-blind pooling cannot tell the two apart.
# (Sampling 8 of 16 frames picks different frames forwards and backwards, which meanP exploited:
# 63% pairs.) Four, not eight: half the compute per clip, and STAN learnt direction faster (a
# trial on seed 2: 91.7 pair accuracy in 35 epochs, against 78.3-85.0 with eight frames in 25-28).
FRAMES = 4
# The CLIP is pretrained on stills of 8-frame renderings: more distinct positions per video than
# four frames give (validation R@1 of the pretraining: 87.5, against 70.8 on stills of 4 frames).
STILL_FRAMES = 8


def stage_config(
    name: str, paths: dict, out: Path, overrides: Sequence[str] = (), save: bool = True
) -> ExperimentConfig:
    """The packaged configs/synthetic/NAME.yaml with ``paths`` (``{"data.root": folder, ...}``,
    taken as they are) and dotted overrides applied; saved as OUT/configs/NAME.yaml for reruns
    with ``mugstan train``."""
    from mugstan.config import save_config

    cfg = load_config(CONFIG_DIR / f"{name}.yaml", [*paths.items(), ("train.output_dir", str(out / name)), *overrides])
    if save:
        (out / "configs").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "configs" / f"{name}.yaml")
    return cfg


def video_paths(data: Path, clip: Optional[Path] = None, test_ann: str = "test.jsonl") -> dict:
    """Config paths of a fine-tuning stage on the generated dataset ``data``."""
    paths = {
        "data.root": str(data),
        "data.train_ann": "train.jsonl",
        "data.val_ann": "val.jsonl",  # inside data.root
        "data.test_ann": test_ann,
        "data.extra": {"class_names": "classes.txt"},
    }
    return {**paths, "model.weights": str(clip)} if clip else paths


def export_clip(checkpoint: Path, dest: Path, info: Optional[dict] = None) -> Path:
    """The CLIP of a trained meanP checkpoint as an open_clip-layout file (with its learned scale)
    that records its architecture; ``info`` goes into the file's metadata too."""
    from safetensors.torch import load_file

    from mugstan.backbones.build import named_config
    from mugstan.backbones.convert import save_safetensors
    from mugstan.config import load_config

    state = load_file(str(checkpoint / "model.safetensors"))
    clip = {k[len("backbone.clip.") :]: v for k, v in state.items() if k.startswith("backbone.clip.")}
    clip["logit_scale"] = state["logit_scale.log_scale"].clone()
    model = load_config(checkpoint / "config.yaml", check_files=False).model
    architecture = model.backbone_config or named_config(model.backbone, model.pretrained)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        clip,
        dest,
        {"format": "open_clip", "config": json.dumps(architecture), "source": str(checkpoint), **(info or {})},
    )
    return dest


def clip_metadata(path: Path) -> dict:
    """The metadata of a CLIP file written by ``export_clip`` (a damaged file is a WeightsError)."""
    from mugstan.backbones.convert import _read_tensors

    return _read_tensors(Path(path))[1]


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
def pair_accuracy(model, cfg: ExperimentConfig, data: Path) -> tuple[float, dict[str, float], torch.Tensor, object]:
    """Share of test captions that score their video above its time-reversed twin; a tie (the
    model cannot tell them apart, as meanP over the same frames) counts as half, the chance level.
    Also returns the same share per motion pair (``{"left/right": %, ...}``, 12 captions each on
    the default test set: which directions the model learnt), the score matrix [captions, videos]
    and the test annotations."""
    from mugstan.data.datasets import load_annotations
    from mugstan.data.synthetic import MOTION_PAIRS
    from mugstan.engine.distributed import DistInfo
    from mugstan.engine.evaluate import embed_clips, embed_texts, stack_clips

    ann = load_annotations(cfg.data, "test")
    videos, dropped = embed_clips(model, cfg, ann, DistInfo(), "test", progress=False)
    if dropped:
        raise CorruptFileError(
            f"synthetic test videos failed to decode: {dropped[:3]}; render the data again (--overwrite)"
        )
    video = stack_clips([videos[i] for i in range(len(ann.clips))])
    text = embed_texts(model, ann.captions, torch.device("cpu"))
    scores = model.similarity(text, video).float()
    own = torch.tensor(ann.caption_clip)
    twin = torch.as_tensor(twins(data))[own]
    rows = torch.arange(len(own))
    mine, other = scores[rows, own], scores[rows, twin]
    tie = torch.isclose(mine, other, rtol=1e-5, atol=1e-6)
    correct = torch.where(tie, 0.5, (mine > other).float())
    pair_of = torch.as_tensor(ann.labels)[own] // 2  # labels index MOTIONS, which lists the pairs in order
    by_pair = {
        "/".join(p): 100.0 * correct[pair_of == k].mean().item()
        for k, p in enumerate(MOTION_PAIRS)
        if (pair_of == k).any()
    }
    return 100.0 * correct.mean().item(), by_pair, scores, ann


def chance_levels(meta: dict) -> dict:
    """What guessing scores on a generated dataset (its ``meta.json``), in %."""
    return {
        "t2v R@1": 100 / meta["counts"]["test"],
        "pair accuracy": 50.0,
        "zero-shot motion top-1": 100 / len(meta["classes"]),
    }


# The contact sheets' marks: the query's own video and its time-reversed twin.
OWN_COLOUR, TWIN_COLOUR = "tab:green", "tab:orange"


def contact_sheet(
    video_paths: list[str],
    query: str,
    truth: int,
    twin: int,
    ranked: list[int],
    scores: list[float],
    dest: Path,
    model: str,
    frames: int = FRAMES,
) -> None:
    """``contact_sheet_figure`` saved as ``dest`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = contact_sheet_figure(video_paths, query, truth, twin, ranked, scores, model, frames)
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def contact_sheet_figure(
    video_paths: list[str],
    query: str,
    truth: int,
    twin: int,
    ranked: list[int],
    scores: list[float],
    model: str,
    frames: int = FRAMES,
):
    """One row per retrieved video, best first: its frames left to right in time, drawn pixel for
    pixel (nearest-neighbour upscaling, so a cross stays a cross); the left label is the rank and
    the score (scaled text-video similarity). The query's own video (``truth``) is framed green and
    its time-reversed twin (``twin``) orange, each named at the row's end, with a legend.
    ``ranked``/``scores``: the top videos' indices into ``video_paths`` and their scores."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from mugstan.data.video import read_clip

    width = 1.6 + 1.15 * frames + 1.9  # rank label, the frames, the row's tag
    fig, axes = plt.subplots(
        len(ranked), frames, figsize=(width, 1.25 * len(ranked) + 1.6), squeeze=False, layout="constrained"
    )
    tags = {truth: ("the query's video", OWN_COLOUR), twin: ("its reversed twin", TWIN_COLOUR)}
    for rank, (row, idx, score) in enumerate(zip(axes, ranked, scores, strict=True), 1):
        clip = read_clip(video_paths[idx], frames).permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
        tag, colour = tags.get(idx, ("", "lightgrey"))
        for t, ax in enumerate(row):
            ax.imshow(clip[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if tag else 1)
            if rank == 1:
                ax.set_title(f"t = {t + 1}", fontsize=8)
        row[0].set_ylabel(f"#{rank}\n{score:.1f}", rotation=0, labelpad=16, va="center", fontsize=9)
        if tag:
            row[-1].text(1.08, 0.5, tag, transform=row[-1].transAxes, va="center", ha="left", fontsize=8, color=colour)
    # about 0.55 em per character at 9 pt: wrap the title to the figure's width
    title = textwrap.fill(f'{model}: the top {len(ranked)} videos for "{query}"', width=int(width * 72 / (9 * 0.6)))
    fig.suptitle(f"{title}\n(left: rank and score; time runs left to right)", fontsize=9)
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor=OWN_COLOUR, lw=3, label="the query's own video"),
            Patch(facecolor="none", edgecolor=TWIN_COLOUR, lw=3, label="the same clip played backwards"),
        ],
        loc="outside lower center",
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    return fig


def bar_chart(rows: list[dict], dest: Path, title: str, chance: Optional[dict] = None) -> None:
    """``bar_chart_figure`` saved as ``dest`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = bar_chart_figure(rows, title, chance)
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def bar_chart_figure(rows: list[dict], title: str, chance: Optional[dict] = None):
    """t2v R@1, pair accuracy and zero-shot motion top-1 per model. ``chance`` (``chance_levels``):
    each metric's chance level, drawn across its own bars. Rows with ``"KEY std"`` (several seeds,
    ``bench synthetic``) get whiskers of one standard deviation over the seeds, said in the chart;
    a single run gets none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["model"] for r in rows]
    metrics = [
        ("t2v R@1", "text-to-video R@1"),
        ("pair accuracy", "pair accuracy (own clip vs reversed)"),
        ("zero-shot motion top-1", "zero-shot motion top-1"),
    ]
    seeds = {r["seeds"] for r in rows if "seeds" in r}
    spread = any(f"{key} std" in r for r in rows for key, _ in metrics)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.7 * len(labels)), 4.2), layout="constrained")
    for k, (key, legend) in enumerate(metrics):
        at = x + (k - 1) * 0.27
        level = (chance or {}).get(key)
        ax.bar(
            at,
            [r[key] for r in rows],
            0.27,
            label=legend if level is None else f"{legend}; chance {level:.1f}",
            yerr=[r.get(f"{key} std", 0.0) for r in rows] if spread else None,
            capsize=2,
        )
        if level is not None:  # the metric's chance level, drawn across each of its bars
            ax.hlines([level] * len(at), at - 0.135, at + 0.135, colors="black", linestyles="--", lw=1.2, zorder=3)
    ax.set_xticks(x, labels)
    ax.set_xlim(-0.6, len(labels) - 0.1)
    ax.set_ylim(0, 128)  # the legend above the 100% line, clear of the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    notes = ["dashed line across a bar: that metric's chance level"] if chance else []
    if spread:
        notes.append(f"whiskers: ± one standard deviation over {'/'.join(map(str, sorted(seeds))) or 'the'} seeds")
    if notes:
        fig.supxlabel("; ".join(notes), fontsize=8)
    return fig


def markdown_table(rows: list[dict], keys: Sequence[str] = (*METRICS, "train seconds")) -> str:
    """One row per model; a value with a ``"KEY std"`` companion prints as mean ± std."""

    def cell(r: dict, k: str) -> str:
        if f"{k} std" in r:
            return f"{r[k]:.1f} ± {r[f'{k} std']:.1f}"
        return f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k])

    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {r['model']} | " + " | ".join(cell(r, k) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Prepared:
    """Steps 1-2: the dataset folder, its meta.json, the pretrained CLIP and where it came from."""

    data: Path
    meta: dict
    clip: Path
    pretraining: dict


def prepare(
    out: Path,
    seed: int = 0,
    quick: bool = False,
    videos: Optional[int] = None,
    progress: bool = True,
    log=logger.info,
    pretrain: bool = False,
    frames: int = FRAMES,
) -> Prepared:
    """Render (or reuse) the synthetic benchmark in ``out`` with ``frames`` per video; take the
    packaged CLIP, or with ``pretrain`` train the small CLIP on the stills of this seed's
    ``STILL_FRAMES``-frame rendering."""
    from mugstan.data.synthetic import SynthParams, generate
    from mugstan.engine.train import train

    out = Path(out).absolute()  # typed by the user: anchored at the working folder once (docs/training.md, "Paths")
    count = videos or (64 if quick else 600)

    def render(frames: int) -> tuple[Path, dict]:
        # at the model's 32 px: decoding and resizing 64 px frames took as much CPU per training
        # step as the model itself
        params = SynthParams(videos=count, frames=frames, size=32, seed=seed)
        folder = out / f"data_v{params.videos}_f{params.frames}_s{params.size}_seed{seed}"
        return folder, generate(folder, params, progress=progress)

    log(f"1/4 synthetic benchmark ({count} training videos, {frames} frames of 32 px, seed {seed})")
    data, meta = render(frames)
    log(f"   {meta['counts']} videos in {data}")

    if not pretrain:
        if not PACKAGED_CLIP.is_file():
            from mugstan.errors import MissingFileError

            raise MissingFileError(
                f"{PACKAGED_CLIP} is missing from this installation; reinstall mugstan, or pass "
                "--pretrain to train the small CLIP now"
            )
        info = clip_metadata(PACKAGED_CLIP)
        log(
            f"2/4 the packaged small CLIP ({PACKAGED_CLIP.name}: pretrained on the stills of seed "
            f"{info.get('seed', '?')}; "
            "--pretrain trains one on this seed's)"
        )
        return Prepared(data, meta, PACKAGED_CLIP, {"packaged": str(PACKAGED_CLIP), **info})
    stills = data if frames == STILL_FRAMES else render(STILL_FRAMES)[0]
    log(f"2/4 pretraining a small CLIP from scratch on single frames with appearance-only captions ({stills.name})")
    paths = {"data.root": str(stills), "data.train_ann": "images_train.jsonl", "data.val_ann": "images_val.jsonl"}
    cfg = stage_config("pretrain_clip", paths, out, [f"train.seed={seed}", *(QUICK if quick else [])])
    start = time.time()
    results = train(cfg, progress=progress)
    clip = export_clip(
        Path(cfg.train.output_dir) / "checkpoints" / "best",
        out / "pretrain_clip" / "clip.safetensors",
        info={"seed": str(seed), "recipe": "configs/synthetic/pretrain_clip.yaml"},
    )
    log(f"   pretrained in {time.time() - start:.0f} s -> {clip}")
    return Prepared(data, meta, clip, {k: results[k] for k in ("steps", "best")})


def finetune(name: str, prep: Prepared, out: Path, seed: int = 0, quick: bool = False, progress: bool = True) -> dict:
    """Fine-tune configs/synthetic/NAME.yaml from the pretrained CLIP and evaluate its best checkpoint.

    Returns {"row": the table row, "scores": [captions, videos], "ann": the test annotations,
    "details": everything for results.json, the pair accuracy per motion pair among it}.
    """
    from mugstan.engine.checkpoint import load_model
    from mugstan.engine.evaluate import evaluate
    from mugstan.engine.train import train

    overrides = [f"train.seed={seed}", *(QUICK if quick else [])]
    cfg = stage_config(name, video_paths(prep.data, prep.clip), out, overrides)
    start = time.time()
    results = train(cfg, progress=progress)
    seconds = time.time() - start
    model, _ = load_model(Path(cfg.train.output_dir) / "checkpoints" / "best")
    pair, by_pair, scores, ann = pair_accuracy(model, cfg, prep.data)
    rec_cfg = stage_config(
        name, video_paths(prep.data, prep.clip, "recognition_test.jsonl"), out, overrides, save=False
    )
    rec = evaluate(model, rec_cfg, "test", progress=False)
    test = results["test"]["retrieval"]
    row = {
        "model": LABELS[name],
        "t2v R@1": test["t2v"]["R@1"],
        "t2v R@5": test["t2v"]["R@5"],
        "v2t R@1": test["v2t"]["R@1"],
        "pair accuracy": pair,
        "zero-shot motion top-1": rec["recognition"]["top1"],
        "train seconds": round(seconds),
    }
    details = {
        "test": results["test"],
        "zero_shot_recognition": rec["recognition"],
        "pair_accuracy": pair,
        "pair_accuracy_by_motion": by_pair,
        "best": results["best"],
        "train_seconds": seconds,
    }
    return {"row": row, "scores": scores, "ann": ann, "details": details}


def run(
    out: Path,
    models: Sequence[str] = DEMO_MODELS,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    videos: Optional[int] = None,
    examples: int = 3,
    pretrain: bool = False,
) -> dict:
    """Generate, take (or pretrain) the CLIP, fine-tune, evaluate. Returns the results dict (also in
    out/results.json)."""
    start = time.time()
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        logger.info(f"\n== [{time.time() - start:6.1f} s] {message}" if message[0].isdigit() else message)

    prep = prepare(out, seed, quick, videos, progress, log, pretrain)
    rows, finished = [], {}
    for k, name in enumerate(models):
        log(f"3/4 fine-tuning {LABELS[name]} from the pretrained CLIP ({k + 1}/{len(models)})")
        finished[name] = finetune(name, prep, out, seed, quick, progress)
        row = finished[name]["row"]
        rows.append(row)
        log(
            f"   {row['model']}: t2v R@1 {row['t2v R@1']:.1f}, pair accuracy {row['pair accuracy']:.1f}, "
            f"zero-shot motion top-1 {row['zero-shot motion top-1']:.1f}"
        )

    log("4/4 results")
    table = markdown_table(rows)
    by_pair = [{"model": LABELS[name], **f["details"]["pair_accuracy_by_motion"]} for name, f in finished.items()]
    pairs = f"pair accuracy by motion pair:\n\n{markdown_table(by_pair, list(by_pair[0])[1:])}"
    elapsed = time.time() - start
    levels = chance_levels(prep.meta)
    chance = (
        f"pair chance = 50%, t2v R@1 chance = {levels['t2v R@1']:.1f}%, "
        f"motion top-1 chance = {levels['zero-shot motion top-1']:.0f}%"
    )
    logger.info(f"{table}\n\n{pairs}\n\nfinished in {elapsed / 60:.1f} min; {chance}")
    bar_chart(rows, out / "results.png", f"synthetic temporal benchmark (seed {seed})", levels)
    last = finished[models[-1]]
    scores, ann = last["scores"], last["ann"]
    paths = [c.path for c in ann.clips]
    twin_of = twins(prep.data)
    sheets = []
    for q in np.linspace(0, len(ann.captions) - 1, examples).astype(int):
        ranked = scores[q].argsort(descending=True)[:4].tolist()
        dest = out / f"query_{q:03d}.png"
        own = ann.caption_clip[q]
        contact_sheet(
            paths, ann.captions[q], own, int(twin_of[own]), ranked, scores[q, ranked].tolist(), dest, LABELS[models[-1]]
        )
        sheets.append(
            {
                "query": ann.captions[q],
                "truth": paths[ann.caption_clip[q]],
                "top": [paths[i] for i in ranked],
                "image": dest.name,
            }
        )
    summary = {
        "dataset": {"folder": str(prep.data), **prep.meta},
        "pretraining": prep.pretraining,
        "rows": rows,
        "chance": chance,
        "examples": {"model": LABELS[models[-1]], "queries": sheets},
        "seconds": round(elapsed, 1),
        "models": {name: f["details"] for name, f in finished.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "results.md").write_text(f"{table}\n\n{pairs}\n\n{chance}\n")
    logger.info(
        f"wrote {out / 'results.json'}, results.md, results.png and {len(sheets)} example queries "
        f"({', '.join(s['image'] for s in sheets)}) in {out}"
    )
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="mugstan_demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEMO_MODELS),
        choices=list(ALL_MODELS),
        help="which fine-tuned models to compare (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of every run, 0 or more (default: %(default)s)"
    )
    parser.add_argument("--videos", type=int, default=None, help="training videos to render (default 600)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks every stage in about a minute, numbers mean nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (stage lines and tables only)")
    parser.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the small CLIP on this seed's stills (30-60 s on 2 cores) instead of taking the packaged one",
    )
    parser.add_argument(
        "--export-clip",
        metavar="FILE",
        default=None,
        help="only render, pretrain the small CLIP (in --out) and write it to FILE in fp16, as packaged; "
        "mugstan demo --export-clip src/mugstan/configs/synthetic/clip.safetensors made the packaged one",
    )


def main(args: argparse.Namespace) -> int:
    from mugstan.errors import ArgumentError

    if args.videos is not None and args.videos < 2:
        raise ArgumentError(f"--videos {args.videos}: render at least 2 training videos (default 600)")
    if args.seed < 0:
        raise ArgumentError(f"--seed {args.seed}: seeds are 0 or more")
    if args.export_clip and args.pretrain:
        raise ArgumentError("--export-clip pretrains anyway; drop --pretrain")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ArgumentError(f"--out {args.out} is a file; name a folder for the demo's outputs")
    if args.export_clip and Path(args.export_clip).is_dir():
        raise ArgumentError(
            f"--export-clip {args.export_clip} is a folder; name the file to write, e.g. "
            f"{Path(args.export_clip) / 'clip.safetensors'}"
        )
    if args.export_clip:
        from mugstan.backbones.convert import _read_tensors, save_safetensors

        prep = prepare(Path(args.out), args.seed, args.quick, args.videos, not args.no_progress, pretrain=True)
        tensors, meta = _read_tensors(prep.clip)  # the fp32 file --pretrain fine-tunes from, stored in fp16
        dest = Path(args.export_clip)
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(
            {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
            dest,
            {**meta, "dtype": "float16", "source": f"mugstan demo --export-clip --seed {args.seed}"},
        )
        print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB, fp16)")
        return 0
    run(Path(args.out), args.models, args.seed, args.quick, not args.no_progress, args.videos, pretrain=args.pretrain)
    return 0
