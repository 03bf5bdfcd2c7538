"""Annotation adapters: each benchmark's files as distributed -> ``Annotations`` (data.md table).

Paths come from the config: ``data.root`` (the dataset's folder), ``data.videos`` (its video
folder, relative to data.root), ``data.{train,val,test}_ann`` and ``data.extra`` (format-specific
files; relative ones are inside data.root, resolved when the config is loaded). Video paths in
annotations are relative to ``data.video_root`` (data.root / data.videos). Where a format names
videos by id only, the file is found by its stem under that folder (any common container).
"""

from __future__ import annotations

import csv
import json
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

from mugstan.config import DataConfig
from mugstan.data.datasets.base import Annotations, Clip
from mugstan.errors import AnnotationError
from mugstan.files import regular_file

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".wmv")


def _ann_file(cfg: DataConfig, split: str) -> Path:
    value = getattr(cfg, f"{split}_ann")
    if not value:
        raise AnnotationError(
            f"data.{split}_ann is not set: give the {cfg.dataset} annotation file for the {split} split"
        )
    return regular_file(value, f"data.{split}_ann")


def _extra(cfg: DataConfig, key: str, required: bool = True) -> Optional[Path]:
    value = cfg.extra.get(key)
    if not value:
        if required:
            raise AnnotationError(f"data.extra.{key} is not set: {cfg.dataset} needs it")
        return None
    return regular_file(value, f"data.extra.{key}")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: invalid JSON ({err})") from None


class _Finder:
    """Video file of an id: root/<id> as given, else the first file under root with that stem."""

    def __init__(self, root: str):
        self.root = Path(root).expanduser()
        self._stems: Optional[dict[str, Path]] = None

    def __call__(self, name: str) -> str:
        direct = self.root / name
        if direct.is_file():
            return str(direct)
        if self._stems is None:
            self._stems = {}
            for p in sorted(self.root.rglob("*")):
                if p.suffix.lower() in VIDEO_EXTENSIONS:
                    self._stems.setdefault(p.stem, p)
        found = self._stems.get(Path(name).stem) or self._stems.get(name)
        # A missing file is reported by the decoder (with this path) and by `mugstan data check`.
        return str(found) if found else str(direct)


def _retrieval(
    groups: "OrderedDict[str, list[str]]", finder: _Finder, source: str, times: Optional[dict] = None
) -> Annotations:
    clips, captions, links = [], [], []
    for j, (name, caps) in enumerate(groups.items()):
        start, end = (times or {}).get(name, (None, None))
        clips.append(Clip(finder(name), start, end))
        captions.extend(caps)
        links.extend([j] * len(caps))
    return Annotations(clips, captions, links, source=source)


# ---- retrieval benchmarks -------------------------------------------------------------------
def msrvtt(cfg: DataConfig, split: str) -> Annotations:
    """MSRVTT_data.json (data.extra.data_json) + MSRVTT_train.9k.csv (train) / MSRVTT_JSFUSION_test.csv (val/test)."""
    path = _ann_file(cfg, split)
    finder = _Finder(cfg.video_root)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "sentence" in rows[0]:  # JSFUSION: one caption per video
        groups = OrderedDict((f"{r['video_id']}.mp4", [r["sentence"]]) for r in rows)
        return _retrieval(groups, finder, str(path))
    if not rows or "video_id" not in rows[0]:
        raise AnnotationError(
            f"{path}: expected a CSV with a video_id column (MSRVTT_train.9k.csv) or key,vid_key,video_id,sentence"
        )
    data = _load_json(_extra(cfg, "data_json"))
    wanted = OrderedDict((r["video_id"], []) for r in rows)
    for s in data["sentences"]:
        if s["video_id"] in wanted:
            wanted[s["video_id"]].append(s["caption"])
    groups = OrderedDict((f"{vid}.mp4", caps) for vid, caps in wanted.items() if caps)
    return _retrieval(groups, finder, str(path))


