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
    index.json       format, the video folder ("root"), the model's identity (checkpoint path or
                     hf-hub:/local-dir: spec, and sha256 of its files), similarity ("dot" | "mug"), shape, window,
                     stride, frames, and per file: size, mtime_ns, rows
    report.json      the files that were not indexed, each with the reason, and the files that
                     were indexed with a note ("indexed": true; e.g. windows capped)

Re-running updates the index in place: files whose size and modification time are unchanged keep
their rows, new and changed files are embedded, removed files leave the index. Changing
``--window``, ``--stride`` or ``--frames`` re-embeds every file. A different model (other
weights or config) or another video folder is refused: the embeddings would not be comparable.

The folder is written whole and swapped in (``mugstan.files.atomic_folder``): a crash at any
point leaves the previous index or the new one, and the next ``mugstan index`` finishes an
interrupted swap; ``search`` and ``serve`` read the latest complete one. A damaged file is an
error that names it (delete the folder and index again; the videos are never touched).

Windows are bounded by the frames that exist: the frame count comes from the container, counted
from its packets when the container only estimates it (or claims more frames than the file has
bytes); a video with fewer frames than windows keeps only the windows that hold a frame, and at
most ``MAX_WINDOWS`` windows of one video are indexed (a report entry says so).

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
from mugstan.data.video import VideoError, VideoInfo, near_frames, probe
from mugstan.engine.distributed import device_arg
from mugstan.errors import ArgumentError, CorruptFileError, MismatchError, MissingFileError, UserError
from mugstan.files import atomic_folder, readable_folder, recover_folder

FORMAT = 1
FILES = ("embeddings.npy", "mask.npy", "items.json", "report.json", "index.json")
MAX_WINDOWS = 20_000  # per video: 22 hours at the default 4 s stride
MAX_FRAMES = 256  # per window, for models without a temporal embedding that limits it


def frame_limit(model) -> Optional[int]:
    """The most frames per clip the model's temporal position embeddings cover (None: no such limit)."""
    sizes = [
        m.num_embeddings
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in ("time_embed", "frame_position_embeddings")
    ]
    return min(sizes) if sizes else None


def model_identity(checkpoint) -> dict:
    """What makes embeddings comparable: {"checkpoint": how to load it again, "sha256": of its weights
    and config (a checkpoint folder) or of the file (a converted .safetensors)}.

    "checkpoint" is a path's absolute path, or the spec itself: ``local-dir:`` with the folder made
    absolute, ``hf-hub:org/name`` pinned to the commit it resolved to (``@<commit>`` unless it names a
    revision), never the Hugging Face cache's blob path, so ``mugstan search INDEX`` loads it again."""
    from mugstan.hub import HF_PREFIX, LOCAL_PREFIX, parse_hf_spec, resolve_checkpoint

    resolved = resolve_checkpoint(checkpoint)  # for hf-hub: .../snapshots/<commit>[/model.safetensors]
    path = resolved.resolve()
    source = str(path)
    if str(checkpoint).startswith(LOCAL_PREFIX):
        source = LOCAL_PREFIX + str(Path(str(checkpoint)[len(LOCAL_PREFIX) :]).expanduser().resolve())
    elif str(checkpoint).startswith(HF_PREFIX):
        repo_id, revision = parse_hf_spec(str(checkpoint))
        commit = (resolved if resolved.is_dir() else resolved.parent).name
        source = f"{HF_PREFIX}{repo_id}@{revision or commit}"
    files = [path] if path.is_file() else [path / "model.safetensors", path / "config.yaml"]
    digest = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise MissingFileError(
                f"{checkpoint}: not a mugstan checkpoint ({f.name} is missing); pass a checkpoint "
                "folder (model.safetensors + config.yaml) or a `mugstan convert` .safetensors file"
            )
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return {"checkpoint": source, "sha256": digest.hexdigest()}


def windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """[(start, end)] seconds covering [0, duration]: one window when ``duration <= window``, else
    windows of ``window`` seconds every ``stride`` seconds, the last one ending at ``duration``.
    Times are rounded to milliseconds."""
    if not (math.isfinite(window) and math.isfinite(stride)) or window <= 0 or not 0 < stride <= window:
        raise ArgumentError(
            f"need window > 0 and 0 < stride <= window (got window={window}, stride={stride}); "
            "a stride longer than the window would leave parts of the videos unindexed"
        )
    if duration <= window:
        return [(0.0, round(duration, 3))]
    n = math.ceil((duration - window) / stride - 1e-6)  # strides until a window reaches the end
    spans = [
        (round(min(i * stride, duration - window), 3), round(min(i * stride + window, duration), 3))
        for i in range(n + 1)
    ]
    return list(dict.fromkeys(spans))


def video_windows(info: VideoInfo, window: float, stride: float) -> tuple[list[tuple[float, float]], Optional[str]]:
    """The windows of one video, bounded by its frames, and a note when they were bounded.

    A video with fewer frames than planned windows (a very low frame rate, or a container that
    claims a long duration) keeps only the windows that hold a frame; more than ``MAX_WINDOWS``
    windows are cut to the first ``MAX_WINDOWS``.
    """
    duration = info.duration
    planned = 1 if duration <= window else math.ceil((duration - window) / stride - 1e-6) + 1
    short = None
    if info.claimed_frames and info.claimed_frames > info.num_frames + near_frames(info.fps):
        short = (
            f"the container says {info.claimed_frames / info.fps:.6g} s, but only {info.num_frames} frames "
            f"({duration:.6g} s) exist (truncated?): indexed what exists"
        )
    if planned <= info.num_frames:
        if planned <= MAX_WINDOWS:
            return windows(duration, window, stride), short
        covered = (MAX_WINDOWS - 1) * stride + window
        return windows(covered, window, stride), (
            f"{planned} windows: only the first {MAX_WINDOWS} ({covered:.0f} s of "
            f"{duration:.0f} s) are indexed; split the video or raise --stride"
        )
    starts: set[int] = set()  # window k covers [k * stride, k * stride + window]
    for i in range(info.num_frames):
        t = i / info.fps
        starts.update(range(max(0, math.ceil((t - window) / stride)), min(planned - 1, math.floor(t / stride)) + 1))
        if len(starts) >= MAX_WINDOWS:
            break
    spans = [(round(k * stride, 3), round(min(k * stride + window, duration), 3)) for k in sorted(starts)[:MAX_WINDOWS]]
    return spans, (
        f"{info.num_frames} frames over {duration:.6g} s ({info.fps:.3g} fps): indexed as the {len(spans)} windows "
        f"that hold a frame, not {planned}"
    )


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
                skipped.append(
                    {"path": (here / name).relative_to(root).as_posix(), "reason": "symlinked folder: not followed"}
                )
        for name in filenames:
            path = here / name
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if path.is_symlink():
                real = path.resolve()
                if root not in real.parents:
                    skipped.append(
                        {
                            "path": path.relative_to(root).as_posix(),
                            "reason": f"symlink to {real}, outside the indexed folder: not indexed (and never served)",
                        }
                    )
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
    def current(self) -> Path:
        """The folder holding the latest complete index (the folder itself unless a write was interrupted)."""
        return readable_folder(self.folder)

    @property
    def exists(self) -> bool:
        return (self.current / "index.json").is_file()

    @property
    def rebuild(self) -> str:
        return f"delete {self.folder} and run `mugstan index` again (the videos are not touched)"

    def recover_legacy(self) -> None:
        """Indexes of earlier versions were written as ``.NAME.tmp`` files renamed into place one by
        one, ``index.json`` last. After a crash between those renames the remaining ``.tmp`` files
        complete the new index when ``.index.json.tmp`` (written last of all) is whole; otherwise
        the crash came while they were written, and they are discarded."""
        tmps = {name: self.folder / f".{name}.tmp" for name in FILES if (self.folder / f".{name}.tmp").is_file()}
        complete = False
        if "index.json" in tmps:
            try:
                complete = isinstance(json.loads(tmps["index.json"].read_text()), dict)
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        for name, tmp in tmps.items():
            if complete:
                os.replace(tmp, self.folder / name)
            else:
                tmp.unlink()

    def check_writable(self) -> None:
        """``--out`` must be a new folder, an empty one, or an index: the folder is replaced whole on
        every update, so nothing else may live in it."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"--out {self.folder} is a file; the index is a folder: name a new folder")
        if self.folder.is_dir():
            ours = {*FILES, *(f".{name}.tmp" for name in FILES)}  # .NAME.tmp: an interrupted write of earlier versions
            others = sorted(p.name for p in self.folder.iterdir() if p.name not in ours)
            if others:
                raise UserError(
                    f"--out {self.folder} holds other files "
                    f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), "
                    "not only a mugstan index; the index folder is replaced whole on every update: "
                    "name a new or empty folder"
                )

    def _json(self, name: str):
        file = self.current / name
        if not file.is_file():  # stat only: a FIFO is never opened
            raise CorruptFileError(f"{file}: missing or not a regular file; {self.rebuild}")
        try:
            return json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(
                f"{file}: corrupt (not JSON: {err.__class__.__name__} at byte "
                f"{getattr(err, 'pos', getattr(err, 'start', '?'))}); {self.rebuild}"
            ) from None

    def _npy(self, name: str, dtype) -> np.ndarray:
        file = self.current / name
        if not file.is_file():  # stat only: a FIFO is never opened
            raise CorruptFileError(f"{file}: missing or not a regular file; {self.rebuild}")
        try:
            array = np.load(file, allow_pickle=False)  # numbers only: a file that needs unpickling is not ours
        except (ValueError, OSError, EOFError) as err:
            raise CorruptFileError(
                f"{file}: corrupt or truncated .npy file ({type(err).__name__}); {self.rebuild}"
            ) from None
        if array.dtype != dtype:
            raise CorruptFileError(
                f"{file}: expected {np.dtype(dtype).name} values, found {array.dtype}; {self.rebuild}"
            )
        return array

    def load(self) -> tuple[dict, list[dict], np.ndarray, Optional[np.ndarray]]:
        """(index.json dict, items, embeddings [N, E] or [N, T, E], mask [N, T] or None)."""
        if not self.exists:
            raise MissingFileError(
                f"{self.folder} is not a mugstan index (no index.json); build one with "
                f"`mugstan index VIDEO_DIR --checkpoint CHECKPOINT --out {self.folder}`"
            )
        meta = self._json("index.json")
        if not isinstance(meta, dict) or "format" not in meta:
            raise CorruptFileError(f"{self.current / 'index.json'}: not a mugstan index.json; {self.rebuild}")
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{self.folder}/index.json: index format {meta.get('format')!r}, this mugstan reads format {FORMAT}; "
                "rebuild the index with this version (`mugstan index` into a new folder)"
            )
        missing = [
            k for k in ("root", "model", "similarity", "shape", "window", "stride", "frames", "files") if k not in meta
        ]
        if missing:
            raise CorruptFileError(f"{self.current / 'index.json'}: corrupt (no {', '.join(missing)}); {self.rebuild}")
        items = self._json("items.json")
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and {"path", "start", "end"} <= set(i) for i in items
        ):
            raise CorruptFileError(
                f"{self.current / 'items.json'}: corrupt (expected a list of {{path, start, end}}); {self.rebuild}"
            )
        emb = self._npy("embeddings.npy", np.float32)
        mask = self._npy("mask.npy", np.bool_) if meta["similarity"] == "mug" else None
        if (
            len(items) != len(emb)
            or list(emb.shape) != meta["shape"]
            or (mask is not None and mask.shape != emb.shape[:2])
        ):
            raise CorruptFileError(
                f"{self.folder}: items.json ({len(items)} rows), embeddings.npy {list(emb.shape)} and index.json "
                f"(shape {meta['shape']}) do not agree; {self.rebuild}"
            )
        return meta, items, emb, mask

    def save(
        self, meta: dict, items: list[dict], emb: np.ndarray, mask: Optional[np.ndarray], report: list[dict]
    ) -> None:
        """Write every file into a new folder and swap it in (``atomic_folder``): all of the new index or none."""
        with atomic_folder(self.folder) as tmp:
            np.save(tmp / "embeddings.npy", emb.astype(np.float32, copy=False))
            if mask is not None:
                np.save(tmp / "mask.npy", mask.astype(bool, copy=False))
            (tmp / "items.json").write_text(json.dumps(items))
            (tmp / "report.json").write_text(json.dumps(report, indent=2))
            (tmp / "index.json").write_text(json.dumps(meta, indent=2))


class WindowEmbedder:
    """Decodes windows of videos and embeds them in batches of ``batch_size`` windows, across files.

    ``add(key, path, start, end)`` queues one window (decoding it at once: ``VideoError`` on a bad
    file); ``results[key]`` collects ``(x [E] or [T, E], mask [T] or None)`` per window in order.
    """

    def __init__(self, model, cfg, frames: int, batch_size: int, device):
        self.model, self.batch_size, self.device = model, batch_size, device
        data = (
            cfg.data if cfg else DataConfig(image_size=model.backbone.image_size)
        )  # a converted file has no data section
        self.reader = ClipReader(
            dataclasses.replace(data, test_clips=1, test_crops=1), train=False, num_frames=frames
        )  # as in evaluation
        self.pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.results: dict[str, list] = {}

    def add(self, key: str, path: Path, start: float, end: float) -> None:
        self.pending.append(
            (key, *self.reader.read(Clip(str(path), start, end), 0))
        )  # [T, 3, S, S], mask [T] (data.sampler=fps pads)
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


def build_index(
    video_dir,
    checkpoint,
    out,
    window: float = 8.0,
    stride: float = 4.0,
    frames: Optional[int] = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Create or update the index in ``out``; returns {"added", "kept", "removed", "failed", "rows"}
    (videos embedded now, videos kept from the previous index, videos that left it, files not
    indexed (listed in report.json), windows in the index)."""
    from mugstan.engine.checkpoint import load_model

    root = _index_root(video_dir, window, stride, batch_size, frames)
    identity = model_identity(checkpoint)
    folder = IndexFolder(out)
    old_meta, old_items, old_emb, old_mask = _previous_index(folder, out, checkpoint, identity, root)
    model, cfg = load_model(checkpoint, device)
    frames = _window_frames(model, cfg, frames)
    settings = {"window": window, "stride": stride, "frames": frames}
    reuse = bool(old_meta) and all(old_meta[k] == v for k, v in settings.items())
    old_files = old_meta.get("files", {}) if reuse else {}

    files, report = find_videos(root)
    old_notes = [r for r in folder._json("report.json") if isinstance(r, dict) and r.get("indexed")] if reuse else []
    embedder = WindowEmbedder(model, cfg, frames, batch_size, device)
    plan, notes = _plan_videos(files, root, window, stride, old_files, old_items, old_notes, embedder, report, progress)
    embedder.flush()

    counts = {"added": 0, "kept": 0, "failed": len(report), "noted": len(notes)}
    items, rows, masks, file_meta = _index_rows(plan, embedder, old_emb, old_mask, counts)
    counts["removed"] = len(set(old_meta.get("files", {})) - set(file_meta))
    if not rows:  # nothing to write: say what failed here (there is no report.json to point at)
        if not report:
            raise UserError(f"no video files under {root} (looked for {' '.join(VIDEO_EXTENSIONS)})")
        listed = "; ".join(f"{r['path']}: {r['reason']}" for r in report[:3])
        raise UserError(
            f"no video under {root} could be indexed: {listed}"
            + (f"; and {len(report) - 3} more" if len(report) > 3 else "")
        )
    emb = np.concatenate(rows)
    mask = np.concatenate(masks) if masks else None
    meta = {
        "format": FORMAT,
        "root": str(root),
        "model": identity,
        "similarity": "dot" if mask is None else "mug",
        "shape": list(emb.shape),
        **settings,
        "files": file_meta,
    }
    folder.save(meta, items, emb, mask, report + notes)
    counts["rows"] = len(items)
    return counts


