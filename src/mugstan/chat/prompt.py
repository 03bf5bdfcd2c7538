"""Conversations -> token ids for a LLaVA language model, with the video's placeholder tokens.

The prompt (``model.chat``; the defaults are LLaVA-1.5's)::

    <s>{system}{user}<video>\\n{question 1}{assistant} {answer 1}</s>{user}{question 2}{assistant} {answer 2}</s>...

``<video>`` stands for N = ``video_tokens(T)`` copies of LLaVA's image token id; the chat model puts
the projected video tokens at exactly those positions. Text is tokenised piece by piece (never the
placeholder as text), so a tokenizer without an ``<image>`` entry works too. Training labels are the
answer tokens and their end-of-sequence token; everything else is -100 (ignored by the loss).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from mugstan.config import ConfigError
from mugstan.errors import AnnotationError, MismatchError

IGNORE = -100


class ChatPrompt:
    """Builds token ids from (question, answer) turns.

    tokenizer: a HF tokenizer (``AutoTokenizer`` of the LLaVA checkpoint); image_token_id: LLaVA's
    image token; video_tokens: T frames -> how many of them a video takes; max_length: training
    items are cut to this many tokens and padded to it (the model trims the padding per batch).
    """

    def __init__(self, tokenizer, image_token_id: int, video_tokens: Callable[[int], int], system: str = "",
                 user: str = "USER: ", assistant: str = " ASSISTANT:", max_length: int = 1024):
        if tokenizer.eos_token_id is None:
            raise MismatchError("the LLaVA tokenizer has no eos_token: answers could not end (check tokenizer_config.json)")
        self.tokenizer, self.image_token_id, self.video_tokens = tokenizer, image_token_id, video_tokens
        self.system, self.user, self.assistant, self.max_length = system, user, assistant, max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def pieces(self, turns: Sequence[tuple[str, Optional[str]]], num_frames: int) -> list[tuple[list[int], bool]]:
        """[(ids, is_answer)] of a conversation about a ``num_frames``-frame video; the last answer may be
        None (a prompt to answer)."""
        if not turns:
            raise AnnotationError("a conversation needs at least one question")
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        out = [(bos + self._text(self.system + self.user), False), ([self.image_token_id] * self.video_tokens(num_frames), False)]
        for i, (question, answer) in enumerate(turns):
            head = ("\n" if i == 0 else self.user) + question + self.assistant
            out.append((self._text(head), False))
            if answer is None:
                if i != len(turns) - 1:
                    raise AnnotationError("only the last turn of a conversation may be unanswered")
                break
            out.append((self._text(" " + answer) + [self.tokenizer.eos_token_id], True))
        return out

    def prompt_ids(self, turns: Sequence[tuple[str, Optional[str]]], num_frames: int) -> list[int]:
        """Token ids to generate the answer of the last turn from (its answer is None)."""
        if turns[-1][1] is not None:
            turns = [*turns[:-1], (turns[-1][0], None)]
        return [i for ids, _ in self.pieces(turns, num_frames) for i in ids]

    def __call__(self, turns: Sequence[tuple[str, str]], num_frames: int) -> dict:
        """A training item: {"input_ids", "attention_mask", "labels"}, each [max_length] (padded right)."""
        ids, labels = [], []
        for piece, is_answer in self.pieces(turns, num_frames):
            ids += piece
            labels += piece if is_answer else [IGNORE] * len(piece)
        if len(ids) > self.max_length:
            if sum(label != IGNORE for label in labels[: self.max_length]) == 0:
                raise ConfigError(f"the prompt alone takes more than model.chat.max_length={self.max_length} tokens "
                                  f"({self.video_tokens(num_frames)} of them the video's): raise model.chat.max_length")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        n = len(ids)
        pad = self.max_length - n
        return {
            "input_ids": torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long),
            "attention_mask": torch.tensor([True] * n + [False] * pad),
            "labels": torch.tensor(labels + [IGNORE] * pad, dtype=torch.long),
        }