def msrvtt_json(cfg: DataConfig, split: str) -> Annotations:
    """STAN layout: {"video7020.mp4": ["caption", ...]} (train_9k.json, test_JSFUSION.json)."""
    path = _ann_file(cfg, split)
    data = _load_json(path)
    groups = OrderedDict((name, [c] if isinstance(c, str) else list(c)) for name, c in data.items())
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def didemo_json(cfg: DataConfig, split: str) -> Annotations:
    """STAN layout (``DidemoDataset``: train.json, test.json): {"video.mp4": ["sentence", ...]};
    a video's sentences joined by spaces into one paragraph, as the authors join them."""
    path = _ann_file(cfg, split)
    groups = OrderedDict((name, [" ".join(texts)]) for name, texts in _load_json(path).items())
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def lsmdc_json(cfg: DataConfig, split: str) -> Annotations:
    """STAN layout (``LsmdcDataset``: lsmdc_train.json, lsmdc_test.json): {"clip path": "sentence"},
    one clip and caption per entry; the authors open the key as it is, mugstan inside data.videos
    (an absolute key stays where it is)."""
    path = _ann_file(cfg, split)
    pairs = [(name, text) for name, text in _load_json(path).items()]
    if any(not isinstance(text, str) for _, text in pairs):
        raise TypeError("every value must be one caption (a string)")
    root = cfg.video_root
    return Annotations(
        [Clip(str(root / name)) for name, _ in pairs], [t for _, t in pairs], list(range(len(pairs))), source=str(path)
    )


def didemo(cfg: DataConfig, split: str) -> Annotations:
    """{split}_data.json: [{"video", "description", "times"}]; a video's descriptions form one paragraph."""
    path = _ann_file(cfg, split)
    paragraphs: "OrderedDict[str, list[str]]" = OrderedDict()
    for entry in _load_json(path):
        paragraphs.setdefault(entry["video"], []).append(entry["description"].strip())
    groups = OrderedDict((v, [" ".join(d)]) for v, d in paragraphs.items())
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def lsmdc(cfg: DataConfig, split: str) -> Annotations:
    """Tab-separated clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence."""
    path = _ann_file(cfg, split)
    groups: "OrderedDict[str, list[str]]" = OrderedDict()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 6:
            raise AnnotationError(
                f"{path}:{n}: expected 6 tab-separated fields (clip_id ... sentence), got {len(parts)}"
            )
        groups.setdefault(parts[0], []).append(parts[5].strip())
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def msvd(cfg: DataConfig, split: str) -> Annotations:
    """{train,val,test}_list.txt of clip ids + raw-captions.pkl {id: [[word, ...], ...]} (data.extra.captions)."""
    path = _ann_file(cfg, split)
    with _extra(cfg, "captions").open("rb") as f:
        captions = pickle.load(f)
    groups = OrderedDict()
    for vid in (line.strip() for line in path.read_text().splitlines()):
        if vid:
            if vid not in captions:
                raise AnnotationError(f"{path}: clip {vid!r} has no captions in {cfg.extra['captions']}")
            groups[vid] = [" ".join(words) for words in captions[vid]]
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def vatex(cfg: DataConfig, split: str) -> Annotations:
    """vatex_data.json {id: {"enCap": [...]}} (data.extra.data_json) + a list of ids per split."""
    path = _ann_file(cfg, split)
    data = _load_json(_extra(cfg, "data_json"))
    groups = OrderedDict(
        (vid, list(data[vid]["enCap"])) for vid in (line.strip() for line in path.read_text().splitlines()) if vid
    )
    return _retrieval(groups, _Finder(cfg.video_root), str(path))


def activitynet(cfg: DataConfig, split: str) -> Annotations:
    """{"v_<id>": {"duration", "timestamps", "sentences"}}: paragraph-to-video over the whole video."""
    path = _ann_file(cfg, split)
    data = _load_json(path)
    finder = _Finder(cfg.video_root)
    clips, captions = [], []
    for key, entry in data.items():
        found = finder(key)
        clips.append(Clip(found if Path(found).exists() else finder(key.removeprefix("v_"))))
        captions.append(" ".join(s.strip() for s in entry["sentences"]))
    return Annotations(clips, captions, list(range(len(clips))), source=str(path))