def _index_root(video_dir, window: float, stride: float, batch_size: int, frames: Optional[int]) -> Path:
    """The folder to index (resolved), after checking it and the numeric arguments (``ArgumentError``)."""
    root = Path(video_dir).resolve()
    if not root.is_dir():
        raise UserError(f"{video_dir} is not a folder (VIDEO_DIR must be the folder of videos to index)")
    windows(window, window, stride)  # validates window and stride
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1, got {batch_size}")
    if frames is not None and frames < 1:
        raise ArgumentError(f"--frames must be at least 1, got {frames}")
    return root


def _previous_index(
    folder: IndexFolder, out, checkpoint, identity: dict, root: Path
) -> tuple[dict, list[dict], Optional[np.ndarray], Optional[np.ndarray]]:
    """The index already in ``folder`` (an interrupted update finished first) as (meta, items,
    embeddings [N, E] or [N, T, E], mask [N, T] or None), or ({}, [], None, None) when there is none.
    ``MismatchError`` when it was built with another model or of another video folder."""
    folder.check_writable()
    recover_folder(folder.folder)  # an update interrupted between its renames: finish it first
    if folder.folder.is_dir():
        folder.recover_legacy()
    old_meta, old_items, old_emb, old_mask = folder.load() if folder.exists else ({}, [], None, None)
    if old_meta:
        if old_meta["model"]["sha256"] != identity["sha256"]:
            raise MismatchError(
                f"{out} was built with another model ({old_meta['model']['checkpoint']}, sha256 "
                f"{old_meta['model']['sha256'][:12]}), not {checkpoint} ({identity['sha256'][:12]}); "
                "index into a new folder, or delete this one"
            )
        if old_meta["root"] != str(root):
            raise MismatchError(f"{out} indexes {old_meta['root']}, not {root}; index into a new folder")
    return old_meta, old_items, old_emb, old_mask


