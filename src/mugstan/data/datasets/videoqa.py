"""Video question answering and video instruction data: the formats of video chat (``model.task: chat``).

Each adapter returns ``Annotations`` whose ``clips`` are the distinct videos (each decoded once in
evaluation) and whose ``conversations`` are ``Conversation(clip, turns, id, video)`` items: the
(question, answer) turns about ``clips[clip]``. ``data.dataset`` names the format:

- ``videochatgpt``: Video-ChatGPT's instruction data (VideoInstruct-100K), a JSON list (or JSONL) of
  ``{"video_id", "q", "a"}``, or of the LLaVA-style form its scripts convert that into,
  ``{"video" | "id", "conversations": [{"from": "human", "value": "<video>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}``
  (the ``<video>`` / ``<image>`` placeholders are dropped: the prompt puts the video first);
- ``msvd_qa``, ``msrvtt_qa``: the ``{train,val,test}_qa.json`` lists of Xu et al. 2017,
  ``{"video_id", "question", "answer", "id"}``; MSR-VTT ids n are ``video{n}``, MSVD ids n are
  ``vid{n}``, mapped to YouTube clip names by ``data.extra.youtube_mapping`` (``youtube_mapping.txt``,
  lines ``NAME vid{n}``) when given;
- ``activitynet_qa``: ``{train,val,test}_q.json`` (``{"video_name", "question", "question_id"}``, the
  annotation file) and ``{train,val,test}_a.json`` (``{"question_id", "answer"}``, ``data.extra.answers``);
  videos are ``v_{video_name}`` or ``{video_name}`` under ``data.root``.

Videos are found under ``data.root`` by name, else by file stem (any common container).
``ConversationDataset`` gives training items: the clip's frames and the conversation's tokens (the
chat model's ``tokenizer``: input_ids, attention_mask, labels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mugstan.config import DataConfig
from mugstan.data.datasets.base import Annotations, Clip, _Base
from mugstan.data.datasets.formats import _ann_file, _extra, _Finder
from mugstan.errors import AnnotationError


@dataclass
class Conversation:
    """(question, answer) turns about ``Annotations.clips[clip]``; id: the question id of QA files; video: its name."""

    clip: int
    turns: list[tuple[str, str]]
    id: str
    video: str


def _read_list(path: Path, key: str = "") -> list:
    """A JSON list, a JSON object's ``key`` list, or JSONL lines."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AnnotationError(f"{path}:{n}: neither a JSON list nor JSON lines ({err.msg})") from None
    if isinstance(data, dict) and key in data:
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise AnnotationError(f"{path}: expected a JSON list of objects")
    return data


def _field(row: dict, names: tuple[str, ...], path: Path, n: int):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise AnnotationError(f"{path}: entry {n} has no {' / '.join(repr(x) for x in names)} field")


def _collect(
    rows: list[tuple[str, list[tuple[str, str]], str]], finder: Callable[[str], str], source: str
) -> Annotations:
    """[(video name, turns, id)] -> Annotations with one clip per distinct video file, in first-seen order."""
    if not rows:
        raise AnnotationError(f"{source}: no questions in this file")
    index: dict[str, int] = {}
    clips, conversations = [], []
    for video, turns, qid in rows:
        path = finder(video)
        if path not in index:
            index[path] = len(clips)
            clips.append(Clip(path))
        conversations.append(Conversation(index[path], turns, str(qid), video))
    return Annotations(clips, source=source, conversations=conversations)


def _strip_placeholders(text: str) -> str:
    for tag in ("<video>", "<image>"):
        text = text.replace(tag, "")
    return text.strip()


