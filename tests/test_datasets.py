"""Every annotation format of data.md, as tiny files in the real layout, through the datasets."""

import csv
import json
import pickle
from pathlib import Path

import pytest
from data_fixtures import write_video

from mugstan.backbones.clip import Tokenizer
from mugstan.config import DataConfig
from mugstan.data.datasets import AnnotationError, build_dataset, collate, load_annotations

IDS = ["video0", "video1", "video2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, vid in enumerate(IDS):
        write_video(root / f"{vid}.mp4", frames=12 + 4 * i, seed=i)
    write_video(root / "k400" / "abseiling" / "yt1_000010_000020.mp4", frames=10)
    write_video(root / "123.webm", frames=10)  # SSv2 ids are webm files
    return root


def cfg(root, dataset, **kw):
    return DataConfig(dataset=dataset, root=str(root), num_frames=4, image_size=32, **kw)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_msrvtt_csv_and_json(root, tmp_path):
    data = {
        "videos": [{"video_id": v} for v in IDS],
        "sentences": [{"video_id": v, "caption": f"caption {j} of {v}", "sen_id": j} for v in IDS for j in range(3)],
    }
    data_json = write(tmp_path / "MSRVTT_data.json", json.dumps(data))
    train = write(tmp_path / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo1\n")
    test = write(tmp_path / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr2,video2,a man cooks\n")
    c = cfg(root, "msrvtt", train_ann=train, test_ann=test, extra={"data_json": data_json})
    tr = load_annotations(c, "train")
    assert len(tr.clips) == 2 and len(tr.captions) == 6 and tr.caption_clip == [0, 0, 0, 1, 1, 1]
    te = load_annotations(c, "test")
    assert te.captions == ["a man cooks"] and te.clips[0].path.endswith("video2.mp4") and not te.multi_caption
    stan = write(tmp_path / "train_9k.json", json.dumps({"video0.mp4": ["a", "b"], "video1.mp4": ["c"]}))
    assert load_annotations(cfg(root, "msrvtt_json", train_ann=stan), "train").caption_clip == [0, 0, 1]


def test_didemo_paragraphs(root, tmp_path):
    ann = write(
        tmp_path / "test_data.json",
        json.dumps(
            [
                {"video": "video0.mp4", "description": "a dog runs.", "times": [[0, 1]]},
                {"video": "video0.mp4", "description": "it jumps.", "times": [[1, 2]]},
                {"video": "video1.mp4", "description": "a car.", "times": [[0, 0]]},
            ]
        ),
    )
    a = load_annotations(cfg(root, "didemo", test_ann=ann), "test")
    assert a.captions == ["a dog runs. it jumps.", "a car."] and len(a.clips) == 2


def test_stan_authors_json_layouts(root, tmp_path):
    """The STAN authors' files as their dataset classes read them: DidemoDataset joins a video's
    sentences with spaces, LsmdcDataset and WeividDataset_filtered take one caption per key."""
    didemo = write(
        tmp_path / "test.json", json.dumps({"video0.mp4": ["a dog runs.", "it jumps."], "video1.mp4": ["a car."]})
    )
    a = load_annotations(cfg(root, "didemo_json", test_ann=didemo), "test")
    assert a.captions == ["a dog runs. it jumps.", "a car."] and [Path(c.path).name for c in a.clips] == [
        "video0.mp4",
        "video1.mp4",
    ]
    lsmdc = write(
        tmp_path / "lsmdc_test.json", json.dumps({"video0.mp4": "SOMEONE opens a door.", "video1.mp4": "He sits."})
    )
    a = load_annotations(cfg(root, "lsmdc_json", test_ann=lsmdc), "test")
    assert (
        a.captions == ["SOMEONE opens a door.", "He sits."]
        and a.caption_clip == [0, 1]
        and a.clips[1].path.endswith("video1.mp4")
    )
    webvid = write(tmp_path / "webvid_filtered.json", json.dumps({"000/1.mp4": "a cat", "001/2.mp4": "the sea"}))
    a = load_annotations(cfg(root, "webvid", train_ann=webvid), "train")
    assert a.captions == ["a cat", "the sea"] and a.clips[0].path == str(Path(root) / "000/1.mp4")
    bad = write(tmp_path / "bad.json", json.dumps({"video0.mp4": ["a list"]}))
    with pytest.raises(AnnotationError, match="not the layout data.dataset=lsmdc_json expects"):
        load_annotations(cfg(root, "lsmdc_json", test_ann=bad), "test")


def test_lsmdc_found_by_stem(root, tmp_path):
    ann = write(
        tmp_path / "LSMDC16_challenge_1000_publictect.csv",
        "video1\t00.00\t01.00\t00.00\t01.00\tSOMEONE smiles.\nvideo2\t0\t1\t0\t1\tShe leaves.\n",
    )
    a = load_annotations(cfg(root, "lsmdc", test_ann=ann), "test")
    assert a.captions == ["SOMEONE smiles.", "She leaves."] and a.clips[1].path.endswith("video2.mp4")


def test_msvd_vatex_multi_caption(root, tmp_path):
    pkl = tmp_path / "raw-captions.pkl"
    pkl.write_bytes(pickle.dumps({v: [["a", "cat", str(j)] for j in range(4)] for v in IDS}))
    lst = write(tmp_path / "test_list.txt", "video0\nvideo2\n")
    a = load_annotations(cfg(root, "msvd", test_ann=lst, extra={"captions": str(pkl)}), "test")
    assert len(a.captions) == 8 and a.captions[0] == "a cat 0" and a.multi_caption
    vdata = write(
        tmp_path / "vatex_data.json", json.dumps({v: {"enCap": [f"{v} {j}" for j in range(10)]} for v in IDS})
    )
    a = load_annotations(cfg(root, "vatex", test_ann=lst, extra={"data_json": vdata}), "test")
    assert len(a.captions) == 20 and a.caption_clip[10] == 1


def test_activitynet_paragraph(root, tmp_path):
    ann = write(
        tmp_path / "val_1.json",
        json.dumps(
            {"v_video1": {"duration": 2.0, "timestamps": [[0, 1], [1, 2]], "sentences": ["A man walks.", " He sits."]}}
        ),
    )
    a = load_annotations(cfg(root, "activitynet", test_ann=ann), "test")
    assert a.captions == ["A man walks. He sits."] and a.clips[0].path.endswith("video1.mp4")


def test_recognition_lists(root, tmp_path):
    lst = write(tmp_path / "testlist.txt", "video0.mp4 1\nvideo1.mp4 0\n")
    names = write(tmp_path / "classes.txt", "ApplyEyeMakeup\nArchery\n")
    a = load_annotations(cfg(root, "video_list", test_ann=lst, extra={"class_names": names}), "test")
    assert a.labels == [1, 0] and a.class_names == ["ApplyEyeMakeup", "Archery"]
    numbered = write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")  # labels are its numbers
    lst = write(tmp_path / "trainlist.txt", "video0.mp4 2\nvideo1.mp4 1\n")
    a = load_annotations(cfg(root, "video_list", test_ann=lst, extra={"class_names": numbered}), "test")
    assert a.labels == [1, 0] and a.class_names == ["ApplyEyeMakeup", "Archery"]
    k = write(tmp_path / "kinetics_val.csv", "label,youtube_id,time_start,time_end,split\nabseiling,yt1,10,20,val\n")
    a = load_annotations(cfg(root, "kinetics_csv", test_ann=k), "test")
    assert a.labels == [0] and a.clips[0].path.endswith("yt1_000010_000020.mp4")
    labels = write(
        tmp_path / "labels.json", json.dumps({"Pushing something from left to right": "0", "Holding something": "1"})
    )
    val = write(
        tmp_path / "validation.json",
        json.dumps(
            [{"id": "123", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]}]
        ),
    )
    a = load_annotations(cfg(root, "ssv2", test_ann=val, extra={"labels": labels}), "test")
    assert (
        a.labels == [1]
        and a.class_names[0] == "Pushing something from left to right"
        and a.clips[0].path.endswith("123.webm")
    )


def test_webvid_cc3m_jsonl(root, tmp_path):
    wj = write(tmp_path / "webvid.json", json.dumps({"video0.mp4": "a beach", "video1.mp4": "a city"}))
    assert load_annotations(cfg(root, "webvid", train_ann=wj), "train").captions == ["a beach", "a city"]
    with (tmp_path / "webvid.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["path", "caption"], ["video2.mp4", "a forest"]])
    assert load_annotations(cfg(root, "webvid", train_ann=str(tmp_path / "webvid.csv")), "train").captions == [
        "a forest"
    ]
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(root / "img.jpg")
    tsv = write(tmp_path / "cc3m.tsv", "a grey square\timg.jpg\n")
    ds = build_dataset(cfg(root, "cc3m", train_ann=tsv), "train", Tokenizer(8))
    assert ds[0]["frames"].shape == (4, 3, 32, 32)  # one image, repeated as 4 frames
    lines = [
        {"video": "video0.mp4", "caption": ["x", "y"], "label": "jump"},
        {"video": "video1.mp4", "caption": "z", "label": "run", "start": 0.5, "end": 1.0},
    ]
    jl = write(tmp_path / "a.jsonl", "\n".join(json.dumps(row) for row in lines))
    a = load_annotations(cfg(root, "jsonl", test_ann=jl), "test")
    assert (
        a.labels == [0, 1]
        and a.class_names == ["jump", "run"]
        and a.clips[1].start == 0.5
        and a.caption_clip == [0, 0, 1]
    )


def test_items_and_collate_skip_broken_videos(root, tmp_path):
    (root / "broken.mp4").write_bytes(b"not a video")
    lines = [
        {"video": "video0.mp4", "caption": "good"},
        {"video": "broken.mp4", "caption": "bad"},
        {"video": "nope.mp4", "caption": "gone"},
    ]
    jl = write(tmp_path / "t.jsonl", "\n".join(json.dumps(row) for row in lines))
    c = cfg(root, "jsonl", train_ann=jl)
    dropping = build_dataset(c, "train", Tokenizer(8), on_error="drop")
    batch = collate([dropping[i] for i in range(3)])
    assert batch["frames"].shape == (1, 4, 3, 32, 32) and batch["ids"].shape == (1, 8)
    assert batch["frame_mask"].all() and batch["index"].tolist() == [0]
    assert (
        [i for i, _ in batch["failed"]] == [1, 2]
        and "broken.mp4" in batch["failed"][0][1]
        and "file not found" in batch["failed"][1][1]
    )
    replacing = build_dataset(c, "train", Tokenizer(8))  # training: the batch keeps its size
    batch = collate([replacing[i] for i in range(3)])
    assert batch["frames"].shape[0] == 3 and batch["index"].tolist() == [0, 0, 0]
    assert {i for i, _ in batch["failed"]} == {1, 2}  # each failure counted where it happened
    strict = build_dataset(c, "train", Tokenizer(8), on_error="raise")
    with pytest.raises(Exception, match="broken.mp4"):
        strict[1]


def test_multi_view_testing(root, tmp_path):
    lst = write(tmp_path / "l.txt", "video2.mp4 0\n")
    c = cfg(root, "video_list", test_ann=lst, test_clips=2, test_crops=3)
    item = build_dataset(c, "test")[0]
    assert item["frames"].shape == (6, 4, 3, 32, 32) and item["label"] == 0


def test_bad_annotation_errors(root, tmp_path):
    with pytest.raises(ValueError, match="data.dataset='nope'"):
        load_annotations(cfg(root, "nope", test_ann="x"), "test")
    with pytest.raises(ValueError, match="data.test_ann is not set"):
        load_annotations(cfg(root, "jsonl"), "test")
    with pytest.raises(FileNotFoundError, match="data.test_ann: .*missing.jsonl"):
        load_annotations(cfg(root, "jsonl", test_ann=str(tmp_path / "missing.jsonl")), "test")
    bad = write(tmp_path / "bad.jsonl", '{"video": "a.mp4"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        load_annotations(cfg(root, "jsonl", test_ann=bad), "test")
    lst = write(tmp_path / "l.txt", "video0.mp4 zero\n")
    with pytest.raises(ValueError, match=r"l.txt:1: expected 'relative/path.mp4 <integer label>'"):
        load_annotations(cfg(root, "video_list", test_ann=lst), "test")
    with pytest.raises(ValueError, match="data.extra.data_json is not set"):
        load_annotations(cfg(root, "msrvtt", train_ann=write(tmp_path / "t.csv", "video_id\nvideo0\n")), "train")
