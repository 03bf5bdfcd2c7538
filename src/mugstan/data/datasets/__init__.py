"""Datasets: annotation adapters for every benchmark, and the two torch datasets they feed.

An adapter (``mugstan.data.datasets.formats``) reads a benchmark's files as distributed and
returns ``Annotations``: the clips (path, optional start/end seconds), the captions with the clip
each describes, and labels with class names for recognition. Two datasets then cover every task:

- ``PairDataset``: one item per (caption, clip) pair: retrieval training and post-pretraining;
- ``ClipDataset``: one item per clip: retrieval evaluation (each test video decoded once, the
  captions tokenised separately with ``caption_to_video``), recognition (labels, multi-view).

Items are dicts: ``frames`` float [T, 3, S, S] ([V, T, 3, S, S] for multi-view testing),
``frame_mask`` bool [T] (all True: short videos repeat frames), ``ids`` int64 [L] and
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

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from mugstan.config import DataConfig
from mugstan.data.transforms import ClipTransform
from mugstan.data.video import VideoError, read_clip


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
            raise ValueError(f"{self.source}: {len(self.captions)} captions but {len(self.caption_clip)} caption->clip links")
        if self.labels is not None and len(self.labels) != len(self.clips):
            raise ValueError(f"{self.source}: {len(self.labels)} labels for {len(self.clips)} clips")
        if not self.clips:
            raise ValueError(f"{self.source}: no videos in this split")

    @property
    def multi_caption(self) -> bool:
        return len(self.captions) != len(self.clips) or self.caption_clip != list(range(len(self.clips)))


class ClipReader:
    """Decode + transform one clip with the configured sampling: ``reader(clip, index) -> float
    [T, 3, S, S]`` (or [V, T, 3, S, S] with several test views). Datasets and the search index
    read clips through it; ``num_frames`` overrides the config's."""

    def __init__(self, cfg: DataConfig, train: bool, seed: int = 0, num_frames: Optional[int] = None):
        self.cfg, self.train, self.seed = cfg, train, seed
        self.num_frames = num_frames or (cfg.num_frames if train else (cfg.test_num_frames or cfg.num_frames))
        self.views = 1 if train else cfg.test_clips
        self.transform = ClipTransform(cfg.image_size, train, cfg.crop_scale, cfg.hflip,
                                       1 if train else cfg.test_crops, cfg.resize_short)
        self.epoch = 0

    def __call__(self, clip: Clip, index: int) -> torch.Tensor:
        # Training randomness (frames, crop, flip) is a function of (seed, epoch, index): the same
        # whatever the number of workers or processes, and after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.train else None
        short = self.cfg.resize_short or self.cfg.image_size
        views = []
        for v in range(self.views):
            frames = read_clip(clip.path, self.num_frames, self.train, short, clip.start, clip.end,
                               self.cfg.sampler, self.cfg.dense_stride, rng, v, self.views)
            out = self.transform(frames, gen)  # [T, 3, S, S] or [crops, T, 3, S, S]
            views.extend(out.unbind(0) if out.dim() == 5 else [out])
        return views[0] if len(views) == 1 else torch.stack(views)


ON_ERROR = ("raise", "replace", "drop")
MAX_REPLACEMENTS = 10


class _Base(Dataset):
    def __init__(self, ann: Annotations, cfg: DataConfig, train: bool, tokenizer=None, on_error: str = "raise", seed: int = 0):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.ann, self.cfg, self.train, self.tokenizer, self.on_error = ann, cfg, train, tokenizer, on_error
        self.reader = ClipReader(cfg, train, seed)

    def set_epoch(self, epoch: int) -> None:
        """Training samples frames from (seed, epoch, index): the same run draws the same frames."""
        self.reader.epoch = epoch

    def _frames(self, clip_index: int, item_index: int) -> dict:
        frames = self.reader(self.ann.clips[clip_index], item_index)
        t = frames.shape[-4]
        return {"frames": frames, "frame_mask": torch.ones(t, dtype=torch.bool), "index": item_index}

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


def collate(items: list[dict]) -> dict:
    """Stack the good items; every skipped or dropped one is in ``batch["failed"]`` as (index, "path: reason")."""
    good = [it for it in items if "error" not in it]
    batch: dict = {"failed": [f for it in items for f in it.get("failed", [])]}
    if not good:
        return batch
    for key in (k for k in good[0] if k != "failed"):
        values = [it[key] for it in good]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


def load_annotations(cfg: DataConfig, split: str) -> Annotations:
    """The split ("train" | "val" | "test") of the dataset named by ``cfg.dataset``."""
    from mugstan.data.datasets.formats import FORMATS
    from mugstan.data.datasets.videoqa import QA_FORMATS

    formats = {**FORMATS, **QA_FORMATS}
    if cfg.dataset not in formats:
        raise ValueError(f"data.dataset={cfg.dataset!r} is not one of {', '.join(sorted(formats))}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return formats[cfg.dataset](cfg, split)


def build_dataset(cfg: DataConfig, split: str, tokenizer=None, train: Optional[bool] = None,
                  on_error: Optional[str] = None, pairs: Optional[bool] = None, seed: int = 0,
                  ann: Optional[Annotations] = None) -> Dataset:
    """The torch dataset of a split. Defaults: training = split "train"; pairs (caption items)
    in training when the split has captions, clips otherwise; broken videos replaced in
    training and dropped (reported) otherwise."""
    ann = ann or load_annotations(cfg, split)
    train = split == "train" if train is None else train
    on_error = on_error or ("replace" if train else "drop")
    if ann.conversations is not None and (train if pairs is None else pairs):
        from mugstan.data.datasets.videoqa import ConversationDataset  # video chat: one item per conversation

        if tokenizer is None:
            raise ValueError("conversation items need the chat model's tokenizer")
        return ConversationDataset(ann, cfg, train, tokenizer, on_error, seed)
    pairs = (train and bool(ann.captions)) if pairs is None else pairs
    if pairs and tokenizer is None:
        raise ValueError("caption items need a tokenizer")
    cls = PairDataset if pairs else ClipDataset
    return cls(ann, cfg, train, tokenizer, on_error, seed)
