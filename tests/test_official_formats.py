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
import torch
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
    crlf(
        lists / "testlist01.txt", [ucf_file(c, 1, 1) for c in ("YoYo", "ApplyEyeMakeup", "HandstandPushups", "Archery")]
    )
    # split 2: the groups swap sides
    crlf(lists / "trainlist02.txt", [f"{ucf_file(c, 1, 1)} {i}" for i, c in reversed(list(enumerate(UCF_CLASSES, 1)))])
    crlf(lists / "testlist02.txt", [ucf_file(c, 8, 1) for c in UCF_CLASSES])
    return {"root": root, "lists": lists, "class_ind": class_ind}


def ucf_cfg(ucf, k=1, **kw):
    lists = ucf["lists"]
    return cfg(
        ucf["root"],
        "ucf101",
        train_ann=str(lists / f"trainlist{k:02d}.txt"),
        test_ann=str(lists / f"testlist{k:02d}.txt"),
        extra={"class_names": ucf["class_ind"]},
        **kw,
    )


def test_ucf101_splits(ucf):
    train = load_annotations(ucf_cfg(ucf), "train")
    assert train.class_names == UCF_CLASSES
    assert train.labels == [0, 1, 2, 3]  # "... 1" is ApplyEyeMakeup, class 0
    assert [c.path for c in train.clips] == [str(ucf["root"] / ucf_file(c, 8, 1)) for c in UCF_CLASSES]
    assert train.clips[2].path.endswith("HandstandPushups/v_HandStandPushups_g08_c01.avi")
    test = load_annotations(ucf_cfg(ucf), "test")  # no labels in the file: the class folder gives them
    assert test.labels == [3, 0, 2, 1] and test.class_names == UCF_CLASSES
    assert [c.path for c in test.clips] == [
        str(ucf["root"] / ucf_file(c, 1, 1)) for c in ("YoYo", "ApplyEyeMakeup", "HandstandPushups", "Archery")
    ]
    train2 = load_annotations(ucf_cfg(ucf, 2), "train")
    assert train2.labels == [3, 2, 1, 0] and train2.clips[0].path.endswith("YoYo/v_YoYo_g01_c01.avi")
    assert load_annotations(ucf_cfg(ucf, 2), "test").labels == [0, 1, 2, 3]
    item = build_dataset(ucf_cfg(ucf), "test")[2]  # a real AVI decoded, with its label
    assert item["label"] == 2 and item["frames"].shape == (4, 3, 32, 32)


def test_video_list_reads_classind_numbers(ucf):
    """The generic list format with classInd.txt: trainlist's labels are classInd's numbers, not one class off."""
    c = cfg(
        ucf["root"],
        "video_list",
        train_ann=str(ucf["lists"] / "trainlist01.txt"),
        test_ann=str(ucf["lists"] / "testlist01.txt"),
        extra={"class_names": ucf["class_ind"]},
    )
    assert load_annotations(c, "train").labels == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"testlist01.txt:1: .*use data.dataset=ucf101"):
        load_annotations(c, "test")
    zero_based = crlf(ucf["lists"].parent / "zero_based.txt", [f"{ucf_file('ApplyEyeMakeup', 8, 1)} 0"])
    with pytest.raises(
        ValueError, match=r"zero_based.txt:1: label 0 is not a class of .*classInd.txt \(numbered 1-4\)"
    ):
        load_annotations(
            cfg(ucf["root"], "video_list", test_ann=zero_based, extra={"class_names": ucf["class_ind"]}), "test"
        )


@pytest.mark.parametrize(
    "line, error",
    [
        (
            f"{ucf_file('YoYo', 8, 1)} 5",
            r"trainlist01.txt:2: label '5' is not a class number of .*classInd.txt \(1-4\)",
        ),
        (f"{ucf_file('YoYo', 8, 1)} 0", r"trainlist01.txt:2: label '0' is not a class number"),
        (
            f"{ucf_file('YoYo', 8, 1)} 2",
            r"trainlist01.txt:2: label 2 is 'Archery' in .*classInd.txt, "
            r"but the video is in folder 'YoYo' \(number 4\)",
        ),
        ("Basketball/v_Basketball_g01_c01.avi", r"trainlist01.txt:2: class 'Basketball' is not in .*classInd.txt"),
        ("v_YoYo_g01_c01.avi", r"trainlist01.txt:2: expected '<Class>/<video>.avi'"),
        (f"{ucf_file('YoYo', 8, 1)} 4 extra", r"trainlist01.txt:2: expected '<Class>/<video>.avi'"),
    ],
)
def test_ucf101_bad_lines(ucf, tmp_path, line, error):
    ann = crlf(tmp_path / "trainlist01.txt", [f"{ucf_file('Archery', 8, 1)} 2", line])
    with pytest.raises(ValueError, match=error):
        load_annotations(cfg(ucf["root"], "ucf101", train_ann=ann, extra={"class_names": ucf["class_ind"]}), "train")


