"""Evaluation: retrieval (1:1 and multi-caption), recognition (fine-tuned and zero-shot), AVA detection.

    mugstan eval CONFIG --checkpoint PATH [--split test] [key=value ...]

Every test video is decoded once; its embedding is reused for all of its captions. Under
``torchrun`` each process embeds a contiguous shard (no padding duplicates) and the shards are
gathered in order, so every item counts exactly once. Videos that fail to decode are dropped
from the protocol (with their captions) and listed in the result under ``"dropped"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mugstan.config import ConfigError, ExperimentConfig, Task
from mugstan.data.datasets import Annotations, build_dataset, collate, load_annotations
from mugstan.engine.distributed import DistInfo, ShardSampler, all_gather_objects, unwrap
from mugstan.engine.precision import autocast_for, linear_width
from mugstan.errors import AnnotationError
from mugstan.heads.base import Embeddings
from mugstan.metrics import recognition_metrics, retrieval_metrics

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_clips(model, cfg: ExperimentConfig, ann: Annotations, dist: DistInfo, split: str = "test",
                classify: bool = False, progress: bool = True) -> tuple[dict[int, object], list]:
    """Embed (or classify) every clip of ``ann``; returns ({clip index: output}, dropped).

    Output per clip: Embeddings row(s) as CPU tensors ``(x [V, ...], mask [V, ...] | None)`` with
    V views, or logits [V, C] when ``classify``. dropped: [(clip index, "path: reason")].
    """
    model = unwrap(model)
    width = linear_width(model)  # what train.precision: auto is decided for
    dataset = build_dataset(cfg.data, split, train=False, on_error="drop", pairs=False, ann=ann)
    loader = DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=ShardSampler(len(dataset), dist.world, dist.rank),
        num_workers=cfg.data.loader_workers,
        collate_fn=collate,
    )
    outputs, dropped = {}, []
    bar = tqdm(loader, desc=f"embedding {split} videos", unit="batch", disable=not (progress and dist.main))
    for batch in bar:
        dropped.extend(batch["failed"])
        if "frames" not in batch:
            continue
        frames = batch["frames"].to(dist.device)
        views = frames.shape[1] if frames.dim() == 6 else 1
        frames = frames.flatten(0, 1) if frames.dim() == 6 else frames
        mask = batch["frame_mask"].to(dist.device).repeat_interleave(views, 0)
        with autocast_for(dist.device, cfg.train.precision, width):
            if classify:
                out = model(frames, mask)["logits"].float().cpu()
                rows = [(out[i * views : (i + 1) * views], None) for i in range(len(batch["index"]))]
            else:
                emb = model.encode_video(frames, mask)
                x = emb.x.float().cpu()
                m = emb.mask.cpu() if emb.mask is not None else None
                rows = [
                    (x[i * views : (i + 1) * views], None if m is None else m[i * views : (i + 1) * views])
                    for i in range(len(batch["index"]))
                ]
        outputs.update(zip(batch["index"].tolist(), rows, strict=True))
    merged, all_dropped = {}, []
    for part_out, part_dropped in all_gather_objects((outputs, dropped)):
        merged.update(part_out)
        all_dropped.extend(part_dropped)
    return merged, sorted(all_dropped)


@torch.no_grad()
def embed_texts(model, texts: list[str], device: torch.device, batch_size: int = 256) -> Embeddings:
    model = unwrap(model)
    xs, masks = [], []
    for i in range(0, len(texts), batch_size):
        ids, mask = model.tokenize(texts[i : i + batch_size])
        emb = model.encode_text(ids.to(device), mask.to(device))
        xs.append(emb.x.float())
        masks.append(emb.mask)
    return Embeddings(torch.cat(xs), None if masks[0] is None else torch.cat(masks))


def stack_clips(rows: list, view: Optional[int] = 0) -> Embeddings:
    x = torch.stack([r[0][view] for r in rows])
    m = None if rows[0][1] is None else torch.stack([r[1][view] for r in rows])
    return Embeddings(x, m)


@torch.no_grad()
def evaluate(
    model, cfg: ExperimentConfig, split: str = "test", dist: Optional[DistInfo] = None, progress: bool = True
) -> dict:
    """Metrics of ``model`` on a split, with what was dropped. Runs on every process; all get the result."""
    dist = dist or DistInfo(device=next(unwrap(model).parameters()).device)
    if cfg.model.task == Task.chat:  # Video QA: answers, exact match and the judge's answer file
        from mugstan.chat.qa import evaluate_qa

        return evaluate_qa(model, cfg, split, dist, progress)
    start = time.time()
    ann = load_annotations(cfg.data, split)
    model.eval()
    inner = unwrap(model)
    result: dict = {"split": split}
    if cfg.model.task == Task.detection:  # AVA protocol: result CSV + frame-mAP@0.5 (mugstan.detection)
        from mugstan.detection.evaluate import evaluate_detection

        found, dropped = evaluate_detection(model, cfg, ann, split, dist, progress)
        result.update(found)
    elif cfg.model.task == Task.recognition:
        logits, dropped = embed_clips(model, cfg, ann, dist, split, classify=True, progress=progress)
        kept = sorted(logits)
        result["recognition"] = recognition_metrics(
            torch.stack([logits[i][0] for i in kept]), torch.tensor([ann.labels[i] for i in kept])
        )
    elif ann.captions:
        uncaptioned = len(ann.clips) - len(set(ann.caption_clip))
        if uncaptioned:  # video-to-text retrieval ranks each video's own captions
            raise AnnotationError(
                f"{ann.source}: {uncaptioned} of the {len(ann.clips)} videos of the {split} split have no caption; "
                "retrieval needs one or more per video: add captions or leave those videos out"
            )
        videos, dropped = embed_clips(model, cfg, ann, dist, split, progress=progress)
        kept = sorted(videos)
        position = {clip: j for j, clip in enumerate(kept)}
        caps = [(c, position[v]) for c, v in zip(ann.captions, ann.caption_clip, strict=True) if v in position]
        text = embed_texts(model, [c for c, _ in caps], dist.device)
        video = stack_clips([videos[i] for i in kept])
        scores = inner.similarity(text.to(dist.device), video.to(dist.device), chunk=cfg.eval.sim_chunk).float().cpu()
        links = [v for _, v in caps]
        result["retrieval"] = retrieval_metrics(scores, links)
        if cfg.eval.dsl:
            result["retrieval"].update(retrieval_metrics(scores, links, dsl=True))
        result["protocol"] = "multi-caption" if ann.multi_caption else "1:1"
        result["counts"] = {"videos": len(kept), "captions": len(caps)}
    elif ann.labels is not None:
        from mugstan.models import class_prompts

        names = ann.class_names or cfg.model.class_names
        if not names:
            raise ConfigError(
                f"zero-shot recognition on {split} needs class names (data.extra.class_names or model.class_names)"
            )
        videos, dropped = embed_clips(model, cfg, ann, dist, split, progress=progress)
        kept = sorted(videos)
        views = videos[kept[0]][0].shape[0]
        per_view = []
        for v in range(views):
            video = stack_clips([videos[i] for i in kept], view=v).to(dist.device)
            per_template = [
                inner.similarity(embed_texts(model, texts, dist.device), video, cfg.eval.sim_chunk)
                for texts in class_prompts(names, cfg.model.prompt_templates)
            ]
            per_view.append(torch.stack(per_template).mean(0).t().float().cpu())  # [N, C]
        result["recognition"] = recognition_metrics(
            torch.stack(per_view, 1), torch.tensor([ann.labels[i] for i in kept])
        )
        result["zero_shot"] = True
    else:
        raise AnnotationError(
            f"{ann.source}: the {split} split of {cfg.data.dataset} has neither captions nor labels: "
            "nothing to evaluate"
        )
    result["dropped"] = [{"index": i, "error": e} for i, e in dropped]
    result["seconds"] = round(time.time() - start, 1)
    return result


def headline(result: dict) -> tuple[str, float]:
    """The number model selection uses: text-to-video R@1 (retrieval), top-1 (recognition) or frame-mAP@0.5
    (detection)."""
    if "retrieval" in result:
        return "t2v R@1", result["retrieval"]["t2v"]["R@1"]
    if "detection" in result:
        return "mAP@0.5", result["detection"]["mAP"]
    if "qa" in result:
        return "QA accuracy", result["qa"]["accuracy"]
    return "top-1", result["recognition"]["top1"]


def format_result(result: dict) -> str:
    lines = [f"{result['split']} split"]
    for name, m in result.get("retrieval", {}).items():
        lines.append(
            f"  {name:16s} R@1 {m['R@1']:5.1f}  R@5 {m['R@5']:5.1f}  R@10 {m['R@10']:5.1f}  MdR {m['MdR']:.1f}  MnR "
            f"{m['MnR']:.1f}"
        )
    if "recognition" in result:
        r = result["recognition"]
        lines.append(f"  {'zero-shot ' if result.get('zero_shot') else ''}top-1 {r['top1']:.1f}  top-5 {r['top5']:.1f}")
    if "detection" in result:
        d = result["detection"]
        lines.append(
            f"  frame-mAP@0.5 {d['mAP']:.2f} over {sum(ap is not None for ap in d['per_class'].values())} classes "
            f"({result['boxes']} boxes; detections in {result['detections_csv']})"
        )
    if "qa" in result:
        q = result["qa"]
        lines.append(
            f"  QA exact-match accuracy {q['accuracy']:.1f} ({q['correct']}/{q['questions']}); answers in "
            f"{q['answers_file']}"
        )
    if result.get("dropped"):
        lines.append(f"  dropped {len(result['dropped'])} videos that could not be decoded:")
        lines.extend(f"    {d['error']}" for d in result["dropped"][:20])
    return "\n".join(lines)


def zero_shot_model(cfg: ExperimentConfig, split: str = "test"):
    """The config's model as built, no training: pretrained weights evaluated zero-shot. A
    recognition model's text classifier starts from the split's class-name prompts."""
    from mugstan.models import build_model

    names = cfg.model.class_names or (
        load_annotations(cfg.data, split).class_names if cfg.model.task == Task.recognition else []
    )
    return build_model(cfg.model, class_names=names or ()).eval()


# How a checkpoint's model sees a video: evaluation reads videos as its training did unless told otherwise.
CHECKPOINT_DATA_KEYS = (
    "num_frames",
    "test_num_frames",
    "sampler",
    "dense_stride",
    "sample_fps",
    "image_size",
    "resize_short",
    "test_resize_short",
)
FOLLOWS = {"test_num_frames": "num_frames", "test_resize_short": "resize_short"}  # defaults to the other one


def take_checkpoint_data(cfg: ExperimentConfig, saved: ExperimentConfig, overrides: Sequence[str]) -> dict:
    """Set ``cfg.data``'s ``CHECKPOINT_DATA_KEYS`` (frames, sampler, image size, resize) to the
    checkpoint's, except those the command line sets (a test key also stays when its base is set:
    ``data.num_frames=12`` alone evaluates 12 frames). Returns {key: (config's value, checkpoint's)}
    for every key taken that differs from the config."""
    given = {o.split("=", 1)[0].strip().lstrip("+") for o in overrides if "=" in o}
    taken = {}
    for key in CHECKPOINT_DATA_KEYS:
        if f"data.{key}" in given or (key in FOLLOWS and f"data.{FOLLOWS[key]}" in given):
            continue
        ours, theirs = getattr(cfg.data, key), getattr(saved.data, key)
        if ours != theirs:
            setattr(cfg.data, key, theirs)
            taken[key] = (ours, theirs)
    return taken


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML or packaged config name (its data and eval sections are used)")
    parser.add_argument(
        "--checkpoint",
        help="checkpoint folder, a `mugstan convert` .safetensors, or hf-hub:org/name; "
        "model.* overrides apply to it (model.head=mug scores a converted Mug-STAN checkpoint with Mug). "
        "A checkpoint folder's data settings (frames, sampler, image size, resize) replace the config's "
        "unless given on the command line; the keys that differ are printed. "
        "Without it the model is built from the config's model section: zero-shot evaluation of "
        "pretrained weights (e.g. model.pretrained=openai), no training needed",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="which annotation file of the config: data.train_ann, val_ann or test_ann (default: test)",
    )
    parser.add_argument("--json", help="also write the result to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the result only)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.dsl=true model.head=mug")


def main(args: argparse.Namespace) -> int:
    from mugstan.config import load_config
    from mugstan.engine.checkpoint import load_model
    from mugstan.engine.distributed import setup

    cfg = load_config(args.config, args.overrides, splits=[args.split])  # only the evaluated split must exist
    dist = setup()
    if args.checkpoint:
        model, saved = load_model(args.checkpoint, dist.device, [o for o in args.overrides if o.startswith("model.")])
        if saved is not None:
            cfg.model = saved.model  # the model evaluated is the checkpoint's, and it sees videos as it was trained to
            taken = take_checkpoint_data(cfg, saved, args.overrides)
            if dist.main:
                for key, (ours, theirs) in taken.items():
                    logger.info(
                        f"data.{key}: {theirs} from the checkpoint (the config says {ours}; data.{key}={ours} on the "
                        "command line evaluates with that)"
                    )
    else:
        model = zero_shot_model(cfg, args.split).to(dist.device)
    result = evaluate(model, cfg, args.split, dist, progress=not args.no_progress)
    if not args.checkpoint:
        result["zero_shot"] = True
    elif saved is not None:
        result["data_from_checkpoint"] = {key: theirs for key, (ours, theirs) in taken.items()}
    if dist.main:
        print(format_result(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    return 0
