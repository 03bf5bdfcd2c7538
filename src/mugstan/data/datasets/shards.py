"""WebDataset tar shards: ``data.dataset: webdataset`` (training streams them, evaluation reads them;
``mugstan data shard`` writes them: ``mugstan.data.shard_writer``).

A shard is a tar of samples whose files sit next to each other, named KEY.EXT: video2dataset
writes KEY.mp4 (or another video extension), KEY.txt (the caption) and KEY.json (metadata);
img2dataset writes KEY.jpg / KEY.png and KEY.txt (an image is a one-frame video). A recognition
sample carries its class index as KEY.cls or as "label" in KEY.json. The ``webdataset`` library
opens the shards (local files, ``pipe:`` commands, http(s) URLs through curl) and splits the tar
stream into samples; the video bytes are decoded from memory by the same reader and frame
sampling as files (``mugstan.data.video.read_clip(data=...)``), so a clip is the same tensor from
a folder and from a shard.

Training (``ShardStream``): an epoch is ``data.epoch_samples`` samples (all processes; default:
the sum of the shards' counts in their ``manifest.json``). Each epoch the shard list is permuted
(seed, epoch) and dealt to the slots, slot = rank x loader workers + worker: slot s reads shards
s, s + slots, ... of the permutation, so processes and workers read disjoint shards. Each slot
passes its samples through a shuffle buffer (``data.shuffle_buffer`` samples, seeded by seed,
epoch and slot) and takes exactly its share of the epoch's micro-batches: a slot whose shards run
out reads them again in another order (those samples repeat within the epoch); what a slot has
not read when its share is done is dropped for this epoch (next epoch deals the shards anew).
Every process therefore runs the same number of steps whatever the shard sizes: DDP never waits
for a process that ran out. With fewer shards than slots, slots share shards (their samples repeat
within an epoch; write smaller shards). A broken sample (a video that does not decode, no
caption, no label) is skipped and the next one taken, and a shard that ends early (a truncated
tar) yields the samples before the damage: both travel in the batch's ``failed`` list as
(index, "SHARD/KEY.EXT: reason") and reach metrics.jsonl as ``skipped_video`` events.

Each batch says how many samples its slot has taken from its shuffle buffer this epoch
(``batch["stream"] = (worker role, count)``); the training state keeps the counts, and
``--resume`` replays each slot's stream to that count without decoding (the tar bytes are read
again, the videos are not), then continues with the batch the interrupted run would have made
next. The frames a sample gets are a function of (seed, epoch, its position in the stream), so
a resumed run is bit-identical to an uninterrupted one. Resume with the same number of processes
and ``data.num_workers`` (the slots depend on both).
"""

from __future__ import annotations

import itertools
import json
import logging
import tarfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mugstan.config import DataConfig
from mugstan.data.datasets.base import MAX_REPLACEMENTS, Annotations, Clip, ClipReader, collate
from mugstan.data.video import IMAGE_EXTENSIONS, VideoError
from mugstan.errors import UserError, one_line

logger = logging.getLogger(__name__)
VIDEO_SUFFIXES = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "flv", "3gp", "wmv")
IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
MANIFEST = "manifest.json"


class ShardError(UserError):
    """A shard that cannot be read at all (missing file, unreachable URL), or a data.shards value."""


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def expand_shards(spec, root: str = "", field: str = "data.shards") -> list[str]:
    """``data.shards`` (a brace pattern, ``::``-separated patterns, or a list of them) -> the shard
    URLs in order. Relative local paths are inside ``data.root``."""
    patterns = [spec] if isinstance(spec, str) else list(spec or [])
    urls = [u for p in patterns for u in expand_urls(str(p))]
    if not urls:
        raise ShardError(
            f"{field} is empty: give the shards as a brace pattern, e.g. /data/webvid/{{00000..01023}}.tar"
        )
    return [
        u if is_remote(u) or not root or Path(u).expanduser().is_absolute() else str(Path(root).expanduser() / u)
        for u in urls
    ]


def check_shards(urls: list[str], field: str = "data.shards") -> None:
    """Every local shard is a file, and the first remote one answers: else one ``ShardError`` naming it."""
    for url in urls:
        if not is_remote(url) and not Path(url.removeprefix("file:")).expanduser().is_file():
            raise ShardError(f"{field}: shard {url} does not exist (check the pattern and data.root)")
    remote = [u for u in urls if is_remote(u)]
    if remote:
        stream = None
        try:
            stream = gopen(remote[0])
            head = stream.read(512)
        except Exception as err:  # curl, a pipe's command, the network: each fails its own way
            raise ShardError(f"{field}: shard {remote[0]} cannot be read ({one_line(err)})") from None
        finally:
            _close(stream)
        if len(head) < 512:
            raise ShardError(
                f"{field}: shard {remote[0]} is unreachable or empty (got {len(head)} bytes; "
                "check the URL, the command and the network)"
            )
        if head[257:262] != b"ustar" and head[:2] != b"\x1f\x8b":  # a tar header, or gzip (.tar.gz)
            raise ShardError(
                f"{field}: shard {remote[0]} is not a tar file (an error page? its first bytes: {head[:40]!r})"
            )


