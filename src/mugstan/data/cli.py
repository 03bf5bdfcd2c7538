"""``mugstan data``: check a dataset's videos, re-encode a folder, generate the synthetic benchmark.

    mugstan data check CONFIG [key=value ...] [--split train val test]   # every split the config names (file or name)
    mugstan data check ANNOTATIONS --format jsonl --root VIDEOS    # one annotation file
    mugstan data compress SRC DST --fps 3 --short-side 224 --workers 4   # all-intra, fast-decode
    mugstan data shard SOURCE OUT_DIR [--shard-size N --compress ...]   # WebDataset tar shards + manifest.json
    mugstan data synth OUT_DIR [--videos N --frames T --size S --seed K]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import av
from tqdm import tqdm

from mugstan.data.compress import GOP_DEFAULT, compress_video
from mugstan.data.video import VideoError, probe
from mugstan.errors import ArgumentError, UserError
from mugstan.files import regular_file

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from mugstan.data.datasets import FORMATS

    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser("check", help="list missing and corrupt videos of a dataset",
                           description="Open every video of a dataset's splits and report the missing and corrupt ones "
                                       "(exit status 1 when there are any). By default the first and last frames are "
                                       "decoded; --full decodes every frame and finds truncated and damaged streams.")
    check.add_argument(
        "source", help="experiment YAML or packaged config name (its data section), or an annotation file"
    )
    check.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides of the config, e.g. data.root=/data/msrvtt"
    )
    check.add_argument(
        "--format",
        default="jsonl",
        choices=sorted(FORMATS),
        metavar="FORMAT",
        help="annotation format when SOURCE is an annotation file: a data.dataset name (default: jsonl)",
    )
    check.add_argument(
        "--root", default="", help="video folder when SOURCE is an annotation file (default: paths as written)"
    )
    check.add_argument(
        "--split",
        nargs="+",
        default=None,
        choices=["train", "val", "test"],
        help="splits to check (default: every split the config names)",
    )
    check.add_argument(
        "--full", action="store_true", help="decode every frame of every video (slower; finds truncated files)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    comp = sub.add_parser(
        "compress",
        help="re-encode a folder of videos to a low frame rate and short side (resumable)",
        description="Re-encode every video under SRC as H.264 .mp4 under DST (same relative paths). "
        "Finished files are skipped: run again to resume.",
    )
    comp.add_argument("src", help="folder of videos (searched recursively)")
    comp.add_argument("dst", help="output folder (created; existing outputs are kept)")
    comp.add_argument("--fps", type=float, default=3.0, help="output frame rate (default 3)")
    comp.add_argument(
        "--short-side",
        type=int,
        default=224,
        help="output short side in pixels; smaller videos keep their size (default 224)",
    )
    comp.add_argument(
        "--gop",
        type=int,
        default=GOP_DEFAULT,
        help="a keyframe every GOP frames; 1 = all-intra, every frame decodable alone, the fastest to sample "
        f"(default {GOP_DEFAULT})",
    )
    comp.add_argument(
        "--fast-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="x264 --tune fastdecode: no CABAC, no deblocking; ~10%% larger files, ~15%% faster loading (default: on)",
    )
    comp.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: the CPU count)"
    )
    comp.add_argument("--crf", type=int, default=23, help="x264 quality, 0-51 (lower is better; default 23)")

    shard = sub.add_parser(
        "shard",
        help="write WebDataset tar shards from a folder of videos or a dataset split (resumable)",
        description="Write SOURCE (a folder of videos, or an experiment config's split) as tar shards in "
        "video2dataset's layout (KEY.mp4, KEY.txt caption, KEY.json metadata, KEY.cls label) "
        "under OUT_DIR, with OUT_DIR/manifest.json listing the samples per shard. Shards "
        "appear whole (written under a temporary name, then renamed); run again to resume.",
    )
    shard.add_argument(
        "source",
        help="folder of videos (searched recursively; VIDEO.txt next to a video is its caption) or experiment YAML",
    )
    shard.add_argument("out_dir", help="output folder (created)")
    shard.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides of the config, e.g. data.root=/data/msrvtt"
    )
    shard.add_argument(
        "--split", default="train", choices=["train", "val", "test"], help="the config's split to write (default train)"
    )
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    shard.add_argument(
        "--compress",
        action="store_true",
        help="re-encode each video as `data compress` does (--fps, --short-side, --gop, --crf)",
    )
    shard.add_argument("--fps", type=float, default=3.0, help="with --compress: output frame rate (default 3)")
    shard.add_argument("--short-side", type=int, default=224, help="with --compress: output short side (default 224)")
    shard.add_argument(
        "--gop",
        type=int,
        default=GOP_DEFAULT,
        help=f"with --compress: keyframe interval (default {GOP_DEFAULT}, all-intra)",
    )
    shard.add_argument("--crf", type=int, default=23, help="with --compress: x264 quality (default 23)")
    shard.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes reading and encoding (default: the CPU count)",
    )

    from mugstan.data import synthetic

    synthetic.configure_parser(
        sub.add_parser(
            "synth",
            help="render the built-in synthetic temporal benchmark",
            description="Render the synthetic benchmark (shapes in time-reversed motion pairs, H.264 files, JSONL "
            "annotations for train/val/test) into OUT_DIR; seeded, so the same arguments give the same data.",
        )
    )


# ---- check ------------------------------------------------------------------------------------
def _check_one(path: str, full: bool = False) -> str | None:
    """None when the video is usable, else the reason. Quick: open it and decode its first and
    last frames; full: decode every frame (finds truncated and damaged streams)."""
    from mugstan.data.video import decode_frames, verify_frames

    try:
        if full:
            verify_frames(path)
        else:
            info = probe(path)
            decode_frames(path, [0, info.num_frames - 1], short_side=32, info=info)
    except VideoError as err:
        return err.reason
    return None


def check(data_cfg, splits: list[str], full: bool = False) -> dict:
    """{split: {"videos": n, "problems": [{"path", "reason"}]}} for the given splits."""
    from mugstan.data.datasets import load_annotations

    report = {}
    for split in splits:
        ann = load_annotations(data_cfg, split)
        paths = sorted({c.path for c in ann.clips})
        problems = []
        for path in tqdm(paths, desc=f"checking {split}", unit="video"):
            reason = _check_one(path, full)
            if reason:
                problems.append({"path": path, "reason": reason})
        report[split] = {"videos": len(paths), "problems": problems}
    return report


def _run_check(args: argparse.Namespace) -> int:
    from mugstan.config import DataConfig, find_config

    source = Path(args.source).expanduser()
    if not source.exists() and not source.is_absolute() and source.suffix in ("", ".yaml", ".yml"):
        source = find_config(source)  # a packaged config by name (msrvtt/stan_vitb32)
    source = regular_file(source, "data check")
    if source.suffix in (".yaml", ".yml"):
        from mugstan.config import load_config

        data_cfg = load_config(source, args.overrides).data
        splits = args.split or [s for s in ("train", "val", "test") if getattr(data_cfg, f"{s}_ann")]
    else:
        if args.overrides:
            raise ArgumentError(
                f"key=value overrides ({' '.join(args.overrides)}) apply to a config file; "
                "for an annotation file use --format and --root"
            )
        data_cfg = DataConfig(dataset=args.format, root=args.root, test_ann=str(source))
        splits = ["test"]
    report = check(data_cfg, splits, args.full)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for split, r in report.items():
            print(f"{split}: {r['videos']} videos, {len(r['problems'])} with problems")
            for p in r["problems"]:
                print(f"  {p['path']}: {p['reason']}")
    return 1 if any(r["problems"] for r in report.values()) else 0


# ---- compress -----------------------------------------------------------------------------
def _compress_job(job: tuple) -> tuple[str, str | None]:
    src, dst, *options = job
    try:
        compress_video(src, dst, *options)
        return src, None
    except (VideoError, av.error.FFmpegError) as err:
        return src, str(err)


def check_encoding_options(args: argparse.Namespace) -> None:
    """``data compress`` / ``data shard --compress``'s options: one ArgumentError naming the first bad one."""
    bad = [
        f"{flag} must be {rule}, got {value:g}"
        for flag, value, ok, rule in (
            ("--fps", args.fps, args.fps > 0, "a positive frame rate"),
            ("--short-side", args.short_side, args.short_side >= 2, "at least 2 pixels"),
            ("--gop", args.gop, args.gop >= 1, "at least 1 frame (1 = all-intra)"),
            ("--crf", args.crf, 0 <= args.crf <= 51, "in 0..51"),
            ("--workers", args.workers, args.workers >= 1, "at least 1"),
        )
        if not ok
    ]
    if bad:
        raise ArgumentError(bad[0])


