"""The synthetic benchmark generator: counts, JSONL validity, reversed motion pairs, determinism."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from mugstan.data import synthetic
from mugstan.data.synthetic import CLASS_NAMES, MOTION_PAIRS, MOTIONS, SynthParams, generate

PARAMS = SynthParams(videos=12, frames=8, size=32, seed=3)
NUM_TEST = len(synthetic.COLORS) * len(MOTIONS)  # every colour with every motion


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, PARAMS, progress=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_counts_and_meta(dataset):
    out, meta = dataset
    assert meta["params"] == {"videos": 12, "frames": 8, "size": 32, "seed": 3}
    assert NUM_TEST == 60  # 6 colours x 5 pairs x 2 motions
    assert meta["counts"] == {"train": 12, "val": NUM_TEST, "test": NUM_TEST, "images_val": 24}
    assert (out / "classes.txt").read_text().splitlines() == [CLASS_NAMES[m] for m in MOTIONS]
    for split in ("train", "val", "test"):
        n = meta["counts"][split]
        assert len(read_jsonl(out / f"{split}.jsonl")) == n
        assert len(read_jsonl(out / f"recognition_{split}.jsonl")) == n
        assert len(list((out / "videos" / split).glob("*.mp4"))) == n


def test_jsonl_records_are_valid(dataset):
    out, meta = dataset
    for name in ["train", "val", "test", "images_train", "images_val", "recognition_train", "recognition_test"]:
        for record in read_jsonl(out / f"{name}.jsonl"):
            assert (out / record["video"]).is_file()
            if name.startswith("recognition"):
                assert set(record) == {"video", "label"} and 0 <= record["label"] < len(MOTIONS)
            elif name.startswith("images"):
                assert 0 <= record["start"] < record["end"] <= PARAMS.frames / synthetic.FPS
                words = record["caption"].split()
                assert any(w in synthetic.COLORS for w in words) and any(w in synthetic.SHAPES for w in words)
            else:
                captions = record["caption"] if name == "train" else [record["caption"]]
                assert all(isinstance(c, str) and c for c in captions)
                phrases = synthetic.MOTION_PHRASES[MOTIONS[record["label"]]]
                assert all(any(c.endswith(p) for p in phrases) for c in captions)
    video = decode(out / read_jsonl(out / "test.jsonl")[0]["video"])
    assert video.shape == (PARAMS.frames, PARAMS.size, PARAMS.size, 3)


def test_test_set_pairs_every_colour_with_both_motions(dataset):
    out, _ = dataset
    records = read_jsonl(out / "test.jsonl")
    captions = [r["caption"] for r in records]
    assert len(set(captions)) == len(captions)  # 1:1 retrieval is well posed
    def appearance(r):
        return [w for w in r["caption"].split() if w in synthetic.COLORS or w in synthetic.SHAPES]
    # Each (colour, pair) in one shape, both directions in consecutive videos.
    for first, second in zip(records[::2], records[1::2], strict=True):
        a, b = MOTIONS[first["label"]], MOTIONS[second["label"]]
        assert (a, b) in MOTION_PAIRS
        assert appearance(first) == appearance(second)
        if a == "rotate_cw":
            assert "circle" not in appearance(first)  # a circle's rotation is invisible
    # Colour and motion single out a video.
    keys = [(appearance(r)[0], r["label"]) for r in records]
    assert len(set(keys)) == NUM_TEST and Counter(r["label"] for r in records) == {i: 6 for i in range(len(MOTIONS))}
    # Some test captions use a template never seen in training.
    train_text = " ".join(c for r in read_jsonl(out / "train.jsonl") for c in r["caption"])
    assert any(c.startswith("in this clip") for c in captions) and "in this clip" not in train_text


def test_image_pretraining_set(dataset):
    out, _ = dataset
    train = read_jsonl(out / "images_train.jsonl")
    assert len(train) == 12 * synthetic.STILLS_PER_VIDEO and all(isinstance(r["caption"], str) for r in train)
    assert all(r["end"] - r["start"] == 1 / synthetic.FPS for r in train)  # one frame each
    val = read_jsonl(out / "images_val.jsonl")
    assert len(val) == 24 and all(r["video"].startswith("videos/images/") for r in val)
    apps = {" ".join(w for w in r["caption"].split() if w in synthetic.COLORS or w in synthetic.SHAPES) for r in val}
    assert apps == {f"{c} {s}" for c, s in synthetic.appearances()}  # one still per appearance
    verbs = {w for phrases in synthetic.MOTION_PHRASES.values() for p in phrases for w in p.split()}
    verbs -= {"in", "out", "to", "the", "left", "right", "up", "down"}  # "moves", "grows", "fades", "clockwise", ...
    assert not any(set(r["caption"].split()) & verbs for r in train + val)  # what a frame shows, never how it moves


def test_frame_descriptions():
    layout = {
        "x": np.array([5.0, 32.0, 60.0]),
        "y": np.array([5.0, 32.0, 60.0]),
        "radius": np.array([4.0, 10.0, 15.0]),
        "alpha": np.array([0.4, 1.0, 1.0]),
        "angle": np.zeros(3),
    }
    assert [synthetic.describe_frame("red", "circle", layout, t, 64) for t in range(3)] == [
        "small faint red circle at the top left",
        "red circle in the middle",
        "big red circle at the bottom right",
    ]
    # a rotating shape's dot: clockwise from straight up, the nearest of eight directions
    marked = {**layout, "mark": np.ones(3), "angle": np.deg2rad([0.0, 100.0, 300.0])}
    assert [synthetic.describe_frame("red", "square", marked, t, 64) for t in range(3)] == [
        "small faint red square at the top left, dot up",
        "red square in the middle, dot right",
        "big red square at the bottom right, dot up left",
    ]


def test_a_rotating_shape_turns_like_a_clock_hand():
    """The demo's frames (4 of 32 px, 8-px patches): a rotate_cw shape's pixels turn clockwise about
    a fixed pivot below them, through twelve o'clock, 47-57 degrees a frame, and travel more than a
    patch over the clip; it carries a
    dark dot drawn at the layout's angle (which ``describe_frame`` names), on its side away from
    the pivot; the other motions carry none."""
    params = SynthParams(frames=4, size=32)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    clockwise = lambda dx, dy: np.degrees(np.arctan2(dx, -dy))  # noqa: E731  from straight up, as describe_frame
    for i, shape in enumerate(["square", "triangle", "cross"] * 4):
        rng = np.random.default_rng(i)
        frames, layout = synthetic.render_clip("yellow", shape, ("rotate_cw", "rotate_ccw"), params, rng)
        body, _ = synthetic.shape_coverage(shape, layout, 32)  # the yellow shape's pixels, dot or not
        pixels = frames.astype(int)
        yellow = (np.abs(pixels - np.array(synthetic.COLORS["yellow"])).sum(-1) < 60).astype(float)  # [T, H, W]
        dark = ((pixels.sum(-1) < 120) & (body > 0.5)).astype(float)  # its dot (15, 15, 15)
        arm = synthetic.ROTATION_ARM * 32
        pivot_x = layout["x"][0] - arm * np.sin(layout["angle"][0])
        pivot_y = layout["y"][0] + arm * np.cos(layout["angle"][0])
        centroid = lambda m: ((m * xx).sum((1, 2)) / m.sum((1, 2)), (m * yy).sum((1, 2)) / m.sum((1, 2)))  # noqa: E731
        sx, sy = centroid(yellow + dark)
        seen = clockwise(sx - pivot_x, sy - pivot_y)
        turn = (np.diff(seen) + 180) % 360 - 180
        assert (turn > 40).all() and (turn < 65).all(), turn  # clockwise about the pivot, as drawn
        assert abs(seen[0] + turn.sum() / 2) < 20, seen  # through twelve o'clock: the middle of the arc is up
        assert np.hypot(sx[-1] - sx[0], sy[-1] - sy[0]) > 9  # more than a patch
        dx, dy = centroid(dark)
        off = (clockwise(dx - layout["x"], dy - layout["y"]) - np.degrees(layout["angle"]) + 180) % 360 - 180
        assert (np.abs(off) < 12).all(), off  # the dot where the layout (so the still's caption) says
    for pair in synthetic.MOTION_PAIRS[:4]:
        frames, layout = synthetic.render_clip("yellow", "square", pair, params, np.random.default_rng(0))
        assert not layout["mark"].any() and (frames.astype(int).sum(-1) >= 120).all()


def test_paired_motions_are_time_reversed_files(dataset):
    """Every test pair decodes to exactly the same frames in opposite order (intra-only, constant
    quantiser): an order-blind model scores the two alike, so its pair accuracy is exactly 50%."""
    out, _ = dataset
    records = read_jsonl(out / "test.jsonl")
    for first, second in zip(records[0::2], records[1::2], strict=True):
        assert MOTIONS[first["label"]] == MOTIONS[second["label"] ^ 1]
        forward, backward = decode(out / first["video"]), decode(out / second["video"])
        assert np.array_equal(forward, backward[::-1]), first["video"]
        assert np.abs(forward - backward).mean() > 1  # the motion shows: the frames change over time


def test_rendered_pair_is_exactly_reversed():
    params = SynthParams(frames=6, size=32)
    frames, layout = synthetic.render_clip(
        "red", "triangle", ("rotate_cw", "rotate_ccw"), params, np.random.default_rng(0)
    )
    assert np.all(np.diff(layout["angle"]) > 0)  # image y points down: a growing angle turns clockwise
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    # A triangle turning clockwise: the frames differ over time, yet the multiset of frames
    # (all an order-blind pooling sees) is the same for both motions of the pair.
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 2
    assert np.array_equal(np.sort(frames, axis=0), np.sort(frames[::-1], axis=0))


def test_same_seed_same_bytes_and_reuse(dataset, tmp_path):
    out, meta = dataset
    again = tmp_path / "again"
    assert generate(again, PARAMS, progress=False) == meta
    assert digest(again) == digest(out)
    # A folder with a matching meta.json is reused as is ...
    stamp = (again / "test.jsonl").stat().st_mtime_ns
    generate(again, PARAMS, progress=False)
    assert (again / "test.jsonl").stat().st_mtime_ns == stamp
    # ... a different dataset is refused unless asked to overwrite.
    other = SynthParams(videos=12, frames=8, size=32, seed=4)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(again, other, progress=False)
    generate(again, other, overwrite=True, progress=False)
    changed = digest(again)
    assert changed["classes.txt"] == digest(out)["classes.txt"]
    assert changed["videos/test/00000.mp4"] != digest(out)["videos/test/00000.mp4"]


def test_bad_parameters_are_explained():
    with pytest.raises(ValueError, match="--size must be even"):
        SynthParams(size=33)
    with pytest.raises(ValueError, match="--frames must be at least 2"):
        SynthParams(frames=1)
