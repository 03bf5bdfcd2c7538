"""Video QA evaluation: ``mugstan eval CONFIG --checkpoint PATH`` (or validation while tuning) for ``model.task: chat``.

For every question of a split (MSVD-QA, MSRVTT-QA, ActivityNet-QA or Video-ChatGPT-format files,
``mugstan.data.datasets.videoqa``; the first turn of each conversation) the model answers greedily
about its video (each video decoded and encoded once, its questions batched). Reported:

- ``accuracy``: exact match in percent, after normalising both answers (lower case, punctuation and
  the articles a / an / the removed, spaces collapsed): what one-word QA sets such as MSVD-QA and
  MSRVTT-QA are scored by; open-ended answers need the judge;
- the answer file (``model.chat.answers_file``, default ``train.output_dir/answers_SPLIT.json``): a JSON
  list of ``{"id", "video_name", "question", "answer", "pred", "Q", "A"}``, what the LLM-judge scripts
  read (Video-ChatGPT's ``evaluate_activitynet_qa.py --pred_path`` takes ``video_name``, ``Q``, ``A``,
  ``pred``; Video-LLaVA-style ones ``id``, ``question``, ``answer``, ``pred``). The judge needs a network
  and an API key and is not run here.

Under torchrun each process answers a contiguous shard of the videos; the answers are gathered in order.
"""

from __future__ import annotations

import json
import re
import string
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mugstan.config import ConfigError, ExperimentConfig
from mugstan.data.datasets import build_dataset, collate, load_annotations
from mugstan.data.datasets.videoqa import first_turns
from mugstan.engine.distributed import DistInfo, ShardSampler, all_gather_objects, unwrap
from mugstan.files import atomic_file

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower()))
    return " ".join(text.split())


def exact_match(pred: str, answer: str) -> bool:
    return normalize_answer(pred) == normalize_answer(answer)


def answers_path(cfg: ExperimentConfig, split: str) -> Path:
    return Path(cfg.model.chat.answers_file or Path(cfg.train.output_dir) / f"answers_{split}.json")


@torch.no_grad()
def evaluate_qa(
    model, cfg: ExperimentConfig, split: str = "test", dist: DistInfo = None, progress: bool = True
) -> dict:
    """{"split", "qa": {"accuracy", "correct", "questions", "answers_file"}, "dropped", "seconds"}; writes the
    answer file."""
    dist = dist or DistInfo(device=next(unwrap(model).parameters()).device)
    start = time.time()
    ann = load_annotations(cfg.data, split)
    if ann.conversations is None:
        raise ConfigError(
            f"data.dataset={cfg.data.dataset!r} has no questions: Video QA needs msvd_qa, msrvtt_qa, activitynet_qa "
            "or videochatgpt"
        )
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    by_clip = first_turns(ann)
    dataset = build_dataset(cfg.data, split, train=False, on_error="drop", pairs=False, ann=ann)
    loader = DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=ShardSampler(len(dataset), dist.world, dist.rank),
        num_workers=cfg.data.loader_workers,
        collate_fn=collate,
    )
    records, dropped = [], []
    for batch in tqdm(loader, desc=f"answering {split} questions", unit="batch", disable=not (progress and dist.main)):
        dropped.extend(batch["failed"])
        if "frames" not in batch:
            continue
        frames, frame_mask = batch["frames"].to(dist.device), batch["frame_mask"].to(dist.device)
        asked = [(row, conv) for row, clip in enumerate(batch["index"].tolist()) for conv in by_clip.get(clip, [])]
        for i in range(0, len(asked), cfg.eval.batch_size):
            chunk = asked[i : i + cfg.eval.batch_size]
            preds = inner.answer(
                frames,
                frame_mask,
                [[(conv.turns[0][0], None)] for _, conv in chunk],
                video_of=[row for row, _ in chunk],
            )
            for (_, conv), pred in zip(chunk, preds, strict=True):
                question, answer = conv.turns[0]
                records.append(
                    {
                        "id": conv.id,
                        "video_name": conv.video,
                        "question": question,
                        "answer": answer,
                        "pred": pred,
                        "Q": question,
                        "A": answer,
                    }
                )
    merged, all_dropped = [], []
    for part, part_dropped in all_gather_objects((records, dropped)):
        merged.extend(part)
        all_dropped.extend(part_dropped)
    correct = sum(exact_match(r["pred"], r["answer"]) for r in merged)
    path = answers_path(cfg, split)
    if dist.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(merged, indent=1) + "\n")
    inner.train(was_training)
    return {
        "split": split,
        "qa": {
            "accuracy": 100.0 * correct / max(len(merged), 1),
            "correct": correct,
            "questions": len(merged),
            "answers_file": str(path),
        },
        "dropped": [{"index": i, "error": e} for i, e in sorted(all_dropped)],
        "seconds": round(time.time() - start, 1),
    }