# ---- recognition ----------------------------------------------------------------------------
def _read_classes(path: Path) -> tuple[list[str], int]:
    """A class-name file: (names in index order, the number of the first class).

    Either one name per line (the line order is the index; first number 0), or numbered lines
    "1 ApplyEyeMakeup" as in UCF-101's classInd.txt, whose numbers must run on by one from the
    first (labels elsewhere are these numbers).
    """
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise AnnotationError(f"{path}: no class names")
    numbered = all(re.fullmatch(r"\d+\s+\S.*", line) for _, line in lines)
    names, first = [], int(lines[0][1].split()[0]) if numbered else 0
    for n, line in lines:
        if numbered:
            number, name = line.split(maxsplit=1)
            if int(number) != first + len(names):
                raise AnnotationError(
                    f"{path}:{n}: class number {number}, expected {first + len(names)}: "
                    "numbers must run on by one (\"1 ApplyEyeMakeup\", \"2 ApplyLipstick\", ...)"
                )
            line = name.strip()
        if line in names:
            raise AnnotationError(f"{path}:{n}: class {line!r} is named twice")
        names.append(line)
    return names, first


def _class_names(path: Optional[Path]) -> Optional[list[str]]:
    return None if path is None else _read_classes(path)[0]


def video_list(cfg: DataConfig, split: str) -> Annotations:
    """Lists "relative/path.mp4 <label>" per line (+ optional class-name file data.extra.class_names).

    Labels count from 0, or, with a numbered class file (classInd.txt), are its numbers.
    """
    path = _ann_file(cfg, split)
    root = cfg.video_root
    names_file = _extra(cfg, "class_names", required=False)
    names, first = _read_classes(names_file) if names_file else (None, 0)
    clips, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel or not label.lstrip("-").isdigit():
            hint = " (UCF-101's testlist has no labels: use data.dataset=ucf101)" if not rel else ""
            raise AnnotationError(f"{path}:{n}: expected 'relative/path.mp4 <integer label>', got {line!r}{hint}")
        if names is not None and not first <= int(label) < first + len(names):
            raise AnnotationError(
                f"{path}:{n}: label {label} is not a class of {names_file} (numbered {first}-{first + len(names) - 1})"
            )
        clips.append(Clip(str(root / rel)))
        labels.append(int(label) - first)
    return Annotations(clips, labels=labels, class_names=names, source=str(path))


def ucf101(cfg: DataConfig, split: str) -> Annotations:
    """UCF-101's official splits (ucfTrainTestlist/), any of splits 1-3.

    trainlist0k.txt: "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1" (label numbered as in
    classInd.txt, from 1); testlist0k.txt: the path alone. data.extra.class_names: classInd.txt
    ("1 ApplyEyeMakeup"). The class of a video is its folder; a label, where given, must agree.
    Videos: <data.root>/<Class>/<file>.avi (the UCF-101/ folder of UCF101.rar).
    """
    path = _ann_file(cfg, split)
    names_file = _extra(cfg, "class_names")
    names, first = _read_classes(names_file)
    index = {name: i for i, name in enumerate(names)}
    root = cfg.video_root
    clips, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        folder, slash, _ = parts[0].partition("/")
        if len(parts) > 2 or not slash:
            raise AnnotationError(
                f"{path}:{n}: expected '<Class>/<video>.avi' (testlist) or '<Class>/<video>.avi <label>' "
                f"(trainlist), got {line.strip()!r}"
            )
        if folder not in index:
            raise AnnotationError(
                f"{path}:{n}: class {folder!r} is not in {names_file}: give the classInd.txt of "
                "the same ucfTrainTestlist as data.extra.class_names"
            )
        if len(parts) == 2:
            label = parts[1]
            if not label.isdigit() or not first <= int(label) < first + len(names):
                raise AnnotationError(
                    f"{path}:{n}: label {label!r} is not a class number of {names_file} "
                    f"({first}-{first + len(names) - 1})"
                )
            if int(label) - first != index[folder]:
                raise AnnotationError(
                    f"{path}:{n}: label {label} is {names[int(label) - first]!r} in {names_file}, but the "
                    f"video is in folder {folder!r} (number {index[folder] + first}): the list and "
                    "classInd.txt do not belong together"
                )
        clips.append(Clip(str(root / parts[0])))
        labels.append(index[folder])
    return Annotations(clips, labels=labels, class_names=names, source=str(path))


