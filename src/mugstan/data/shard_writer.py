"""``mugstan data shard SOURCE OUT_DIR``: a folder of videos or a config's split written as tar
shards in video2dataset's layout (``mugstan.data.datasets.shards`` reads them), with a ``manifest.json``
of samples per shard; each shard is written under a temporary name and renamed, and a second run
keeps the listed shards and continues."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Optional

from mugstan.data.datasets.shards import IMAGE_SUFFIXES, MANIFEST
from mugstan.data.video import IMAGE_EXTENSIONS, VideoError
from mugstan.errors import UserError, one_line


def source_samples(source: str, overrides: list[str], split: str) -> list[dict]:
    """The samples to shard, in a fixed order: {"path", "captions", "label", "start", "end"}.
    SOURCE is a folder of videos (recursive, sorted; a caption from VIDEO.txt next to a video when
    there is one) or an experiment config (its ``split``: any dataset mugstan reads)."""
    from mugstan.data.datasets.formats import VIDEO_EXTENSIONS

    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"{path}: no video or image files in this folder")
        return [{"path": str(p), "name": str(p.relative_to(path)), "start": None, "end": None, "label": None,
                 "captions": [p.with_suffix(".txt").read_text().strip()] if p.with_suffix(".txt").is_file() else []}
                for p in files]
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise UserError(f"{source}: not a folder of videos nor an experiment config (.yaml)")
    from mugstan.config import load_config
    from mugstan.data.datasets import load_annotations

    ann = load_annotations(load_config(path, overrides).data, split)
    captions: list[list[str]] = [[] for _ in ann.clips]
    for caption, clip in zip(ann.captions, ann.caption_clip, strict=True):
        captions[clip].append(caption)
    return [{"path": c.path, "name": c.path, "start": c.start, "end": c.end, "captions": captions[j],
             "label": ann.labels[j] if ann.labels is not None else None} for j, c in enumerate(ann.clips)]


def encode_sample(job: tuple) -> tuple[int, Optional[dict], Optional[str]]:
    """(position, {suffix: bytes}, None), or (position, None, reason) for a video that cannot be used.

    The media's bytes as they are (probed first), or re-encoded as ``data compress`` does when
    ``compress`` holds its options (fps, short_side, crf, gop, fast_decode)."""
    import tempfile

    from mugstan.data.compress import compress_video
    from mugstan.data.video import probe

    position, sample, compress = job
    src = Path(sample["path"])
    suffix = src.suffix.lower().lstrip(".")
    try:
        if suffix in IMAGE_SUFFIXES:
            payload = src.read_bytes()
        elif compress:
            with tempfile.TemporaryDirectory() as tmp:
                compress_video(str(src), str(Path(tmp) / "v.mp4"), *compress)
                payload, suffix = (Path(tmp) / "v.mp4").read_bytes(), "mp4"
        else:
            probe(src)
            payload = src.read_bytes()
    except (VideoError, OSError) as err:
        return position, None, one_line(err)
    meta = {"source": sample["name"], **{k: sample[k] for k in ("start", "end", "label") if sample[k] is not None}}
    if len(sample["captions"]) > 1:
        meta["captions"] = sample["captions"]
    files = {suffix: payload, "json": json.dumps(meta).encode()}
    if sample["captions"]:
        files["txt"] = sample["captions"][0].encode()
    if sample["label"] is not None:
        files["cls"] = str(sample["label"]).encode()
    return position, files, None


def write_shards(samples: list[dict], out: Path, shard_size: int, compress: Optional[tuple] = None, workers: int = 1,
                 progress: bool = True) -> dict:
    """Write ``samples`` as OUT/00000.tar, 00001.tar, ... of ``shard_size`` samples (fewer where a
    video could not be used) and OUT/manifest.json {"shard_size", "samples", "shards": [{"name",
    "samples"}], "failed": [...]}, rewritten after each shard. A shard is written under a temporary
    name and renamed when complete; a second run keeps the shards the manifest lists and goes on
    from the next one. Returns the manifest."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from mugstan.files import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.tar.*.tmp"):  # a shard an interrupted run was writing
        leftover.unlink()
    manifest_path = out / MANIFEST
    manifest = {"shard_size": shard_size, "samples": 0, "shards": [], "failed": []}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("shard_size") != shard_size:
            raise UserError(
                f"{manifest_path}: these shards were written with --shard-size {manifest.get('shard_size')}; "
                f"continue with that size, or write into another folder"
            )
    done = len(manifest["shards"])
    jobs = [(i, samples[i], compress) for i in range(done * shard_size, len(samples))]
    shards = [jobs[i : i + shard_size] for i in range(0, len(jobs), shard_size)]
    bar = tqdm(
        total=len(samples),
        initial=min(len(samples), done * shard_size),
        unit="sample",
        desc="sharding",
        disable=not progress,
        dynamic_ncols=True,
    )
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for k, shard_jobs in enumerate(shards, done):
            name = f"{k:05d}.tar"
            count = 0
            with atomic_file(out / name) as tmp, tarfile.open(tmp, "w") as tar:
                for position, files, error in pool.map(encode_sample, shard_jobs):
                    bar.update(1)
                    if files is None:
                        manifest["failed"].append({"source": samples[position]["name"], "reason": error})
                        continue
                    for suffix, payload in files.items():
                        info = tarfile.TarInfo(f"{position:09d}.{suffix}")
                        info.size, info.mode, info.mtime = len(payload), 0o444, 0
                        tar.addfile(info, io.BytesIO(payload))
                    count += 1
            manifest["shards"].append({"name": name, "samples": count})
            manifest["samples"] += count
            with atomic_file(manifest_path) as tmp:
                tmp.write_text(json.dumps(manifest, indent=1))
    bar.close()
    return manifest
