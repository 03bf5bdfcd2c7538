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
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from mugstan.config import DataConfig, mix_data_config
from mugstan.data.transforms import ClipTransform
from mugstan.data.video import FrameCache, VideoError, read_clip
from mugstan.errors import AnnotationError, one_line


@dataclass
class Clip:
    path: str
    start: Optional[float] = None
    end: Optional[float] = None


@dataclass
class Annotations:
    """One split of a dataset.

    clips: the videos (or windows of videos); captions[i] describes clips[caption_clip[i]];
    labels[j]: class index of clips[j] (recognition); class_names: index -> name;
    conversations: question-answer turns about the clips (video chat, ``datasets/videoqa.py``).
    """

    clips: list[Clip]
    captions: list[str] = field(default_factory=list)
    caption_clip: list[int] = field(default_factory=list)
    labels: Optional[list[int]] = None
    class_names: Optional[list[str]] = None
    source: str = ""
    conversations: Optional[list] = None

    def __post_init__(self):
        if len(self.captions) != len(self.caption_clip):
            raise AnnotationError(f"{self.source}: {len(self.captions)} captions but {len(self.caption_clip)} caption->clip links")
        if self.labels is not None and len(self.labels) != len(self.clips):
            raise AnnotationError(f"{self.source}: {len(self.labels)} labels for {len(self.clips)} clips")
        if not self.clips:
            raise AnnotationError(f"{self.source}: no videos in this split")

    @property
    def multi_caption(self) -> bool:
        return len(self.captions) != len(self.clips) or self.caption_clip != list(range(len(self.clips)))


class ClipReader:
    """Decode + transform one clip with the configured sampling: ``reader(clip, index) -> float
    [T, 3, S, S]`` (or [V, T, 3, S, S] with several test views). Datasets and the search index
    read clips through it; ``num_frames`` overrides the config's."""

    def __init__(self, cfg: DataConfig, train: bool, seed: int = 0, num_frames: Optional[int] = None, uint8: bool = False):
        self.cfg, self.train, self.seed = cfg, train, seed
        self.num_frames = num_frames or (cfg.num_frames if train else (cfg.test_num_frames or cfg.num_frames))
        self.views = 1 if train else cfg.test_clips
        # Testing resizes the short side to data.test_resize_short (default: data.resize_short).
        self.short = (cfg.resize_short if train else (cfg.test_resize_short or cfg.resize_short)) or cfg.image_size
        self.transform = ClipTransform(cfg.image_size, train, cfg.crop_scale, cfg.hflip,
                                       1 if train else cfg.test_crops, self.short, uint8)
        self.epoch = 0
        self.cache = FrameCache(cfg.frame_cache_mb) if cfg.frame_cache_mb > 0 else None

    def __call__(self, clip: Clip, index: int) -> torch.Tensor:
        return self.read(clip, index)[0]

    def read(self, clip: Clip, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames float [T, 3, S, S] or [V, T, 3, S, S], frame_mask bool [T]): the mask is False
        only where ``data.sampler: fps`` padded a short video."""
        # Training randomness (frames, crop, flip) is a function of (seed, epoch, index): the same
        # whatever the number of workers or processes, and after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.train else None
        views = []
        for v in range(self.views):
            frames, mask = read_clip(clip.path, self.num_frames, self.train, self.short, clip.start, clip.end,
                                     self.cfg.sampler, self.cfg.dense_stride, rng, v, self.views,
                                     sample_fps=self.cfg.sample_fps, return_mask=True, cache=self.cache,
                                     decoder=str(self.cfg.decoder), device=str(self.cfg.decode_device))
            out = self.transform(frames, gen)  # [T, 3, S, S] or [crops, T, 3, S, S]
            views.extend(out.unbind(0) if out.dim() == 5 else [out])
        return (views[0] if len(views) == 1 else torch.stack(views)), mask


ON_ERROR = ("raise", "replace", "drop")
MAX_REPLACEMENTS = 10


class _Base(Dataset):
    def __init__(self, ann: Annotations, cfg: DataConfig, train: bool, tokenizer=None, on_error: str = "raise", seed: int = 0,
                 uint8: bool = False):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.ann, self.cfg, self.train, self.tokenizer, self.on_error = ann, cfg, train, tokenizer, on_error
        self.reader = ClipReader(cfg, train, seed, uint8=uint8)

    def set_epoch(self, epoch: int) -> None:
        """Training samples frames from (seed, epoch, index): the same run draws the same frames."""
        self.reader.epoch = epoch

    def _frames(self, clip_index: int, item_index: int) -> dict:
        frames, mask = self.reader.read(self.ann.clips[clip_index], item_index)
        return {"frames": frames, "frame_mask": mask, "index": item_index}

    def __getitem__(self, index: int) -> dict:
        if self.on_error == "raise":
            return self.get(index)
        failed = []
        for attempt in range(MAX_REPLACEMENTS if self.on_error == "replace" else 1):
            j = (index + attempt * 7919) % len(self)  # a fixed, well-spread sequence of stand-ins
            try:
                item = self.get(j)
            except VideoError as err:
                failed.append((j, str(err)))
                continue
            item["failed"] = failed
            return item
        if self.on_error == "replace":
            raise VideoError(failed[-1][1].split(": ")[0], f"{MAX_REPLACEMENTS} videos in a row failed to decode; run `mugstan data check`")
        return {"index": index, "error": failed[0][1], "failed": failed}


class PairDataset(_Base):
    """One item per caption: its clip's frames and the caption's tokens."""

    def __len__(self) -> int:
        return len(self.ann.captions)

    def get(self, index: int) -> dict:
        item = self._frames(self.ann.caption_clip[index], index)
        ids, mask = self.tokenizer(self.ann.captions[index])
        item.update(ids=ids[0], text_mask=mask[0])
        return item


class ClipDataset(_Base):
    """One item per clip (decoded once), with its label where there are labels."""

    def __len__(self) -> int:
        return len(self.ann.clips)

    def get(self, index: int) -> dict:
        item = self._frames(index, index)
        if self.ann.labels is not None:
            item["label"] = self.ann.labels[index]
        return item


class MixedDataset(Dataset):
    """Several training datasets as one (``data.mix``): items 0..n0-1 are the first's, then the
    second's, ...; ``index`` is the position in the mix."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        n = int(np.searchsorted(self.starts, index, side="right")) - 1
        item = self.parts[n][index - self.starts[n]]
        item["index"] = index
        return item


