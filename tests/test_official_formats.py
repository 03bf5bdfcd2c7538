"""UCF-101, HMDB-51 and WebVid annotation files exactly as distributed, through the adapters.

Each fixture copies the official layout: UCF-101's ucfTrainTestlist/ (CRLF lines, 1-based
labels in trainlist, no label in testlist, the HandstandPushups folder whose files are spelled
v_HandStandPushups_*), HMDB-51's testTrainMulti_7030_splits/ (one file per class and split,
"name.avi flag " with a trailing space), WebVid's results CSV (quoted captions with commas,
videos saved as <page_dir>/<videoid>.mp4 by the downloader). The videos are real files: AVI
(MPEG-4 Part 2) for UCF-101 and HMDB-51, H.264 MP4 for WebVid.
"""

import csv

import pytest

from data_fixtures import write_video
from mugstan.backbones.clip import Tokenizer
from mugstan.config import DataConfig
from mugstan.data.datasets import build_dataset, load_annotations

UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups", "YoYo"]


def cfg(root, dataset, **kw):
    return DataConfig(dataset=dataset, root=str(root), num_frames=4, image_size=32, **kw)


def crlf(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line}\r\n" for line in lines).encode())
    return str(path)


def ucf_file(cls, group, clip):
    return f"{cls}/v_{'HandStandPushups' if cls == 'HandstandPushups' else cls}_g{group:02d}_c{clip:02d}.avi"


# ---- UCF-101 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    base = tmp_path_factory.mktemp("ucf")
    root = base / "UCF-101"
    for i, cls in enumerate(UCF_CLASSES):
        for group in (1, 8):
            write_video(root / ucf_file(cls, group, 1), frames=8, seed=i)
    lists = base / "ucfTrainTestlist"
    class_ind = crlf(lists / "classInd.txt", [f"{i} {c}" for i, c in enumerate(UCF_CLASSES, 1)])
    crlf(lists / "trainlist01.txt", [f"{ucf_file(c, 8, 1)} {i}" for i, c in enumerate(UCF_CLASSES, 1)])
    crlf(lists / "testlist01.txt", [ucf_file(c, 1, 1) for c in ("YoYo", "ApplyEyeMakeup", "HandstandPushups", "Archery")])
    # split 2: the groups swap sides
    crlf(lists / "trainlist02.txt", [f"{ucf_file(c, 1, 1)} {i}" for i, c in reversed(list(enumerate(UCF_CLASSES, 1)))])
    crlf(lists / "testlist02.txt", [ucf_file(c, 8, 1) for c in UCF_CLASSES])
    return {"root": root, "lists": lists, "class_ind": class_ind}


def ucf_cfg(ucf, k=1, **kw):
    lists = ucf["lists"]
    return cfg(ucf["root"], "ucf101", train_ann=str(lists / f"trainlist{k:02d}.txt"), test_ann=str(lists / f"testlist{k:02d}.txt"),
               extra={"class_names": ucf["class_ind"]}, **kw)


def test_ucf101_splits(ucf):
    train = load_annotations(ucf_cfg(ucf), "train")
    assert train.class_names == UCF_CLASSES
    assert train.labels == [0, 1, 2, 3]  # "... 1" is ApplyEyeMakeup, class 0
    assert [c.path for c in train.clips] == [str(ucf["root"] / ucf_file(c, 8, 1)) for c in UCF_CLASSES]
    assert train.clips[2].path.endswith("HandstandPushups/v_HandStandPushups_g08_c01.avi")
    test = load_annotations(ucf_cfg(ucf), "test")  # no labels in the file: the class folder gives them
    assert test.labels == [3, 0, 2, 1] and test.class_names == UCF_CLASSES
    assert [c.path for c in test.clips] == [str(ucf["root"] / ucf_file(c, 1, 1)) for c in ("YoYo", "ApplyEyeMakeup", "HandstandPushups", "Archery")]
    train2 = load_annotations(ucf_cfg(ucf, 2), "train")
    assert train2.labels == [3, 2, 1, 0] and train2.clips[0].path.endswith("YoYo/v_YoYo_g01_c01.avi")
    assert load_annotations(ucf_cfg(ucf, 2), "test").labels == [0, 1, 2, 3]
    item = build_dataset(ucf_cfg(ucf), "test")[2]  # a real AVI decoded, with its label
    assert item["label"] == 2 and item["frames"].shape == (4, 3, 32, 32)


def test_video_list_reads_classind_numbers(ucf):
    """The generic list format with classInd.txt: trainlist's labels are classInd's numbers, not one class off."""
    c = cfg(ucf["root"], "video_list", train_ann=str(ucf["lists"] / "trainlist01.txt"), test_ann=str(ucf["lists"] / "testlist01.txt"),
            extra={"class_names": ucf["class_ind"]})
    assert load_annotations(c, "train").labels == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"testlist01.txt:1: .*use data.dataset=ucf101"):
        load_annotations(c, "test")
    zero_based = crlf(ucf["lists"].parent / "zero_based.txt", [f"{ucf_file('ApplyEyeMakeup', 8, 1)} 0"])
    with pytest.raises(ValueError, match=r"zero_based.txt:1: label 0 is not a class of .*classInd.txt \(numbered 1-4\)"):
        load_annotations(cfg(ucf["root"], "video_list", test_ann=zero_based, extra={"class_names": ucf["class_ind"]}), "test")


@pytest.mark.parametrize("line, error", [
    (f"{ucf_file('YoYo', 8, 1)} 5", r"trainlist01.txt:2: label '5' is not a class number of .*classInd.txt \(1-4\)"),
    (f"{ucf_file('YoYo', 8, 1)} 0", r"trainlist01.txt:2: label '0' is not a class number"),
    (f"{ucf_file('YoYo', 8, 1)} 2", r"trainlist01.txt:2: label 2 is 'Archery' in .*classInd.txt, but the video is in folder 'YoYo' \(number 4\)"),
    ("Basketball/v_Basketball_g01_c01.avi", r"trainlist01.txt:2: class 'Basketball' is not in .*classInd.txt"),
    ("v_YoYo_g01_c01.avi", r"trainlist01.txt:2: expected '<Class>/<video>.avi'"),
    (f"{ucf_file('YoYo', 8, 1)} 4 extra", r"trainlist01.txt:2: expected '<Class>/<video>.avi'"),
])
def test_ucf101_bad_lines(ucf, tmp_path, line, error):
    ann = crlf(tmp_path / "trainlist01.txt", [f"{ucf_file('Archery', 8, 1)} 2", line])
    with pytest.raises(ValueError, match=error):
        load_annotations(cfg(ucf["root"], "ucf101", train_ann=ann, extra={"class_names": ucf["class_ind"]}), "train")


def test_ucf101_needs_a_valid_classind(ucf, tmp_path):
    with pytest.raises(ValueError, match="data.extra.class_names is not set"):
        load_annotations(cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt")), "test")
    gap = crlf(tmp_path / "classInd.txt", ["1 ApplyEyeMakeup", "3 Archery"])
    with pytest.raises(ValueError, match=r"classInd.txt:2: class number 3, expected 2"):
        load_annotations(cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt"), extra={"class_names": gap}), "test")
    twice = crlf(tmp_path / "twice.txt", ["1 ApplyEyeMakeup", "2 ApplyEyeMakeup"])
    with pytest.raises(ValueError, match=r"twice.txt:2: class 'ApplyEyeMakeup' is named twice"):
        load_annotations(cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt"), extra={"class_names": twice}), "test")
