"""WebDataset shards: the same clips as files, training from a hand-built video2dataset shard,
broken samples skipped and counted, missing shards as one error line."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import kill_training_at, write_config, write_shards, write_video
from safetensors.torch import load_file

from mugstan.config import DataConfig, load_config
from mugstan.data.datasets import Clip, ClipReader
from mugstan.data.datasets.shards import ShardError, read_shard, sample_parts
from mugstan.data.synthetic import SynthParams, generate
from mugstan.engine.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthParams(videos=24, frames=8, size=32, seed=0), progress=False)
    return root


def shard_config(path: Path, shards, out: Path, **data) -> Path:
    """The tiny run of data_fixtures.write_config, reading ``shards`` instead of a folder."""
    cfg = yaml.safe_load(write_config(path, Path("."), out).read_text())
    cfg["data"] = {"dataset": "webdataset", "shards": shards, "epoch_samples": 16, "shuffle_buffer": 4, "num_frames": 4,
                   "image_size": 32, "num_workers": 0, **data}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_video_gives_the_same_clip_from_a_folder_and_from_a_shard(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20, size=(64, 48), gop=5)
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        for name, payload in (("k1.mp4", video.read_bytes()), ("k1.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    [sample] = list(read_shard(str(tmp_path / "one.tar"), []))
    clip, caption, _ = sample_parts(sample, captions=True, labels=False)
    assert caption == "a caption" and clip.path.endswith("one.tar/k1.mp4") and clip.data == video.read_bytes()
    for sampler, train_mode in (("segment", True), ("segment", False), ("dense", True), ("fps", False)):
        cfg = DataConfig(num_frames=5, image_size=32, resize_short=40, sampler=sampler, dense_stride=2, sample_fps=4.0)
        file_reader, shard_reader = ClipReader(cfg, train_mode, seed=3), ClipReader(cfg, train_mode, seed=3)
        a, mask_a = file_reader.read(Clip(str(video)), index=7)
        b, mask_b = shard_reader.read(clip, index=7)
        assert torch.equal(a, b) and torch.equal(mask_a, mask_b), sampler
        assert a.shape == (5, 3, 32, 32)


def test_a_hand_built_video2dataset_shard_trains_with_broken_samples_skipped(tmp_path, data):
    shards = write_shards(data, tmp_path / "shards", per_shard=4)  # 24 samples, 6 shards, by tarfile
    # damage: a corrupt video, a sample without caption (shard 1), a tar cut in the middle of a video (shard 2)
    with tarfile.open(shards[1], "a") as tar:
        for name, payload in (("zz_corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100), ("zz_corrupt.txt", b"x"),
                              ("zz_nocaption.mp4", (data / "videos/train/00000.mp4").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    whole = shards[2].read_bytes()
    shards[2].write_bytes(whole[:len(whole) // 2 + 700])
    cfg = load_config(
        shard_config(
            tmp_path / "c.yaml",
            str(tmp_path / "shards" / "{00000..00005}.tar"),
            tmp_path / "run",
            epoch_samples=24,
            shuffle_buffer=50,
        ),
        ["train.max_steps=6"],
    )
    results = train(cfg, progress=False)
    assert results["steps"] == 6
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    errors = [e["error"] for e in events if e.get("event") == "skipped_video"]
    assert any("00001.tar/zz_corrupt.mp4" in e for e in errors), errors
    assert any("00001.tar/zz_nocaption" in e and "no caption" in e for e in errors), errors
    assert any("00002.tar/" in e and "truncated" in e for e in errors), errors
    # one reader: its 21 good samples run out before the epoch's 24, so it reads its shards again and meets
    # the damage again
    assert results["skipped_videos"] == len(errors) >= 3
    assert [e["train/skipped_videos"] for e in events if "train/skipped_videos" in e][-1] == len(errors)


def test_a_missing_shard_or_an_unreachable_url_is_one_error_line(tmp_path, data, capsys):
    from mugstan.cli import main

    write_shards(data, tmp_path / "shards", per_shard=12)
    missing = shard_config(tmp_path / "m.yaml", str(tmp_path / "shards" / "{00000..00002}.tar"), tmp_path / "run")
    assert main(["train", str(missing), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.shards: shard ") and "00002.tar does not exist" in err and "\n" not in err
    pipe = shard_config(tmp_path / "p.yaml", "pipe:cat /nowhere/00000.tar", tmp_path / "run")
    assert main(["train", str(pipe), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.shards: shard pipe:cat /nowhere/00000.tar") and "\n" not in err
    with pytest.raises(ShardError, match="data.epoch_samples is not set"):
        train(
            load_config(pipe, ["data.shards=" + str(tmp_path / "shards" / "00000.tar"), "data.epoch_samples=null"]),
            progress=False,
        )


def test_data_shard_writes_shards_that_tar_and_webdataset_read_and_resumes(tmp_path, data, capsys):
    import subprocess

    import webdataset as wds

    from mugstan.cli import main

    videos = data / "videos" / "train"
    (videos / "00001.txt").write_text("a caption beside its video")
    out = tmp_path / "out"
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "5", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [s["name"] for s in manifest["shards"]] == [f"{i:05d}.tar" for i in range(5)]
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 5, 5, 4] and manifest["samples"] == 24
    listing = subprocess.run(
        ["tar", "-tf", str(out / "00000.tar")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert (
        listing[:4] == ["000000000.mp4", "000000000.json", "000000001.mp4", "000000001.json"]
        and "000000001.txt" in listing
    )
    samples = list(wds.WebDataset(str(out / "{00000..00004}.tar"), shardshuffle=False))
    assert len(samples) == 24 and samples[1]["txt"] == b"a caption beside its video"
    assert samples[3]["mp4"] == (videos / "00003.mp4").read_bytes()
    assert json.loads(samples[3]["json"]) == {"source": "00003.mp4"}
    first = {n: (out / n).read_bytes() for n in names}

    # an interrupted run: the last shard never got its name, the manifest lists three, a temporary file is left
    (out / "00004.tar").rename(out / ".00004.tar.x1y2.tmp")
    manifest["shards"], manifest["samples"] = manifest["shards"][:4], 20
    (out / "manifest.json").write_text(json.dumps(manifest))
    stamp = (out / "00000.tar").stat().st_mtime_ns
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "5", "--workers", "1"]) == 0
    assert {n: (out / n).read_bytes() for n in names} == first and not list(out.glob(".*.tmp"))
    assert (out / "00000.tar").stat().st_mtime_ns == stamp  # finished shards are kept, not rewritten
    assert json.loads((out / "manifest.json").read_text())["samples"] == 24
    assert main(["data", "shard", str(videos), str(out), "--shard-size", "4"]) == 2
    assert "--shard-size 5" in capsys.readouterr().err
    assert main(["data", "shard", str(videos), str(tmp_path / "x"), "--shard-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --shard-size must be at least 1, got 0"
    assert main(["data", "shard", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "nowhere: not a folder of videos nor an experiment config" in capsys.readouterr().err

    # a dataset split from a config, re-encoded on the way in: captions, labels and all-intra frames
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run")
    assert (
        main(
            [
                "data",
                "shard",
                str(cfg),
                str(tmp_path / "cfg"),
                "--shard-size",
                "100",
                "--compress",
                "--fps",
                "4",
                "--short-side",
                "32",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    [sample, *_] = list(wds.WebDataset(str(tmp_path / "cfg" / "00000.tar"), shardshuffle=False))
    meta = json.loads(sample["json"])
    assert sample["txt"].decode() == rows[0]["caption"][0] and meta["captions"] == rows[0]["caption"]
    assert int(sample["cls"]) == rows[0]["label"] == meta["label"]
    import av

    with av.open(io.BytesIO(sample["mp4"])) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 4 and all(p.is_keyframe for p in container.demux(stream) if p.size)


def test_processes_and_workers_read_disjoint_shards_and_uneven_shards_give_every_process_its_steps(tmp_path, data):
    from mugstan.data.datasets.shards import ShardStream

    shards = write_shards(data, tmp_path / "shards", per_shard=5)  # 24 samples: 5, 5, 5, 5 and 4
    cfg = DataConfig(
        dataset="webdataset",
        shards=str(tmp_path / "shards" / "{00000..00004}.tar"),
        epoch_samples=20,
        shuffle_buffer=3,
        num_frames=2,
        image_size=16,
    )
    streams = [ShardStream(cfg, batch_size=4, world=2, rank=r, seed=1) for r in range(2)]
    for epoch in (0, 1):
        for s in streams:
            s.set_epoch(epoch)
        # 2 processes x 2 loader workers: 4 readers, 5 shards; every shard read by exactly one
        dealt = [streams[r].shards_of(r * 2 + w, 4) for r in range(2) for w in range(2)]
        assert sorted(sum(dealt, [])) == sorted(map(str, shards)) and all(dealt)
    assert streams[0].shards_of(0, 4) != ShardStream(cfg, batch_size=4, world=2, rank=0, seed=1).shards_of(
        0, 4
    )  # dealt anew each epoch
    # one loader worker each: rank 0 reads 3 shards (14 or 15 samples), rank 1 two (9 or 10): both make 5 steps of 2
    for s in streams:
        s.set_epoch(0)
    batches = [list(s) for s in streams]
    assert [len(b) for b in batches] == [5, 5] and all(x["frames"].shape[0] == 2 for b in batches for x in b)
    keys = [[int(i) for x in b for i in x["index"]] for b in batches]
    assert len(set(keys[0] + keys[1])) == 20  # positions in the streams: distinct
    assert [int(b[-1]["stream"][1]) for b in batches] == [10, 10]  # samples taken by each reader
    resumed = ShardStream(cfg, batch_size=4, world=2, rank=1, seed=1)
    resumed.set_epoch(0, skip_steps=3)
    resumed.consumed = {0: 6}
    again = list(resumed)
    assert len(again) == 2 and all(
        torch.equal(a["frames"], b["frames"]) for a, b in zip(again, batches[1][3:], strict=True)
    )


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "mugstan.cli", *args], env=ENV, capture_output=True, text=True, **kw)


def losses(out: Path) -> list[float]:
    return [
        r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


def test_sigkill_then_resume_on_shards_ends_with_the_same_weights(tmp_path, data):
    """The folder datasets' test (test_engine.py) on shards, with 2 loader workers and a broken sample:
    each reader's stream position is in the checkpoint and the resumed run replays to it."""
    shards = write_shards(data, tmp_path / "shards", per_shard=5)
    with tarfile.open(shards[0], "a") as tar:
        info = tarfile.TarInfo("zz.mp4")
        info.size = 9
        tar.addfile(info, io.BytesIO(b"not video"))
    pattern = str(tmp_path / "shards" / "{00000..00004}.tar")
    configs = {}
    for name in ("full", "killed"):
        path = shard_config(tmp_path / f"{name}.yaml", pattern, tmp_path / name, epoch_samples=12, num_workers=2)
        text = yaml.safe_load(path.read_text())
        text["train"].update(save_every=1, epochs=2)
        path.write_text(yaml.safe_dump(text))
        configs[name] = path
    full = cli(["train", str(configs["full"]), "--no-progress"])
    assert full.returncode == 0, full.stderr[-2000:]

    state = tmp_path / "killed" / "checkpoints" / "last" / "state.pt"
    killed = kill_training_at(configs["killed"], state, 4, ENV, 300)  # step 4: in the second epoch
    total = len(losses(tmp_path / "full"))
    assert 4 <= killed["step"] < total == 6, "the run must be killed mid-epoch"
    assert killed["stream"][0], "the readers' positions are in the training state"

    resumed = cli(["train", str(configs["killed"]), "--resume", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(tmp_path / "killed") == losses(tmp_path / "full")
    full_results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert (
        full_results["skipped_videos"]
        == json.loads((tmp_path / "killed" / "results.json").read_text())["skipped_videos"]
        >= 1
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_to_the_weights_of_one_node_with_two_processes(tmp_path, data):
    """torchrun --nnodes 2 (c10d rendezvous on 127.0.0.1, one gloo process per node) against
    --nproc_per_node 2, on uneven shards (5, 5, 5, 5, 4 samples: 3 shards for one rank, 2 for the other)."""
    write_shards(data, tmp_path / "shards", per_shard=5)
    pattern = str(tmp_path / "shards" / "{00000..00004}.tar")
    one = shard_config(tmp_path / "one.yaml", pattern, tmp_path / "one", epoch_samples=12)
    two = shard_config(tmp_path / "two.yaml", pattern, tmp_path / "two", epoch_samples=12)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    single = subprocess.run(
        [
            *torchrun,
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "mugstan.cli",
            "train",
            str(one),
            "--no-progress",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                *torchrun,
                "--nnodes",
                "2",
                "--node_rank",
                str(n),
                "--nproc_per_node",
                "1",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "mugstan-test",
                "-m",
                "mugstan.cli",
                "train",
                str(two),
                "--no-progress",
            ],
            env={**ENV, "GLOO_SOCKET_IFNAME": "lo"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert any("on 2 process(es)" in out for out, _ in outputs)
    a = load_file(str(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and len(losses(tmp_path / "two")) == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluation_from_test_shards_equals_the_folder_and_epoch_samples_come_from_stats_files(tmp_path, data):
    from mugstan.data.datasets.shards import ShardStream
    from mugstan.engine.evaluate import evaluate
    from mugstan.models import build_model

    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    first = [
        r["caption"] if isinstance(r["caption"], str) else r["caption"][0] for r in rows
    ]  # a shard holds one caption
    (tmp_path / "test1.jsonl").write_text(
        "".join(json.dumps({**r, "caption": c}) + "\n" for r, c in zip(rows, first, strict=True))
    )
    shards = write_shards(data, tmp_path / "test_shards", per_shard=3, ann="test.jsonl")
    folder = load_config(
        write_config(tmp_path / "f.yaml", data, tmp_path / "run"), [f"data.test_ann={tmp_path / 'test1.jsonl'}"]
    )
    torch.manual_seed(0)
    model = build_model(folder.model).eval()
    streamed = load_config(
        shard_config(
            tmp_path / "s.yaml",
            str(tmp_path / "test_shards" / "00000.tar"),
            tmp_path / "run",
            test_shards=f"pipe:cat {tmp_path / 'test_shards'}/{{00000..{len(shards) - 1:05d}}}.tar",
        )
    )
    a, b = evaluate(model, folder, "test", progress=False), evaluate(model, streamed, "test", progress=False)
    assert a["counts"] == b["counts"] and a["counts"]["videos"] == len(rows)
    assert a["retrieval"] == b["retrieval"]

    for shard in shards:  # video2dataset / img2dataset count each shard's samples in SHARD_stats.json
        shard.with_name(shard.stem + "_stats.json").write_text(json.dumps({"count": 3, "successes": 2}))
    cfg = DataConfig(
        dataset="webdataset", shards=str(tmp_path / "test_shards" / f"{{00000..{len(shards) - 1:05d}}}.tar")
    )
    assert ShardStream(cfg, batch_size=2).epoch_samples == 2 * len(shards)


def test_recognition_trains_from_labelled_shards(tmp_path, data):
    """Labels from KEY.json ("label"; KEY.cls works alike); a sample without one is skipped and logged."""
    shards = write_shards(data, tmp_path / "shards", per_shard=3, label=True)
    for shard in shards:  # each shard ends with a sample without label
        with tarfile.open(shard, "a") as tar:
            payload = (data / "videos/train/00000.mp4").read_bytes()
            info = tarfile.TarInfo("zz_nolabel.mp4")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    cfg = load_config(
        shard_config(
            tmp_path / "c.yaml",
            str(tmp_path / "shards" / f"{{00000..{len(shards) - 1:05d}}}.tar"),
            tmp_path / "run",
            epoch_samples=12,
            shuffle_buffer=1,
        ),
        ["model.task=recognition", "model.classifier=linear", "model.num_classes=10", "train.max_steps=3"],
    )
    results = train(cfg, progress=False)
    assert results["steps"] == 3
    errors = [
        e["error"]
        for e in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if e.get("event") == "skipped_video"
    ]
    assert errors and all(".tar/zz_nolabel" in e and "no class label" in e for e in errors)


def test_shards_stream_over_http_as_from_disk(tmp_path, data):
    import functools
    import http.server
    import threading

    shards = write_shards(data, tmp_path / "shards", per_shard=6)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "shards"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/00001.tar"
        failures = []
        remote, local = list(read_shard(url, failures)), list(read_shard(str(shards[1]), []))
        assert not failures and len(remote) == len(local) == 6
        assert [(r["__key__"], r["mp4"], r["txt"]) for r in remote] == [
            (r["__key__"], r["mp4"], r["txt"]) for r in local
        ]
        from mugstan.data.datasets.shards import check_shards

        with pytest.raises(ShardError, match="data.shards: shard http://127.0.0.1:.*/00009.tar"):
            check_shards([f"http://127.0.0.1:{server.server_address[1]}/00009.tar"])
    finally:
        server.shutdown()
