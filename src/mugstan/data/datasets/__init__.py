"""Datasets: annotation adapters for every benchmark, and the two torch datasets they feed.

An adapter (``mugstan.data.datasets.formats``) reads a benchmark's files as distributed and
returns ``Annotations``: the clips (path, optional start/end seconds), the captions with the clip
each describes, and labels with class names for recognition. Two datasets then cover every task:

- ``PairDataset``: one item per (caption, clip) pair: retrieval training and post-pretraining;
- ``ClipDataset``: one item per clip: retrieval evaluation (each test video decoded once, the
  captions tokenised separately with ``caption_to_video``), recognition (labels, multi-view).

Items are dicts: ``frames`` float [T, 3, S, S] ([V, T, 3, S, S] for multi-view testing; uint8,
not yet normalised, with ``uint8=True``: see ``mugstan.data.transforms.normalize``),
``frame_mask`` bool [T] (all True: short videos repeat frames; ``data.sampler: fps`` pads short
videos and masks the padding), ``ids`` int64 [L] and
``text_mask`` bool [L] (pairs), ``label`` int (recognition), ``index`` int. A clip that cannot be
decoded is handled by ``on_error``:

- ``"raise"``: ``VideoError`` (path and reason);
- ``"replace"`` (training): the item is skipped and another one drawn in its place, so batches
  keep their size on every process; the skipped (index, "path: reason") pairs travel in the
  item's ``failed`` list, and ``collate`` gathers them into ``batch["failed"]`` to be counted;
- ``"drop"`` (evaluation): the item comes back as ``{"index", "error"}``; ``collate`` leaves it
  out of the batch and lists it in ``batch["failed"]`` so the evaluation reports it.

Never a black video with a real caption.
"""

from __future__ import annotations

import csv
from typing import Callable, Optional

from torch.utils.data import Dataset

from mugstan.config import DataConfig, mix_data_config
from mugstan.data.datasets.ava import DetectionDataset, ava
from mugstan.data.datasets.base import Annotations, Clip, ClipDataset, ClipReader, MixedDataset, PairDataset, collate
from mugstan.data.datasets.formats import FORMATS as _ANNOTATION_FORMATS
from mugstan.data.datasets.shards import shard_annotations
from mugstan.data.datasets.videoqa import QA_FORMATS, ConversationDataset
from mugstan.errors import AnnotationError, one_line

__all__ = ["Annotations", "Clip", "ClipDataset", "ClipReader", "FORMATS", "MixedDataset", "PairDataset",
           "build_dataset", "build_train_dataset", "collate", "load_annotations"]

# Every value of data.dataset: the benchmarks' formats, AVA (detection), the Video QA formats (chat)
# and WebDataset tar shards (evaluation splits read from shards; training streams them).
FORMATS: dict[str, Callable[[DataConfig, str], Annotations]] = {**_ANNOTATION_FORMATS, "ava": ava, **QA_FORMATS,
                                                                 "webdataset": shard_annotations}


def build_train_dataset(
    cfg: DataConfig,
    tokenizer=None,
    pairs: bool = True,
    seed: int = 0,
    ann: Optional[Annotations] = None,
    uint8: bool = False,
) -> Dataset:
    """The training dataset of ``cfg`` and, with ``data.mix``, every extra source mixed in."""
    main = build_dataset(cfg, "train", tokenizer, train=True, pairs=pairs, seed=seed, ann=ann, uint8=uint8)
    if not cfg.mix:
        return main
    extra = [
        build_dataset(mix_data_config(cfg, source), "train", tokenizer, train=True, pairs=pairs, seed=seed, uint8=uint8)
        for source in cfg.mix
    ]
    return MixedDataset([main, *extra])


def load_annotations(cfg: DataConfig, split: str) -> Annotations:
    """The split ("train" | "val" | "test") of the dataset named by ``cfg.dataset``."""
    if cfg.dataset not in FORMATS:
        raise AnnotationError(f"data.dataset={cfg.dataset!r} is not one of {', '.join(sorted(FORMATS))}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    try:
        return FORMATS[cfg.dataset](cfg, split)
    except UnicodeDecodeError as err:  # a binary file given as annotations
        raise AnnotationError(
            f"{_annotation_file(cfg, split)}: not a text file (byte {err.start} is not UTF-8): "
            f"give the {cfg.dataset} annotation file of the {split} split (see docs/data.md)"
        ) from None
    except (KeyError, TypeError, AttributeError, IndexError, csv.Error) as err:  # a file of another layout
        raise AnnotationError(
            f"{_annotation_file(cfg, split)}: not the layout data.dataset={cfg.dataset} expects "
            f"({type(err).__name__}: {one_line(err)}); see docs/data.md for its files"
        ) from None


def _annotation_file(cfg: DataConfig, split: str) -> str:
    """The split's annotation file, and the extra files the format reads (for error messages)."""
    files = [getattr(cfg, f"{split}_ann") or f"data.{split}_ann"] + list(cfg.extra.values())
    return files[0] if len(files) == 1 else f"{files[0]} (or {', '.join(files[1:])})"


def build_dataset(
    cfg: DataConfig,
    split: str,
    tokenizer=None,
    train: Optional[bool] = None,
    on_error: Optional[str] = None,
    pairs: Optional[bool] = None,
    seed: int = 0,
    ann: Optional[Annotations] = None,
    uint8: bool = False,
) -> Dataset:
    """The torch dataset of a split. Defaults: training = split "train"; pairs (caption items)
    in training when the split has captions, clips otherwise; broken videos replaced in
    training and dropped (reported) otherwise. ``uint8``: frames come out cropped but not
    normalised (uint8), for ``mugstan.data.transforms.normalize`` on the training device."""
    ann = ann or load_annotations(cfg, split)
    train = split == "train" if train is None else train
    on_error = on_error or ("replace" if train else "drop")
    if getattr(ann, "box_source", None):  # AVA-format detection: one item per keyframe with its boxes
        return DetectionDataset(ann, cfg, train, None, on_error, seed)
    if ann.conversations is not None and (train if pairs is None else pairs):
        if tokenizer is None:
            raise ValueError("conversation items need the chat model's tokenizer")
        return ConversationDataset(ann, cfg, train, tokenizer, on_error, seed)
    pairs = (train and bool(ann.captions)) if pairs is None else pairs
    if pairs and tokenizer is None:
        raise ValueError("caption items need a tokenizer")
    cls = PairDataset if pairs else ClipDataset
    return cls(ann, cfg, train, tokenizer, on_error, seed, uint8)
