"""``mugstan index``: embed a folder of videos into a search index (incremental).

    mugstan index VIDEO_DIR --checkpoint PATH --out INDEX_DIR [--window 8 --stride 4 --batch-size 16]

Every video under VIDEO_DIR (recursively; the containers in ``VIDEO_EXTENSIONS``) becomes one or
more windows: a video up to ``--window`` seconds long is one window, a longer one is cut into
windows of ``--window`` seconds starting every ``--stride`` seconds, the last one ending at the
end of the video. Each window is embedded on its own (``--frames`` frames spread over it) and
keeps its start and end time in seconds from the start of the video stream.

The index folder is readable without mugstan (numpy + json)::

    embeddings.npy   float32 [N, E] unit vectors (dual encoders), or [N, T, E] per-frame
                     features for Mug models; row i is the window items.json[i]
    mask.npy         bool [N, T] real frames (Mug models only)
    items.json       [{"path": "sub/clip.mp4", "start": 0.0, "end": 8.0}, ...], one per row;
                     paths are relative to the video folder, with "/" separators
    index.json       format, the video folder ("root"), the model's identity (checkpoint path
                     and sha256 of its files), similarity ("dot" | "mug"), shape, window,
                     stride, frames, and per file: size, mtime_ns, rows
    report.json      the files that were not indexed, each with the reason

Re-running updates the index in place: files whose size and modification time are unchanged keep
their rows, new and changed files are embedded, removed files leave the index. Changing
``--window``, ``--stride`` or ``--frames`` re-embeds every file. A different model (other
weights or config) or another video folder is refused: the embeddings would not be comparable.

Symlinks: a symlinked file whose target lies inside VIDEO_DIR is indexed under the link's path;
one that points outside is not indexed (it is listed in the report), because the search page
only ever serves files inside the indexed folder. Symlinked folders are not followed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from tqdm import tqdm

from mugstan.config import DataConfig
from mugstan.data.datasets import Clip, ClipReader
from mugstan.data.datasets.formats import VIDEO_EXTENSIONS
from mugstan.data.video import VideoError, probe

FORMAT = 1
FILES = ("embeddings.npy", "mask.npy", "items.json", "report.json", "index.json")  # index.json written last


def model_identity(checkpoint) -> dict:
    """What makes embeddings comparable: {"checkpoint": absolute path, "sha256": of its weights
    and config (a checkpoint folder) or of the file (a converted .safetensors)}."""
    from mugstan.hub import resolve_checkpoint

    path = resolve_checkpoint(checkpoint).resolve()
    files = [path] if path.is_file() else [path / "model.safetensors", path / "config.yaml"]
    digest = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{checkpoint}: not a mugstan checkpoint ({f.name} is missing); pass a checkpoint "
                                    "folder (model.safetensors + config.yaml) or a `mugstan convert` .safetensors file")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return {"checkpoint": str(path), "sha256": digest.hexdigest()}


def windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """[(start, end)] seconds covering [0, duration]: one window when ``duration <= window``, else
    windows of ``window`` seconds every ``stride`` seconds, the last one ending at ``duration``.
    Times are rounded to milliseconds."""
    if window <= 0 or not 0 < stride <= window:
        raise ValueError(f"need window > 0 and 0 < stride <= window (got window={window}, stride={stride}); "
                         "a stride longer than the window would leave parts of the videos unindexed")
    if duration <= window:
        return [(0.0, round(duration, 3))]
    n = math.ceil((duration - window) / stride - 1e-6)  # strides until a window reaches the end
    spans = [(round(min(i * stride, duration - window), 3), round(min(i * stride + window, duration), 3)) for i in range(n + 1)]
    return list(dict.fromkeys(spans))


def find_videos(root: Path) -> tuple[list[Path], list[dict]]:
    """Video files under ``root`` (sorted) and report entries for the symlinks that are skipped.

    ``root`` must be resolved. Symlinked folders are not followed; a symlinked file is kept only
    when its target is a file inside ``root``.
    """
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                skipped.append({"path": (here / name).relative_to(root).as_posix(), "reason": "symlinked folder: not followed"})
        for name in filenames:
            path = here / name
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if path.is_symlink():
                real = path.resolve()
                if root not in real.parents:
                    skipped.append({"path": path.relative_to(root).as_posix(),
                                    "reason": f"symlink to {real}, outside the indexed folder: not indexed (and never served)"})
                    continue
                if not real.is_file():
                    skipped.append({"path": path.relative_to(root).as_posix(), "reason": "broken symlink"})
                    continue
            found.append(path)
    return sorted(found), skipped


class IndexFolder:
    """Read / write the files of an index folder (layout in the module docstring)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    @property
    def exists(self) -> bool:
        return (self.folder / "index.json").is_file()

    def load(self) -> tuple[dict, list[dict], np.ndarray, Optional[np.ndarray]]:
        """(index.json dict, items, embeddings [N, E] or [N, T, E], mask [N, T] or None)."""
        if not self.exists:
            raise FileNotFoundError(f"{self.folder} is not a mugstan index (no index.json); build one with `mugstan index`")
        meta = json.loads((self.folder / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.folder}/index.json: index format {meta.get('format')!r}, this mugstan reads format {FORMAT}; "
                             "rebuild the index with this version (`mugstan index` into a new folder)")
        items = json.loads((self.folder / "items.json").read_text())
        emb = np.load(self.folder / "embeddings.npy")
        mask = np.load(self.folder / "mask.npy") if meta["similarity"] == "mug" else None
        if len(items) != len(emb) or list(emb.shape) != meta["shape"] or (mask is not None and mask.shape != emb.shape[:2]):
            raise ValueError(f"{self.folder}: items.json ({len(items)} rows), embeddings.npy {list(emb.shape)} and index.json "
                             f"(shape {meta['shape']}) do not agree (interrupted write?); run `mugstan index` again into a new folder")
        return meta, items, emb, mask

    def save(self, meta: dict, items: list[dict], emb: np.ndarray, mask: Optional[np.ndarray], report: list[dict]) -> None:
        """Write every file under a temporary name, then rename them into place, index.json last."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = {name: self.folder / f".{name}.tmp" for name in FILES}
        with open(tmp["embeddings.npy"], "wb") as f:
            np.save(f, emb.astype(np.float32, copy=False))
        if mask is not None:
            with open(tmp["mask.npy"], "wb") as f:
                np.save(f, mask.astype(bool, copy=False))
        tmp["items.json"].write_text(json.dumps(items))
        tmp["report.json"].write_text(json.dumps(report, indent=2))
        tmp["index.json"].write_text(json.dumps(meta, indent=2))
        for name in FILES:
            if tmp[name].exists():
                os.replace(tmp[name], self.folder / name)
        if mask is None:
            (self.folder / "mask.npy").unlink(missing_ok=True)


class WindowEmbedder:
    """Decodes windows of videos and embeds them in batches of ``batch_size`` windows, across files.

    ``add(key, path, start, end)`` queues one window (decoding it at once: ``VideoError`` on a bad
    file); ``results[key]`` collects ``(x [E] or [T, E], mask [T] or None)`` per window in order.
    """

    def __init__(self, model, cfg, frames: int, batch_size: int, device):
        self.model, self.batch_size, self.device = model, batch_size, device
        data = cfg.data if cfg else DataConfig(image_size=model.backbone.image_size)  # a converted file has no data section
        self.reader = ClipReader(dataclasses.replace(data, test_clips=1, test_crops=1), train=False, num_frames=frames)  # as in evaluation
        self.pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.results: dict[str, list] = {}

    def add(self, key: str, path: Path, start: float, end: float) -> None:
        self.pending.append((key, *self.reader.read(Clip(str(path), start, end), 0)))  # [T, 3, S, S], mask [T] (data.sampler=fps pads)
        self.results.setdefault(key, [])
        if len(self.pending) >= self.batch_size:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.pending:
            return
        batch = torch.stack([clip for _, clip, _ in self.pending]).to(self.device)  # [B, T, 3, S, S]
        frame_mask = torch.stack([m for _, _, m in self.pending]).to(self.device)  # [B, T]
        emb = self.model.encode_video(batch, frame_mask)
        x = emb.x.float().cpu().numpy()
        mask = None if emb.mask is None else emb.mask.cpu().numpy()
        for i, (key, *_) in enumerate(self.pending):
            if key in self.results:  # a file that failed later on was dropped
                self.results[key].append((x[i], None if mask is None else mask[i]))
        self.pending = []

    def drop(self, key: str) -> None:
        self.results.pop(key, None)


def build_index(video_dir, checkpoint, out, window: float = 8.0, stride: float = 4.0, frames: Optional[int] = None,
                batch_size: int = 16, device: str = "cpu", progress: bool = True) -> dict:
    """Create or update the index in ``out``; returns {"added", "kept", "removed", "failed", "rows"}
    (videos embedded now, videos kept from the previous index, videos that left it, files not
    indexed (listed in report.json), windows in the index)."""
    from mugstan.engine.checkpoint import load_model

    root = Path(video_dir).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{video_dir} is not a folder (VIDEO_DIR must be the folder of videos to index)")
    windows(window, window, stride)  # validates window and stride
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    identity = model_identity(checkpoint)
    folder = IndexFolder(out)
    old_meta, old_items, old_emb, old_mask = folder.load() if folder.exists else ({}, [], None, None)
    if old_meta:
        if old_meta["model"]["sha256"] != identity["sha256"]:
            raise ValueError(f"{out} was built with another model ({old_meta['model']['checkpoint']}, sha256 "
                             f"{old_meta['model']['sha256'][:12]}), not {checkpoint} ({identity['sha256'][:12]}); "
                             "index into a new folder, or delete this one")
        if old_meta["root"] != str(root):
            raise ValueError(f"{out} indexes {old_meta['root']}, not {root}; index into a new folder")
    model, cfg = load_model(checkpoint, device)
    if frames is None:
        frames = (cfg.data.test_num_frames or cfg.data.num_frames) if cfg else 12
    if frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames}")
    settings = {"window": window, "stride": stride, "frames": frames}
    reuse = bool(old_meta) and all(old_meta[k] == v for k, v in settings.items())
    old_files = old_meta.get("files", {}) if reuse else {}

    files, report = find_videos(root)
    embedder = WindowEmbedder(model, cfg, frames, batch_size, device)
    plan: list[tuple[str, os.stat_result, list[tuple[float, float]], Optional[list[int]]]] = []  # rel, stat, spans, old rows
    for path in tqdm(files, desc="indexing videos", unit="video", disable=not progress):
        rel = path.relative_to(root).as_posix()
        try:
            stat = path.stat()
            prev = old_files.get(rel)
            if prev and prev["size"] == stat.st_size and prev["mtime_ns"] == stat.st_mtime_ns:
                plan.append((rel, stat, [(old_items[i]["start"], old_items[i]["end"]) for i in prev["rows"]], prev["rows"]))
                continue
            spans = windows(probe(path).duration, window, stride)
            for start, end in spans:
                embedder.add(rel, path, start, end)
        except (VideoError, av.error.FFmpegError, OSError) as err:  # a bad file: reported, the others go on
            embedder.drop(rel)
            report.append({"path": rel, "reason": err.reason if isinstance(err, VideoError) else f"cannot be read ({err})"})
            continue
        plan.append((rel, stat, spans, None))
    embedder.flush()

    items, rows, masks, file_meta = [], [], [], {}
    counts = {"added": 0, "kept": 0, "failed": len(report)}
    for rel, stat, spans, old_rows in plan:
        if old_rows is not None:
            x, m = old_emb[old_rows], None if old_mask is None else old_mask[old_rows]
            counts["kept"] += 1
        else:
            x = np.stack([e for e, _ in embedder.results[rel]])
            m = None if embedder.results[rel][0][1] is None else np.stack([mk for _, mk in embedder.results[rel]])
            counts["added"] += 1
        file_meta[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": list(range(len(items), len(items) + len(spans)))}
        items.extend({"path": rel, "start": s, "end": e} for s, e in spans)
        rows.append(x)
        if m is not None:
            masks.append(m)
    counts["removed"] = len(set(old_meta.get("files", {})) - set(file_meta))
    if not rows:
        raise ValueError(f"no video under {root} could be indexed" + (f"; see {folder.folder / 'report.json'}" if report else " (no video files found)"))
    emb = np.concatenate(rows)
    mask = np.concatenate(masks) if masks else None
    meta = {"format": FORMAT, "root": str(root), "model": identity, "similarity": "dot" if mask is None else "mug",
            "shape": list(emb.shape), **settings, "files": file_meta}
    folder.save(meta, items, emb, mask, report)
    counts["rows"] = len(items)
    return counts


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", help="folder of videos (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="trained model: checkpoint folder or converted .safetensors")
    parser.add_argument("--out", required=True, help="index folder (created, or updated in place)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window for long videos (default 8)")
    parser.add_argument("--stride", type=float, default=4.0, help="seconds between window starts, at most --window (default 4)")
    parser.add_argument("--frames", type=int, default=None, help="frames per window (default: the model's config, 12 without one)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        counts = build_index(args.video_dir, args.checkpoint, args.out, args.window, args.stride, args.frames,
                             args.batch_size, args.device, progress=not args.no_progress)
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"index {args.out}: {counts['rows']} windows; {counts['added']} videos embedded, {counts['kept']} unchanged, "
          f"{counts['removed']} removed, {counts['failed']} not indexed"
          + (f" (see {Path(args.out) / 'report.json'})" if counts["failed"] else ""))
    return 0