def build_train_dataset(cfg: DataConfig, tokenizer=None, pairs: bool = True, seed: int = 0, ann: Optional[Annotations] = None,
                        uint8: bool = False) -> Dataset:
    """The training dataset of ``cfg`` and, with ``data.mix``, every extra source mixed in."""
    main = build_dataset(cfg, "train", tokenizer, train=True, pairs=pairs, seed=seed, ann=ann, uint8=uint8)
    if not cfg.mix:
        return main
    extra = [build_dataset(mix_data_config(cfg, source), "train", tokenizer, train=True, pairs=pairs, seed=seed, uint8=uint8)
             for source in cfg.mix]
    return MixedDataset([main, *extra])


# Per-item tensors with a varying first dimension (detection: N boxes per keyframe): concatenated.
RAGGED = ("boxes", "box_labels")


def collate(items: list[dict]) -> dict:
    """Stack the good items; every skipped or dropped one is in ``batch["failed"]`` as (index, "path: reason").

    ``RAGGED`` entries ([N_i, ...] per item) are concatenated instead, and ``box_batch_index``
    [sum N_i] (int64) says which item each box belongs to.
    """
    good = [it for it in items if "error" not in it]
    batch: dict = {"failed": [f for it in items for f in it.get("failed", [])]}
    if not good:
        return batch
    for key in (k for k in good[0] if k != "failed"):
        values = [it[key] for it in good]
        if key in RAGGED:
            batch[key] = torch.cat(values)
            if key == "boxes":
                counts = torch.tensor([len(v) for v in values])
                batch["box_batch_index"] = torch.repeat_interleave(torch.arange(len(values)), counts)
            continue
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


def load_annotations(cfg: DataConfig, split: str) -> Annotations:
    """The split ("train" | "val" | "test") of the dataset named by ``cfg.dataset``."""
    from mugstan.data.datasets.formats import FORMATS
    from mugstan.data.datasets.videoqa import QA_FORMATS

    formats = {**FORMATS, **QA_FORMATS}
    if cfg.dataset not in formats:
        raise AnnotationError(f"data.dataset={cfg.dataset!r} is not one of {', '.join(sorted(formats))}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    try:
        return formats[cfg.dataset](cfg, split)
    except UnicodeDecodeError as err:  # a binary file given as annotations
        raise AnnotationError(f"{_annotation_file(cfg, split)}: not a text file (byte {err.start} is not UTF-8): "
                              f"give the {cfg.dataset} annotation file of the {split} split (see docs/data.md)") from None
    except (KeyError, TypeError, AttributeError, IndexError, csv.Error) as err:  # a file of another layout
        raise AnnotationError(f"{_annotation_file(cfg, split)}: not the layout data.dataset={cfg.dataset} expects "
                              f"({type(err).__name__}: {one_line(err)}); see docs/data.md for its files") from None


def _annotation_file(cfg: DataConfig, split: str) -> str:
    """The split's annotation file, and the extra files the format reads (for error messages)."""
    files = [getattr(cfg, f"{split}_ann") or f"data.{split}_ann"] + list(cfg.extra.values())
    return files[0] if len(files) == 1 else f"{files[0]} (or {', '.join(files[1:])})"


def build_dataset(cfg: DataConfig, split: str, tokenizer=None, train: Optional[bool] = None,
                  on_error: Optional[str] = None, pairs: Optional[bool] = None, seed: int = 0,
                  ann: Optional[Annotations] = None, uint8: bool = False) -> Dataset:
    """The torch dataset of a split. Defaults: training = split "train"; pairs (caption items)
    in training when the split has captions, clips otherwise; broken videos replaced in
    training and dropped (reported) otherwise. ``uint8``: frames come out cropped but not
    normalised (uint8), for ``mugstan.data.transforms.normalize`` on the training device."""
    ann = ann or load_annotations(cfg, split)
    train = split == "train" if train is None else train
    on_error = on_error or ("replace" if train else "drop")
    if getattr(ann, "box_source", None):  # AVA-format detection: one item per keyframe with its boxes
        from mugstan.data.datasets.ava import DetectionDataset

        return DetectionDataset(ann, cfg, train, None, on_error, seed)
    if ann.conversations is not None and (train if pairs is None else pairs):
        from mugstan.data.datasets.videoqa import ConversationDataset  # video chat: one item per conversation

        if tokenizer is None:
            raise ValueError("conversation items need the chat model's tokenizer")
        return ConversationDataset(ann, cfg, train, tokenizer, on_error, seed)
    pairs = (train and bool(ann.captions)) if pairs is None else pairs
    if pairs and tokenizer is None:
        raise ValueError("caption items need a tokenizer")
    cls = PairDataset if pairs else ClipDataset
    return cls(ann, cfg, train, tokenizer, on_error, seed, uint8)