def _window_frames(model, cfg, frames: Optional[int]) -> int:
    """Frames per window: ``frames``, or the checkpoint's test (else training) frame count, 12 for a file
    without a config; ``ArgumentError`` past the model's temporal embedding or ``MAX_FRAMES``."""
    if frames is None:
        frames = (cfg.data.test_num_frames or cfg.data.num_frames) if cfg else 12
    limit = frame_limit(model)
    if frames > (limit or MAX_FRAMES):
        raise ArgumentError(
            f"--frames {frames}: "
            + (
                f"this model's temporal embedding covers at most {limit} frames per clip"
                if limit
                else f"at most {MAX_FRAMES} frames per window"
            )
            + f"; use --frames {limit or MAX_FRAMES} or fewer"
        )
    return frames


def _plan_videos(
    files: list[Path],
    root: Path,
    window: float,
    stride: float,
    old_files: dict,
    old_items: list[dict],
    old_notes: list[dict],
    embedder: WindowEmbedder,
    report: list[dict],
    progress: bool,
) -> tuple[list[tuple[str, os.stat_result, list[tuple[float, float]], Optional[list[int]]]], list[dict]]:
    """Each video of ``files``: one unchanged since the previous index (``old_files``: same size and
    modification time) keeps its rows and notes; another is cut into windows, each queued on
    ``embedder``; one that cannot be read is dropped from it and appended to ``report`` with the
    reason. Returns (plan, notes): plan [(path relative to ``root``, stat, [(start, end)] seconds,
    the previous index's rows or None: embedded now)] in ``files``' order, and the notes of videos
    indexed with a remark (windows bounded)."""
    notes: list[dict] = []
    plan = []
    for path in tqdm(files, desc="indexing videos", unit="video", disable=not progress):
        rel = path.relative_to(root).as_posix()
        try:
            stat = path.stat()
            prev = old_files.get(rel)
            if prev and prev["size"] == stat.st_size and prev["mtime_ns"] == stat.st_mtime_ns:
                notes.extend(n for n in old_notes if n["path"] == rel)
                plan.append(
                    (rel, stat, [(old_items[i]["start"], old_items[i]["end"]) for i in prev["rows"]], prev["rows"])
                )
                continue
            spans, note = video_windows(probe(path, count=True), window, stride)
            if note:
                notes.append({"path": rel, "reason": note, "indexed": True})
            for start, end in spans:
                embedder.add(rel, path, start, end)
        except (VideoError, av.error.FFmpegError, OSError) as err:  # a bad file: reported, the others go on
            embedder.drop(rel)
            notes = [n for n in notes if n["path"] != rel]
            report.append(
                {"path": rel, "reason": err.reason if isinstance(err, VideoError) else f"cannot be read ({err})"}
            )
            continue
        plan.append((rel, stat, spans, None))
    return plan, notes


