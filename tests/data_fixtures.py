"""Small videos written with PyAV for the data tests, and the config of a tiny training run."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml


def write_video(path, frames: int = 16, size=(48, 32), fps: int = 8, gop: int = 4, seed: int = 0) -> Path:
    """A video whose frame i is filled with a value that encodes i (for checking sampling): H.264,
    or VP9 for .webm (Something-Something-V2), MPEG-4 Part 2 for .avi (UCF-101, HMDB-51: XviD/DivX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        codec, options = {".webm": ("libvpx-vp9", {}), ".avi": ("mpeg4", {"qscale": "2", "threads": "1"})}.get(
            path.suffix, ("libx264", {"crf": "10", "threads": "1"}))
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"g": str(gop), **options}
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (i * 9) % 256, dtype=np.uint8)
            img[: size[1] // 4] = rng.integers(0, 255, (size[1] // 4, size[0], 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def write_dataset_fixtures(root: Path) -> dict:
    """Tiny files of each format the shipped configs use; returns {dataset: {config key: value}}."""
    import json
    import pickle

    root = Path(root)
    vids = ["video0", "video1", "video2", "video3"]
    for i, v in enumerate(vids):
        write_video(root / f"{v}.mp4", frames=10, seed=i)
    for i in range(4):
        write_video(root / f"{100 + i}.webm", frames=8, seed=i)
    (root / "data.json").write_text(
        json.dumps(
            {
                "videos": [{"video_id": v} for v in vids],
                "sentences": [
                    {"video_id": v, "caption": f"a clip {v} {j}", "sen_id": j} for v in vids for j in range(2)
                ],
            }
        )
    )
    (root / "train.csv").write_text("video_id\n" + "\n".join(vids) + "\n")
    (root / "test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"r{i},m{i},{v},a clip of {v}\n" for i, v in enumerate(vids))
    )
    (root / "didemo.json").write_text(
        json.dumps([{"video": f"{v}.mp4", "description": f"{v} begins.", "times": [[0, 1]]} for v in vids])
    )
    (root / "lsmdc.csv").write_text("".join(f"{v}\t0\t1\t0\t1\tSomeone in {v}.\n" for v in vids))
    (root / "list.txt").write_text("\n".join(vids) + "\n")
    (root / "captions.pkl").write_bytes(pickle.dumps({v: [["a", "clip", v], ["another", v]] for v in vids}))
    (root / "k400.txt").write_text("".join(f"{v}.mp4 {i % 2}\n" for i, v in enumerate(vids)))
    (root / "classes.txt").write_text("abseiling\nbowling\n")
    (root / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something": "1"}))
    (root / "ssv2.json").write_text(
        json.dumps(
            [
                {
                    "id": str(100 + i),
                    "template": ["Holding [something]", "Pushing [something]"][i % 2],
                    "label": "x",
                    "placeholders": [],
                }
                for i in range(4)
            ]
        )
    )
    (root / "webvid.json").write_text(json.dumps({f"{v}.mp4": f"stock footage of {v}" for v in vids}))
    (root / "vatex.json").write_text(json.dumps({v: {"enCap": [f"{v} caption {j}" for j in range(3)]} for v in vids}))
    (root / "activitynet.json").write_text(
        json.dumps({f"v_{v}": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": [f"{v} happens."]} for v in vids})
    )
    ucf, ucf_classes = root / "UCF-101", ["ApplyEyeMakeup", "Archery"]
    for i, name in enumerate(ucf_classes):
        write_video(ucf / name / f"v_{name}_g01_c01.avi", frames=8, seed=i)
        write_video(ucf / name / f"v_{name}_g08_c01.avi", frames=8, seed=i + 2)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {n}\r\n" for i, n in enumerate(ucf_classes, 1)))
    (lists / "trainlist01.txt").write_text(
        "".join(f"{n}/v_{n}_g08_c01.avi {i}\r\n" for i, n in enumerate(ucf_classes, 1))
    )
    (lists / "testlist01.txt").write_text("".join(f"{n}/v_{n}_g01_c01.avi\r\n" for n in ucf_classes))
    hmdb, splits_dir = root / "hmdb51", root / "testTrainMulti_7030_splits"
    splits_dir.mkdir(exist_ok=True)
    for i, name in enumerate(["brush_hair", "cartwheel"]):
        for j in range(2):
            write_video(hmdb / name / f"{name}_{j}.avi", frames=8, seed=i * 2 + j)
        (splits_dir / f"{name}_test_split1.txt").write_text(f"{name}_0.avi 1 \n{name}_1.avi 2 \n")
    (root / "images").mkdir(exist_ok=True)
    (root / "cc3m.tsv").write_text("".join(f"a still of {v}\t{v}.mp4\n" for v in vids))
    def splits(ann):
        return {"train_ann": str(root / ann), "val_ann": str(root / ann), "test_ann": str(root / ann)}
    ava = write_ava_fixtures(root, vids)
    return {
        "ava": {
            "train_ann": ava["train"],
            "val_ann": ava["val"],
            "test_ann": ava["val"],
            "extra": {
                k: ava[k]
                for k in (
                    "label_map",
                    "train_exclusions",
                    "val_exclusions",
                    "test_exclusions",
                    "val_proposals",
                    "test_proposals",
                )
            },
        },
        "msrvtt": {
            "train_ann": str(root / "train.csv"),
            "val_ann": str(root / "test.csv"),
            "test_ann": str(root / "test.csv"),
            "extra": {"data_json": str(root / "data.json")},
        },
        "didemo": splits("didemo.json"),
        "lsmdc": splits("lsmdc.csv"),
        "msvd": {**splits("list.txt"), "extra": {"captions": str(root / "captions.pkl")}},
        "video_list": {**splits("k400.txt"), "extra": {"class_names": str(root / "classes.txt")}},
        "ssv2": {**splits("ssv2.json"), "extra": {"labels": str(root / "labels.json")}},
        "webvid": {"train_ann": str(root / "webvid.json")},
        "vatex": {**splits("list.txt"), "extra": {"data_json": str(root / "vatex.json")}},
        "activitynet": splits("activitynet.json"),
        "ucf101": {
            "videos": "UCF-101",
            "train_ann": str(lists / "trainlist01.txt"),
            "test_ann": str(lists / "testlist01.txt"),
            "extra": {"class_names": str(lists / "classInd.txt")},
        },
        "hmdb51": {"videos": "hmdb51", **splits("testTrainMulti_7030_splits/brush_hair_test_split1.txt")},
        "cc3m": {"root": str(root), "videos": "", "train_ann": str(root / "cc3m.tsv"), "extra": {}},
    }


def write_config(path: Path, data: Path, out: Path, **train) -> Path:
    """A tiny STAN run (mugstan-tiny, 4 frames of 32 px, fp32, deterministic) on a synthetic
    dataset folder; ``train`` overrides keys of the ``train`` section."""
    cfg = {
        "name": "tiny",
        "model": {
            "backbone": "mugstan-tiny",
            "branch": "stan",
            "head": "mean",
            "context_length": 16,
            "stan": {"depth": 2, "drop_path": 0.0},
        },
        "data": {
            "dataset": "jsonl",
            "root": str(data),
            "train_ann": str(data / "train.jsonl"),
            "num_frames": 4,
            "image_size": 32,
            "num_workers": 0,
        },
        "train": {
            "output_dir": str(out),
            "epochs": 1,
            "batch_size": 4,
            "lr": 1e-4,
            "warmup": 2,
            "log_every": 1,
            "precision": "fp32",
            "deterministic": True,
            **train,
        },
        "eval": {"batch_size": 32},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# The AVA v2.2 files in their official layouts (a few rows each): the label map as released
# (``label { name label_id label_type }``), annotation CSVs without header (box corners 0-1, one row
# per action, person ids), excluded timestamps, and person proposals as CSV (the official pickles
# are never read).
AVA_LABEL_MAP = """label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crawl"
  label_id: 3
  label_type: PERSON_MOVEMENT
}
label {
  name: "dance"
  label_id: 8
  label_type: PERSON_MOVEMENT
}
"""


def write_ava_fixtures(root: Path, videos=("video0", "video1")) -> dict:
    """AVA-format files over existing videos ``<root>/<video>.mp4`` (timestamps 900-901, i.e. seconds
    0-1 of the file with data.ava.timestamp_start 900); returns {name: path}."""
    root = Path(root)
    a, b = videos[0], videos[1]
    files = {
        "label_map": AVA_LABEL_MAP,
        # action 2 is not in the label map (ignored); person 1 of a,0901 does two actions
        "train": f"{a},0900,0.100,0.200,0.400,0.900,1,0\n{a},0900,0.500,0.100,0.900,0.800,8,1\n"
        f"{a},0901,0.100,0.200,0.450,0.900,2,0\n"
        f"{a},0901,0.500,0.100,0.900,0.800,3,1\n{a},0901,0.500,0.100,0.900,0.800,8,1\n{b},0900,0.200,0.200,0.600,0.700,3,0\n"
        f"{b},0901,0.200,0.200,0.600,0.700,1,0\n",
        "val": f"{a},0900,0.100,0.200,0.400,0.900,1,0\n{a},0901,0.500,0.100,0.900,0.800,8,1\n"
        f"{b},0900,0.200,0.200,0.600,0.700,3,0\n"
        f"{b},0901,0.200,0.200,0.600,0.700,1,0\n",
        "train_exclusions": f"{b},0901\n",
        "val_exclusions": f"{b},0901\n",
        "test_exclusions": f"{b},0901\n",
        "val_proposals": f"{a},0900,0.110,0.210,0.410,0.880,0.98\n{a},0900,0.000,0.000,0.200,0.200,0.40\n"
        f"{a},0901,0.500,0.100,0.900,0.800,0.95\n"
        f"{b},0900,0.200,0.200,0.600,0.700,0.99\n",
    }
    files["test_proposals"] = files["val_proposals"]
    out = {}
    for name, text in files.items():
        suffix = ".pbtxt" if name == "label_map" else ".csv"
        path = root / f"ava_{name}{suffix}"
        path.write_text(text)
        out[name] = str(path)
    return out


def hf_cache_snapshot(cache: Path, repo_id: str, commit: str = "0" * 40) -> Path:
    """An empty snapshot folder of ``repo_id`` in a Hugging Face hub cache (``HF_HUB_CACHE``), its
    ``refs/main`` pointing at it: files written there are what an offline download finds."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def write_shards(data: Path, out: Path, per_shard: int, ann: str = "train.jsonl", label: bool = False) -> list[Path]:
    """Tar shards in video2dataset's layout, written with Python's tarfile (not by mugstan): per
    sample KEY.mp4, KEY.txt (the first caption), KEY.json (metadata, with "label" when ``label``),
    from a dataset folder's JSONL annotations; ``per_shard`` samples per shard."""
    import io
    import json
    import tarfile

    def add(tar, name, payload: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    rows = [json.loads(line) for line in (Path(data) / ann).read_text().splitlines() if line.strip()]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(rows), per_shard):
        shards.append(out / f"{s // per_shard:05d}.tar")
        with tarfile.open(shards[-1], "w") as tar:
            for i, row in enumerate(rows[s : s + per_shard], s):
                key = f"{i:09d}"
                caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
                meta = {
                    "url": row["video"],
                    "key": key,
                    "status": "success",
                    **({"label": row["label"]} if label else {}),
                }
                add(tar, f"{key}.mp4", (Path(data) / row["video"]).read_bytes())
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps(meta).encode())
    return shards


def kill_training_at(config, state, step: int, env: dict, timeout: float) -> dict:
    """Start ``mugstan train CONFIG`` in a process, SIGKILL it once its training state ``state``
    (``.../checkpoints/last/state.pt``) has reached ``step``, and return that state."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    proc = subprocess.Popen([sys.executable, "-m", "mugstan.cli", "train", str(config), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.exists():
            try:
                if torch.load(state, weights_only=False)["step"] >= step:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return torch.load(state, weights_only=False)


def write_two_clips(root: Path) -> Path:
    """Two real videos (a.mp4, b.mp4) and their captions in ``root/train.jsonl``: the smallest training set."""
    import json

    for i, name in enumerate(["a.mp4", "b.mp4"]):
        write_video(root / name, frames=12, size=(32, 32), seed=i)
    lines = [json.dumps({"video": v, "caption": f"clip {v}"}) + "\n" for v in ["a.mp4", "b.mp4"]]
    (root / "train.jsonl").write_text("".join(lines))
    return root