def _close(stream) -> None:
    try:
        if stream is not None:
            stream.close()
    except Exception:  # a pipe closed early reports its command's status: nothing to act on
        pass


def read_shard(url: str, failures: list) -> Iterator[dict]:
    """The samples of one shard: {"__key__", "__url__", SUFFIX: bytes, ...}. A shard that cannot
    be opened or ends early (truncated) appends ("SHARD/KEY", reason) to ``failures`` and yields
    the samples it had before."""
    last = [""]

    def files(stream):
        for f in tar_file_iterator(stream):
            last[0] = f["fname"]
            yield {**f, "__url__": url}

    stream = None
    try:
        stream = gopen(url)
        yield from group_by_keys(files(stream))
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        where = f"after {last[0]}" if last[0] else "at its start"
        said = one_line(err).split(" @ <")[0]  # webdataset appends the stream object's repr
        failures.append((f"{url}/{last[0]}", f"shard unreadable {where} (truncated or damaged tar: {said})"))
    finally:
        _close(stream)


def sample_parts(sample: dict, captions: bool, labels: bool) -> tuple[Clip, Optional[str], Optional[int]]:
    """(clip with the media bytes, caption, label) of one sample; ``VideoError`` naming SHARD/KEY
    when the sample has no video or image, or lacks the caption or label asked for."""
    name = f"{sample['__url__']}/{sample['__key__']}"
    media = next((s for s in VIDEO_SUFFIXES + IMAGE_SUFFIXES if s in sample), None)
    if media is None:
        raise VideoError(
            name, f"no video or image in the sample (files: {', '.join(k for k in sample if not k.startswith('__'))})"
        )
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    caption = label = None
    if captions:
        caption = sample["txt"].decode("utf-8", "replace").strip() if "txt" in sample else meta.get("caption")
        if not caption:
            raise VideoError(name, "no caption (KEY.txt missing or empty)")
    if labels:
        try:
            label = int(sample["cls"]) if "cls" in sample else int(meta["label"])
        except (KeyError, ValueError, TypeError):
            raise VideoError(name, "no class label (KEY.cls, or \"label\" in KEY.json)") from None
    return Clip(f"{name}.{media}", meta.get("start"), meta.get("end"), sample[media]), caption, label


def manifest_samples(urls: list[str]) -> Optional[int]:
    """Samples in ``urls`` by their folders' manifest.json (``mugstan data shard`` writes it) or each
    shard's SHARD_stats.json ("successes": video2dataset and img2dataset write it); None when a
    shard is remote or counted by neither."""
    counts: dict[str, int] = {}
    for folder in {Path(u).parent for u in urls if not is_remote(u)}:
        path = folder / MANIFEST
        if path.is_file():
            for shard in json.loads(path.read_text()).get("shards", []):
                counts[str(folder / shard["name"])] = shard["samples"]
    for url in urls:
        stats = Path(url).with_name(Path(url).stem + "_stats.json")
        if url not in counts and not is_remote(url) and stats.is_file():
            counts[url] = json.loads(stats.read_text()).get("successes")
    if any(counts.get(u) is None for u in urls):
        return None
    return sum(counts[u] for u in urls)