def videochatgpt(cfg: DataConfig, split: str) -> Annotations:
    path = _ann_file(cfg, split)
    rows = []
    for n, row in enumerate(_read_list(path)):
        video = str(_field(row, ("video_id", "video", "id"), path, n))
        if "conversations" in row:
            messages = row["conversations"]
            if len(messages) < 2 or len(messages) % 2:
                raise AnnotationError(f"{path}: entry {n} needs human/gpt message pairs in \"conversations\"")
            turns = []
            for q, a in zip(messages[::2], messages[1::2], strict=True):
                if q.get("from") != "human" or a.get("from") != "gpt":
                    raise AnnotationError(f"{path}: entry {n}: messages must alternate from \"human\" and \"gpt\"")
                turns.append((_strip_placeholders(q["value"]), a["value"].strip()))
        else:
            turns = [
                (
                    _strip_placeholders(str(_field(row, ("q", "question"), path, n))),
                    str(_field(row, ("a", "answer"), path, n)).strip(),
                )
            ]
        rows.append((video, turns, row.get("id", n)))
    return _collect(rows, _Finder(cfg.root), str(path))


def _xu_qa(cfg: DataConfig, split: str, name_of: Callable[[object], str]) -> Annotations:
    path = _ann_file(cfg, split)
    rows = []
    for n, row in enumerate(_read_list(path)):
        video = name_of(_field(row, ("video_id", "video"), path, n))
        turns = [(str(_field(row, ("question",), path, n)), str(_field(row, ("answer",), path, n)))]
        rows.append((video, turns, row.get("id", n)))
    return _collect(rows, _Finder(cfg.root), str(path))


def msrvtt_qa(cfg: DataConfig, split: str) -> Annotations:
    return _xu_qa(cfg, split, lambda v: f"video{v}" if isinstance(v, int) or str(v).isdigit() else str(v))


def msvd_qa(cfg: DataConfig, split: str) -> Annotations:
    mapping_file = _extra(cfg, "youtube_mapping", required=False)
    mapping = {}
    if mapping_file:
        for n, line in enumerate(mapping_file.read_text().splitlines(), 1):
            parts = line.split()
            if len(parts) == 2:
                mapping[parts[1]] = parts[0]
            elif parts:
                raise AnnotationError(f"{mapping_file}:{n}: expected 'YOUTUBE_NAME vidN'")

    def name_of(v) -> str:
        vid = f"vid{v}" if isinstance(v, int) or str(v).isdigit() else str(v)
        return mapping.get(vid, vid)

    return _xu_qa(cfg, split, name_of)


def activitynet_qa(cfg: DataConfig, split: str) -> Annotations:
    path = _ann_file(cfg, split)
    answers_file = _extra(cfg, "answers")
    answers = {
        str(_field(a, ("question_id",), answers_file, n)): str(_field(a, ("answer",), answers_file, n))
        for n, a in enumerate(_read_list(answers_file))
    }
    finder = _Finder(cfg.root)
    rows = []
    for n, row in enumerate(_read_list(path)):
        qid = str(_field(row, ("question_id",), path, n))
        if qid not in answers:
            raise AnnotationError(f"{path}: question {qid} has no answer in {answers_file} (data.extra.answers)")
        name = str(_field(row, ("video_name", "video"), path, n))
        rows.append((name, [(str(_field(row, ("question",), path, n)), answers[qid])], qid))

    def find(name: str) -> str:
        prefixed = finder("v_" + name) if not name.startswith("v_") else finder(name)
        return prefixed if Path(prefixed).is_file() else finder(name)

    return _collect(rows, find, str(path))


QA_FORMATS: dict[str, Callable[[DataConfig, str], Annotations]] = {
    "videochatgpt": videochatgpt,
    "msvd_qa": msvd_qa,
    "msrvtt_qa": msrvtt_qa,
    "activitynet_qa": activitynet_qa,
}


class ConversationDataset(_Base):
    """One item per conversation: its clip's frames and ``tokenizer(turns, num_frames)`` (the chat model's prompt
    builder)."""

    def __len__(self) -> int:
        return len(self.ann.conversations)

    def get(self, index: int) -> dict:
        conv = self.ann.conversations[index]
        item = self._frames(conv.clip, index)
        item.update(self.tokenizer(conv.turns, item["frames"].shape[-4]))
        return item


def first_turns(ann: Annotations) -> dict[int, list[Conversation]]:
    """Evaluation: clip index -> its conversations (the first turn of each is asked)."""
    out: dict[int, list[Conversation]] = {}
    for conv in ann.conversations:
        out.setdefault(conv.clip, []).append(conv)
    return out