def _index_rows(
    plan: list, embedder: WindowEmbedder, old_emb: Optional[np.ndarray], old_mask: Optional[np.ndarray], counts: dict
) -> tuple[list[dict], list[np.ndarray], list[np.ndarray], dict]:
    """The rows of the new index, in ``plan``'s order: the previous index's rows of a kept video
    (``old_emb`` [N, E] or [N, T, E], ``old_mask`` [N, T] or None), the embedder's of a new one,
    counted under ``counts["kept"]`` and ``counts["added"]``. Returns (items [{"path", "start",
    "end"}], per-video embeddings [W, ...], per-video masks [W, T] (none for dual encoders),
    {path: {"size", "mtime_ns", "rows"}})."""
    items, rows, masks, file_meta = [], [], [], {}
    for rel, stat, spans, old_rows in plan:
        if old_rows is not None:
            x, m = old_emb[old_rows], None if old_mask is None else old_mask[old_rows]
            counts["kept"] += 1
        else:
            x = np.stack([e for e, _ in embedder.results[rel]])
            m = None if embedder.results[rel][0][1] is None else np.stack([mk for _, mk in embedder.results[rel]])
            counts["added"] += 1
        file_meta[rel] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "rows": list(range(len(items), len(items) + len(spans))),
        }
        items.extend({"path": rel, "start": s, "end": e} for s, e in spans)
        rows.append(x)
        if m is not None:
            masks.append(m)
    return items, rows, masks, file_meta


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", help="folder of videos (searched recursively)")
    parser.add_argument(
        "--checkpoint", required=True, help="trained model: checkpoint folder or converted .safetensors"
    )
    parser.add_argument("--out", required=True, help="index folder (created, or updated in place)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window for long videos (default 8)")
    parser.add_argument(
        "--stride", type=float, default=4.0, help="seconds between window starts, at most --window (default 4)"
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per window (default: the model's config, 12 without one)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument(
        "--device",
        type=device_arg,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda when available)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    counts = build_index(
        args.video_dir,
        args.checkpoint,
        args.out,
        args.window,
        args.stride,
        args.frames,
        args.batch_size,
        args.device,
        progress=not args.no_progress,
    )
    print(
        f"index {args.out}: {counts['rows']} windows; {counts['added']} videos embedded, {counts['kept']} unchanged, "
        f"{counts['removed']} removed, {counts['failed']} not indexed"
        + (f", {counts['noted']} with a note" if counts["noted"] else "")
        + (f" (see {Path(args.out) / 'report.json'})" if counts["failed"] or counts["noted"] else "")
    )
    return 0