HMDB_FLAGS = {"train": "1", "val": "2", "test": "2"}  # HMDB-51 has no validation split


def hmdb51(cfg: DataConfig, split: str) -> Annotations:
    """HMDB-51's official splits (testTrainMulti_7030_splits/, any of splits 1-3).

    One file per class and split, <class>_test_split<k>.txt, lines "<video>.avi <flag>": 1 train,
    2 test, 0 unused. data.{train,val,test}_ann names any one file of split k; the 51 files of that
    split are read from its folder, classes numbered in sorted order of their names. Train takes
    flag 1, val and test flag 2. Videos: <data.root>/<class>/<video>.avi (hmdb51_org's class rars).
    """
    path = _ann_file(cfg, split)
    match = re.fullmatch(r".+_test_split(\d+)\.txt", path.name)
    if not match:
        raise AnnotationError(
            f"{path}: expected one of HMDB-51's split files, <class>_test_split<k>.txt "
            "(testTrainMulti_7030_splits/brush_hair_test_split1.txt for split 1)"
        )
    suffix = f"_test_split{match.group(1)}.txt"
    files = sorted(path.parent.glob(f"*{suffix}"))
    names = [f.name[: -len(suffix)] for f in files]
    every_split = {re.sub(r"_test_split\d+\.txt$", "", f.name) for f in path.parent.glob("*_test_split*.txt")}
    missing = sorted(every_split - set(names))
    if missing:
        raise AnnotationError(
            f"{path.parent}: no {missing[0]}{suffix} although {missing[0]} has files for other splits "
            f"({len(missing)} classes lack split {match.group(1)}): extract the complete split archive"
        )
    root = cfg.video_root
    clips, labels = [], []
    for label, (name, file) in enumerate(zip(names, files, strict=True)):
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(
                    f"{file}:{n}: expected '<video>.avi <flag>' with flag 0 (unused), 1 (train) or "
                    f"2 (test), got {line.strip()!r}"
                )
            if parts[1] == HMDB_FLAGS[split]:
                clips.append(Clip(str(root / name / parts[0])))
                labels.append(label)
    return Annotations(clips, labels=labels, class_names=names, source=str(path))


