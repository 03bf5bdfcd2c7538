"""What every dataset shares: ``Clip`` and ``Annotations`` (what a format adapter returns), the
``ClipReader`` (decode + transform one clip), the torch datasets over them and ``collate``.

The package (``mugstan.data.datasets``) documents the items and builds datasets from a config;
the adapters (``formats.py``, ``ava.py``, ``videoqa.py``) import from here, never from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from mugstan.config import DataConfig
from mugstan.data.transforms import ClipTransform
from mugstan.data.video import FrameCache, VideoError, read_clip
from mugstan.errors import AnnotationError


@dataclass
class Clip:
    path: str
    start: Optional[float] = None
    end: Optional[float] = None
    data: Optional[bytes] = None  # the file's bytes (a sample of a tar shard); ``path`` then names it


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
            raise AnnotationError(
                f"{self.source}: {len(self.captions)} captions but {len(self.caption_clip)} caption->clip links"
            )
        if self.labels is not None and len(self.labels) != len(self.clips):
            raise AnnotationError(f"{self.source}: {len(self.labels)} labels for {len(self.clips)} clips")
        if not self.clips:
            raise AnnotationError(f"{self.source}: no videos in this split")
        bad = next((c for c in self.captions if not isinstance(c, str)), None)
        if bad is not None:
            raise AnnotationError(
                f"{self.source}: caption {bad!r} is of type {type(bad).__name__}, not a text: write captions as strings"
            )

    @property
    def multi_caption(self) -> bool:
        return len(self.captions) != len(self.clips) or self.caption_clip != list(range(len(self.clips)))


class ClipReader:
    """Decode + transform one clip with the configured sampling: ``reader(clip, index) -> float
    [T, 3, S, S]`` (or [V, T, 3, S, S] with several test views). Datasets and the search index
    read clips through it; ``num_frames`` overrides the config's."""

    def __init__(
        self, cfg: DataConfig, train: bool, seed: int = 0, num_frames: Optional[int] = None, uint8: bool = False
    ):
        self.cfg, self.train, self.seed = cfg, train, seed
        self.num_frames = num_frames or (cfg.num_frames if train else (cfg.test_num_frames or cfg.num_frames))
        self.views = 1 if train else cfg.test_clips
        # Testing resizes the short side to data.test_resize_short (default: data.resize_short).
        self.short = (cfg.resize_short if train else (cfg.test_resize_short or cfg.resize_short)) or cfg.image_size
        self.transform = ClipTransform(
            cfg.image_size,
            train,
            cfg.crop_scale,
            cfg.hflip,
            1 if train else cfg.test_crops,
            self.short,
            uint8,
            str(cfg.interpolation),
        )
        # data.interpolation "fast": the decoder scales the short side; the others decode full frames
        self.decode_short = self.short if cfg.interpolation == "fast" else None
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
            frames, mask = read_clip(
                clip.path,
                self.num_frames,
                self.train,
                self.decode_short,
                clip.start,
                clip.end,
                self.cfg.sampler,
                self.cfg.dense_stride,
                rng,
                v,
                self.views,
                sample_fps=self.cfg.sample_fps,
                return_mask=True,
                cache=self.cache,
                data=clip.data,
                decoder=str(self.cfg.decoder),
                device=str(self.cfg.decode_device),
            )
            out = self.transform(frames, gen)  # [T, 3, S, S] or [crops, T, 3, S, S]
            views.extend(out.unbind(0) if out.dim() == 5 else [out])
        return (views[0] if len(views) == 1 else torch.stack(views)), mask


ON_ERROR = ("raise", "replace", "drop")
MAX_REPLACEMENTS = 10


class _Base(Dataset):
    def __init__(
        self,
        ann: Annotations,
        cfg: DataConfig,
        train: bool,
        tokenizer=None,
        on_error: str = "raise",
        seed: int = 0,
        uint8: bool = False,
    ):
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
            path, _, reason = failed[-1][1].partition(": ")
            raise VideoError(
                path,
                f"{reason} (the last of {MAX_REPLACEMENTS} videos in a row that failed; `mugstan data check` "
                "lists every missing or broken one)",
            )
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