def _run_compress(args: argparse.Namespace) -> int:
    from mugstan.data.datasets.formats import VIDEO_EXTENSIONS

    src, dst = Path(args.src), Path(args.dst)
    check_encoding_options(args)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder (SRC is the folder of videos to re-encode)")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst} is a file; DST must be a folder (it is created when missing)")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    jobs = []
    for p in files:
        out = (dst / p.relative_to(src)).with_suffix(".mp4")
        if not out.exists():  # finished files are skipped: rerun to resume
            jobs.append((str(p), str(out), args.fps, args.short_side, args.crf, args.gop, args.fast_decode))
    logger.info(
        f"{len(files)} videos in {src}; {len(files) - len(jobs)} already done; encoding {len(jobs)} with "
        f"{args.workers} workers"
    )
    failed = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(_compress_job, j) for j in jobs]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="compressing", unit="video"):
            path, error = fut.result()
            if error:
                failed.append((path, error))
    for _path, error in failed:
        print(f"failed: {error}")
    return 1 if failed else 0


def _run_shard(args: argparse.Namespace) -> int:
    from mugstan.data.shard_writer import source_samples, write_shards

    if args.shard_size < 1:
        raise ArgumentError(f"--shard-size must be at least 1, got {args.shard_size:g}")
    check_encoding_options(args)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; OUT_DIR must be a folder (it is created when missing)")
    samples = source_samples(args.source, args.overrides, args.split)
    compress = (args.fps, args.short_side, args.crf, args.gop, True) if args.compress else None
    manifest = write_shards(samples, out, args.shard_size, compress, args.workers)
    for failed in manifest["failed"]:
        print(f"failed: {failed['source']}: {failed['reason']}")
    print(
        f"{manifest['samples']} samples in {len(manifest['shards'])} shards under {out} (manifest: "
        f"{out / 'manifest.json'}); "
        f"data.shards: {out}/{{00000..{len(manifest['shards']) - 1:05d}}}.tar"
    )
    return 1 if manifest["failed"] else 0


def main(args: argparse.Namespace) -> int:
    if args.data_command == "shard":
        return _run_shard(args)
    if args.data_command == "check":
        return _run_check(args)
    if args.data_command == "compress":
        return _run_compress(args)
    from mugstan.data import synthetic

    return synthetic.main(args)