def kinetics_csv(cfg: DataConfig, split: str) -> Annotations:
    """Kinetics CSV label,youtube_id,time_start,time_end,split; files <youtube_id>_<start:06d>_<end:06d>.*"""
    path = _ann_file(cfg, split)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = _class_names(_extra(cfg, "class_names", required=False)) or sorted({r["label"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    finder = _Finder(cfg.video_root)
    clips, labels = [], []
    for r in rows:
        if r["label"] not in index:
            raise AnnotationError(f"{path}: label {r['label']!r} is not in the class names")
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        clips.append(Clip(finder(stem)))
        labels.append(index[r["label"]])
    return Annotations(clips, labels=labels, class_names=names, source=str(path))


def ssv2(cfg: DataConfig, split: str) -> Annotations:
    """labels.json {"template": "index"} (data.extra.labels) + [{"id", "template", ...}]; videos <id>.webm."""
    path = _ann_file(cfg, split)
    label_map = {name: int(i) for name, i in _load_json(_extra(cfg, "labels")).items()}
    names = [n for n, _ in sorted(label_map.items(), key=lambda kv: kv[1])]
    finder = _Finder(cfg.video_root)
    clips, labels = [], []
    for entry in _load_json(path):
        template = entry["template"].replace("[", "").replace("]", "")
        if template not in label_map:
            raise AnnotationError(
                f"{path}: template {entry['template']!r} of video {entry['id']} is not in labels.json"
            )
        clips.append(Clip(finder(f"{entry['id']}.webm")))
        labels.append(label_map[template])
    return Annotations(clips, labels=labels, class_names=names, source=str(path))


# ---- pretraining ---------------------------------------------------------------------------
def webvid(cfg: DataConfig, split: str) -> Annotations:
    """WebVid's CSV (videoid,contentUrl,duration,page_dir,name; videos <page_dir>/<videoid>.mp4
    under data.root as the official downloader saves them), a CSV path,caption, or JSON
    {"relative/path.mp4": "caption"}."""
    path = _ann_file(cfg, split)
    if path.suffix == ".csv":
        pairs = _webvid_csv(path)
    else:
        pairs = list(_load_json(path).items())
    root = cfg.video_root
    return Annotations(
        [Clip(str(root / p)) for p, _ in pairs], [c for _, c in pairs], list(range(len(pairs))), source=str(path)
    )


def _webvid_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if {"videoid", "page_dir", "name"} <= columns:
            fields, official = ("videoid", "page_dir", "name"), True
        elif {"path", "caption"} <= columns:
            fields, official = ("path", "caption"), False
        else:
            raise AnnotationError(
                f"{path}: expected WebVid's header videoid,contentUrl,duration,page_dir,name or the "
                f"columns path,caption, got {','.join(reader.fieldnames or ())}"
            )
        pairs = []
        for row in reader:
            empty = [k for k in fields if not (row.get(k) or "").strip()]
            if empty:
                raise AnnotationError(
                    f"{path}:{reader.line_num}: empty {', '.join(empty)}: fill it in or remove the row"
                )
            if official:
                pairs.append((f"{row['page_dir'].strip()}/{row['videoid'].strip()}.mp4", row["name"]))
            else:
                pairs.append((row["path"], row["caption"]))
    return pairs


def cc3m(cfg: DataConfig, split: str) -> Annotations:
    """TSV caption<TAB>path of images; an image is a one-frame video (its frame repeated T times)."""
    path = _ann_file(cfg, split)
    root = cfg.video_root
    clips, captions = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        caption, sep, rel = line.rpartition("\t")
        if not sep:
            raise AnnotationError(f"{path}:{n}: expected 'caption<TAB>path'")
        clips.append(Clip(str(root / rel.strip())))
        captions.append(caption)
    return Annotations(clips, captions, list(range(len(clips))), source=str(path))


def jsonl(cfg: DataConfig, split: str) -> Annotations:
    """Generic: one {"video", "caption": str | [str], "label": int | name, "start", "end"} per line.

    String labels are looked up in data.extra.class_names (one name per line) when given, else
    numbered in sorted order.
    """
    path = _ann_file(cfg, split)
    root = cfg.video_root if cfg.root else path.parent
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}:{n}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict) or "video" not in row:
            raise AnnotationError(f"{path}:{n}: each line needs a \"video\" field")
        rows.append(row)
    clips, captions, links, labels = [], [], [], []
    for j, row in enumerate(rows):
        clips.append(Clip(str(root / row["video"]), row.get("start"), row.get("end")))
        caps = row.get("caption", [])
        for c in [caps] if isinstance(caps, str) else caps:
            captions.append(c)
            links.append(j)
        labels.append(row.get("label"))
    names = _class_names(_extra(cfg, "class_names", required=False))
    has_labels = any(lab is not None for lab in labels)
    if has_labels:
        if any(lab is None for lab in labels):
            raise AnnotationError(f"{path}: some lines have a label and some do not")
        if any(isinstance(lab, str) for lab in labels):
            names = names or sorted({str(lab) for lab in labels})
            index = {n: i for i, n in enumerate(names)}
            missing = sorted({lab for lab in labels if lab not in index})
            if missing:
                raise AnnotationError(f"{path}: labels {missing[:5]} are not in the class names")
            labels = [index[lab] for lab in labels]
    return Annotations(clips, captions, links, labels if has_labels else None, names, str(path))


FORMATS: dict[str, Callable[[DataConfig, str], Annotations]] = {
    "msrvtt": msrvtt,
    "msrvtt_json": msrvtt_json,
    "didemo": didemo,
    "didemo_json": didemo_json,
    "lsmdc": lsmdc,
    "lsmdc_json": lsmdc_json,
    "msvd": msvd,
    "vatex": vatex,
    "activitynet": activitynet,
    "video_list": video_list,
    "ucf101": ucf101,
    "hmdb51": hmdb51,
    "kinetics_csv": kinetics_csv,
    "ssv2": ssv2,
    "webvid": webvid,
    "cc3m": cc3m,
    "jsonl": jsonl,
}