def test_ucf101_needs_a_valid_classind(ucf, tmp_path):
    with pytest.raises(ValueError, match="data.extra.class_names is not set"):
        load_annotations(cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt")), "test")
    gap = crlf(tmp_path / "classInd.txt", ["1 ApplyEyeMakeup", "3 Archery"])
    with pytest.raises(ValueError, match=r"classInd.txt:2: class number 3, expected 2"):
        load_annotations(
            cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt"), extra={"class_names": gap}),
            "test",
        )
    twice = crlf(tmp_path / "twice.txt", ["1 ApplyEyeMakeup", "2 ApplyEyeMakeup"])
    with pytest.raises(ValueError, match=r"twice.txt:2: class 'ApplyEyeMakeup' is named twice"):
        load_annotations(
            cfg(ucf["root"], "ucf101", test_ann=str(ucf["lists"] / "testlist01.txt"), extra={"class_names": twice}),
            "test",
        )


# ---- HMDB-51 ---------------------------------------------------------------------------------
# flags per class and split: {class: {video: (split1, split2, split3)}}
HMDB = {
    "brush_hair": {
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi": (1, 2, 1),
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi": (2, 1, 0),
        "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi": (0, 1, 2),
    },
    "cartwheel": {
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi": (1, 1, 2),
        "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi": (2, 0, 1),
    },
    "sword_exercise": {
        "Blade_Of_Fury_-_Scene_1_sword_exercise_f_cm_np1_ri_med_3.avi": (0, 2, 1),
        "Sword_exercise_sword_exercise_u_cm_np1_fr_goo_1.avi": (1, 2, 2),
    },
}


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    base = tmp_path_factory.mktemp("hmdb")
    root, splits = base / "hmdb51_org", base / "testTrainMulti_7030_splits"
    splits.mkdir()
    for i, (cls, videos) in enumerate(HMDB.items()):
        for name in videos:
            write_video(root / cls / name, frames=8, seed=i)
        for k in (1, 2, 3):
            (splits / f"{cls}_test_split{k}.txt").write_text(
                "".join(f"{name} {flags[k - 1]} \n" for name, flags in videos.items())
            )
    return {"root": root, "splits": splits}


def hmdb_cfg(hmdb, k=1, any_class="brush_hair"):
    ann = str(hmdb["splits"] / f"{any_class}_test_split{k}.txt")
    return cfg(hmdb["root"], "hmdb51", train_ann=ann, val_ann=ann, test_ann=ann)


def expected_hmdb(root, k, flag):
    """(path, label) of the videos with this flag in split k, by class then file order."""
    names = sorted(HMDB)
    return [
        (str(root / cls / name), names.index(cls))
        for cls in names
        for name, flags in HMDB[cls].items()
        if flags[k - 1] == flag
    ]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hmdb51_splits(hmdb, k):
    for split, flag in (("train", 1), ("val", 2), ("test", 2)):
        ann = load_annotations(hmdb_cfg(hmdb, k), split)
        assert ann.class_names == ["brush_hair", "cartwheel", "sword_exercise"]
        pairs = list(zip([c.path for c in ann.clips], ann.labels, strict=True))
        assert pairs == expected_hmdb(hmdb["root"], k, flag), (split, k)
    # the split is the same whichever class file names it
    assert (
        load_annotations(hmdb_cfg(hmdb, k, "sword_exercise"), "train").labels
        == load_annotations(hmdb_cfg(hmdb, k), "train").labels
    )


def test_hmdb51_split1_by_hand(hmdb):
    """Split 1 spelled out: flag 1 train, 2 test, 0 in neither; flags are never labels."""
    r = hmdb["root"]
    train = load_annotations(hmdb_cfg(hmdb), "train")
    assert [c.path for c in train.clips] == [
        str(r / "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"),
        str(r / "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"),
        str(r / "sword_exercise/Sword_exercise_sword_exercise_u_cm_np1_fr_goo_1.avi"),
    ]
    assert train.labels == [0, 1, 2]
    test = load_annotations(hmdb_cfg(hmdb), "test")
    assert [c.path for c in test.clips] == [
        str(r / "brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi"),
        str(r / "cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi"),
    ]
    assert test.labels == [0, 1]
    item = build_dataset(hmdb_cfg(hmdb), "test")[1]
    assert item["label"] == 1 and item["frames"].shape == (4, 3, 32, 32)


def test_hmdb51_errors(hmdb, tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls in HMDB:
        for k in (1, 2):
            (splits / f"{cls}_test_split{k}.txt").write_text("a.avi 1 \nb.avi 2 \n")
    (splits / "cartwheel_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(
        ValueError,
        match=r"cartwheel_test_split1.txt:2: expected '<video>.avi <flag>' "
        r"with flag 0 \(unused\), 1 \(train\) or 2 \(test\), got 'b.avi 3'",
    ):
        load_annotations(cfg(hmdb["root"], "hmdb51", train_ann=str(splits / "brush_hair_test_split1.txt")), "train")
    (splits / "cartwheel_test_split1.txt").write_text("a.avi 1 \nb.avi\n")
    with pytest.raises(ValueError, match=r"cartwheel_test_split1.txt:2: expected '<video>.avi <flag>'"):
        load_annotations(cfg(hmdb["root"], "hmdb51", train_ann=str(splits / "brush_hair_test_split1.txt")), "train")
    (splits / "sword_exercise_test_split2.txt").unlink()
    with pytest.raises(
        ValueError, match=r"no sword_exercise_test_split2.txt although sword_exercise has files for other splits"
    ):
        load_annotations(cfg(hmdb["root"], "hmdb51", test_ann=str(splits / "brush_hair_test_split2.txt")), "test")
    other = tmp_path / "hmdb_train.txt"
    other.write_text("brush_hair/a.avi 0\n")
    with pytest.raises(
        ValueError, match=r"hmdb_train.txt: expected one of HMDB-51's split files, <class>_test_split<k>.txt"
    ):
        load_annotations(cfg(hmdb["root"], "hmdb51", train_ann=str(other)), "train")


# ---- WebVid ----------------------------------------------------------------------------------
WEBVID_ROWS = [  # videoid, contentUrl, duration, page_dir, name
    (
        "31353427",
        "https://ak.picdn.net/shutterstock/videos/31353427/preview/stock-footage-merida.mp4",
        "PT00H00M31S",
        "006001_006050",
        "Merida, mexico - may 23, 2017: tourists are walking on a roadside near catholic church.",
    ),
    (
        "14781349",
        "https://ak.picdn.net/shutterstock/videos/14781349/preview/stock-footage-happy-family.mp4",
        "PT00H00M10S",
        "006001_006050",
        "Happy family using laptop on bed at home",
    ),
    (
        "1021407538",
        "https://ak.picdn.net/shutterstock/videos/1021407538/preview/stock-footage-aerial.mp4",
        "PT00H00M19S",
        "1031101_1031150",
        'Aerial shot of a "green" forest',
    ),
]


@pytest.fixture(scope="module")
def webvid_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid") / "videos"
    for i, (videoid, _, _, page_dir, _) in enumerate(WEBVID_ROWS):
        write_video(root / page_dir / f"{videoid}.mp4", frames=8, seed=i)
    return root


def test_webvid_official_csv(webvid_root, tmp_path):
    ann = tmp_path / "results_2M_val.csv"
    with ann.open("w", newline="") as f:
        csv.writer(f).writerows([["videoid", "contentUrl", "duration", "page_dir", "name"], *WEBVID_ROWS])
    a = load_annotations(cfg(webvid_root, "webvid", train_ann=str(ann)), "train")
    assert [c.path for c in a.clips] == [
        str(webvid_root / "006001_006050/31353427.mp4"),
        str(webvid_root / "006001_006050/14781349.mp4"),
        str(webvid_root / "1031101_1031150/1021407538.mp4"),
    ]
    assert a.captions == [row[4] for row in WEBVID_ROWS] and a.caption_clip == [0, 1, 2]
    item = build_dataset(cfg(webvid_root, "webvid", train_ann=str(ann)), "train", Tokenizer(16))[2]
    ids, text_mask = Tokenizer(16)(WEBVID_ROWS[2][4])  # the third row's caption
    assert item["frames"].shape == (4, 3, 32, 32) and torch.equal(item["ids"], ids[0])
    assert torch.equal(item["text_mask"], text_mask[0]) and 2 < text_mask.sum() < 16  # neither empty nor cut
    # the 2.5M release orders its columns differently (videoid,name,page_idx,page_dir,duration,contentUrl)
    other = tmp_path / "results_2M_train.csv"
    with other.open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"],
                *[(v, name, 0, page, d, url) for v, url, d, page, name in WEBVID_ROWS],
            ]
        )
    b = load_annotations(cfg(webvid_root, "webvid", train_ann=str(other)), "train")
    assert [c.path for c in b.clips] == [c.path for c in a.clips] and b.captions == a.captions


def test_webvid_csv_errors(webvid_root, tmp_path):
    ann = tmp_path / "results.csv"
    with ann.open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["videoid", "contentUrl", "duration", "page_dir", "name"],
                WEBVID_ROWS[0],
                ("123", "url", "PT1S", "", "no folder"),
            ]
        )
    with pytest.raises(ValueError, match=r"results.csv:3: empty page_dir"):
        load_annotations(cfg(webvid_root, "webvid", train_ann=str(ann)), "train")
    ann.write_text("video,text\na.mp4,a cat\n")
    with pytest.raises(
        ValueError,
        match=r"results.csv: expected WebVid's header videoid,contentUrl,duration,page_dir,name "
        r"or the columns path,caption, got video,text",
    ):
        load_annotations(cfg(webvid_root, "webvid", train_ann=str(ann)), "train")