def shuffled(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer of ``size`` samples: each sample read replaces a random one of the buffer,
    which is yielded (the order is a function of ``rng``'s seed)."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = sample
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


class ShardStream(IterableDataset):
    """This process's training micro-batches from shards (collated dicts, as the folder datasets' batches).

    Also the loop's sampler: ``steps_per_epoch``, ``set_epoch(epoch, skip_steps)``, ``loader(...)``.
    ``consumed`` {worker role: samples taken this epoch} is where each slot's stream resumes.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer=None,
        labels: bool = False,
        seed: int = 0,
        batch_size: int = 1,
        world: int = 1,
        rank: int = 0,
        accum: int = 1,
        uint8: bool = False,
    ):
        self.urls = expand_shards(cfg.shards, cfg.root)
        check_shards(self.urls)
        self.epoch_samples = cfg.epoch_samples or manifest_samples(self.urls)
        if not self.epoch_samples:
            raise ShardError(
                "data.epoch_samples is not set and the shards have no manifest.json listing them: "
                "set data.epoch_samples (samples per epoch, all processes)"
            )
        if batch_size % (world * accum):
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by processes x accum_steps = {world * accum}"
            )
        if self.epoch_samples < batch_size:
            raise ShardError(
                f"data.epoch_samples={self.epoch_samples} is fewer than one batch of train.batch_size={batch_size}"
            )
        self.cfg, self.tokenizer, self.labels, self.seed = cfg, tokenizer, labels, seed
        self.world, self.rank, self.accum = world, rank, accum
        self.local = batch_size // (world * accum)
        self.steps_per_epoch = self.epoch_samples // batch_size
        self.reader = ClipReader(cfg, True, seed, uint8=uint8)
        self.epoch, self.skip, self.consumed = 0, 0, {}

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip, self.reader.epoch = epoch, skip_steps * self.accum, epoch

    def loader(self, num_workers: int, pin_memory: bool = False) -> DataLoader:
        return DataLoader(self, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)

    def shards_of(self, slot: int, slots: int) -> list[str]:
        """This epoch's shards of reader ``slot`` of ``slots``: every slots-th of a permutation seeded by
        (seed, epoch)."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        return [self.urls[i] for i in order[slot::slots]] or [self.urls[order[slot % len(self.urls)]]]

    def _stream(self, slot: int, slots: int, failures: list) -> Iterator[dict]:
        mine = self.shards_of(slot, slots)
        rng = np.random.default_rng([self.seed, self.epoch, slot])

        def passes():
            for n in itertools.count():
                read = 0
                for url in mine if n == 0 else [mine[i] for i in rng.permutation(len(mine))]:
                    for sample in read_shard(url, failures):
                        read += 1
                        yield sample
                if not read:  # every shard of this slot is empty or broken: reading them again would loop forever
                    said = f" ({failures[-1][0]}: {failures[-1][1]})" if failures else ""
                    raise ShardError(
                        f"no readable sample in shards {', '.join(mine[:3])}{' ...' if len(mine) > 3 else ''}{said}"
                    )

        return shuffled(passes(), self.cfg.shuffle_buffer, rng)

    def item(self, sample: dict, index: int) -> dict:
        clip, caption, label = sample_parts(sample, self.tokenizer is not None, self.labels)
        frames, mask = self.reader.read(clip, index)
        item = {"frames": frames, "frame_mask": mask, "index": index}
        if caption is not None:
            ids, text_mask = self.tokenizer(caption)
            item.update(ids=ids[0], text_mask=text_mask[0])
        if label is not None:
            item["label"] = label
        return item

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        role = (worker + self.skip) % workers  # the loader polls worker 0 first: it makes micro-batch `skip`
        slot, slots = self.rank * workers + role, self.world * workers
        failures: list = []
        stream = self._stream(slot, slots, failures)
        taken = self.consumed.get(role, 0)
        for _ in range(taken):  # replay to the checkpointed position: read, not decoded
            next(stream)
        failures.clear()  # counted before the checkpoint
        for _ in range(self.skip + (role - self.skip) % workers, self.steps_per_epoch * self.accum, workers):
            items, failed, streak = [], [], 0
            while len(items) < self.local:
                sample, index = next(stream), taken * slots + slot
                taken += 1
                try:
                    items.append(self.item(sample, index))
                    streak = 0
                except VideoError as err:
                    failed.append((index, str(err)))
                    streak += 1
                    if streak >= MAX_REPLACEMENTS:
                        raise ShardError(f"{MAX_REPLACEMENTS} samples in a row are broken, the last: {err}") from None
            batch = collate(items)
            batch["failed"] = [(-1, f"{name}: {reason}") for name, reason in failures] + failed
            batch["stream"] = torch.tensor([role, taken])
            failures.clear()
            yield batch


def shard_annotations(cfg: DataConfig, split: str) -> Annotations:
    """An evaluation split from shards (``data.val_shards`` / ``data.test_shards``), read into memory
    once (every sample, in shard order), or from a JSONL file (``data.val_ann`` / ``data.test_ann``,
    the ``jsonl`` layout) while training streams. Training shards are streamed, never listed."""
    from mugstan.data.datasets.formats import jsonl

    field = f"data.{split}_shards"
    spec = getattr(cfg, f"{split}_shards", None) if split != "train" else None
    if not spec:
        if getattr(cfg, f"{split}_ann"):
            return jsonl(cfg, split)
        raise ShardError(
            f"data.dataset=webdataset: the {split} split needs {field} (shards) or data.{split}_ann (a JSONL file)"
            if split != "train"
            else "data.dataset=webdataset streams the training shards (data.shards); they are not listed as annotations"
        )
    urls = expand_shards(spec, cfg.root, field)
    check_shards(urls, field)
    failures: list = []
    clips, captions, links, labels = [], [], [], []
    for url in urls:
        for sample in read_shard(url, failures):
            has_label = "cls" in sample or b'"label"' in sample.get("json", b"")
            try:
                clip, caption, label = sample_parts(sample, "txt" in sample, has_label)
            except VideoError as err:
                failures.append((err.path, err.reason))
                continue
            if caption:
                captions.append(caption)
                links.append(len(clips))
            labels.append(label)
            clips.append(clip)
    for name, reason in failures:
        logger.warning(f"{field}: skipped {name}: {reason}")
    has_labels = any(lab is not None for lab in labels)
    if has_labels and any(lab is None for lab in labels):
        raise ShardError(f"{field}: some samples have a label (KEY.cls or \"label\" in KEY.json) and some do not")
    names = Path(cfg.extra["class_names"]).read_text().split("\n") if cfg.extra.get("class_names") else None
    return Annotations(
        clips,
        captions,
        links,
        labels if has_labels else None,
        [n for n in names if n.strip()] if names else None,
        source=field,
    )


# ---- writing: mugstan data shard ---------------------------------------------------------------
