"""Conversations -> token ids for a LLaVA language model, with the video's placeholder tokens.

Where the checkpoint has a chat template (the tokenizer's ``chat_template``, or the processor's
``chat_template.json`` / ``.jinja``) and ``model.chat.chat_template`` is true (the default), the
prompt is the template's: the conversation is rendered with ``apply_chat_template`` (the video as
the first user message's image, e.g. llava-hf's ``USER: <image>\n{question} ASSISTANT:``; a
system message when ``model.chat.system`` is set), turn by turn, so each question's text and each
answer's text are the exact differences between successive renderings, and multi-turn follows the
template. Otherwise (the fallback; ``model.chat`` ``system``, ``user``, ``assistant``, LLaVA-1.5's
defaults)::

    <s>{system}{user}<video>\n{question 1}{assistant} {answer 1}</s>{user}{question 2}{assistant} {answer 2}</s>...

``<video>`` stands for N = ``video_tokens(T)`` copies of LLaVA's image token id; the chat model puts
the projected video tokens at exactly those positions. Text is tokenised piece by piece (never the
placeholder as text), so a tokenizer without an ``<image>`` entry works too. Training labels are the
answer tokens and their end-of-sequence token (added after an answer when the template does not end
it with one); everything else is -100 (ignored by the loss).
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

    def __init__(
        self,
        tokenizer,
        image_token_id: int,
        video_tokens: Callable[[int], int],
        system: str = "",
        user: str = "USER: ",
        assistant: str = " ASSISTANT:",
        max_length: int = 1024,
        use_template: bool = True,
    ):
        if tokenizer.eos_token_id is None:
            raise MismatchError(
                "the LLaVA tokenizer has no eos_token: answers could not end (check tokenizer_config.json)"
            )
        self.tokenizer, self.image_token_id, self.video_tokens = tokenizer, image_token_id, video_tokens
        self.system, self.user, self.assistant, self.max_length = system, user, assistant, max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.template = use_template and isinstance(tokenizer.chat_template, str)
        self.image_text = tokenizer.convert_ids_to_tokens(image_token_id) or "<image>"
        self.structured = self.template and self._renders_structured()

    # ---- the checkpoint's chat template ---------------------------------------------------------
    def _renders_structured(self) -> bool:
        """Whether the template takes content lists ([{"type": "image"}, {"type": "text", ...}], LLaVA's processor
        templates) rather than strings (then the image placeholder is written before the first question)."""
        probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "QUESTION"}]}]
        try:
            text = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except Exception:  # a string-only template may index or concatenate the content  # noqa: BLE001
            return False
        return text.count(self.image_text) == 1 and "QUESTION" in text and "'type'" not in text

    def _message(self, role: str, text: str, image: bool = False) -> dict:
        if self.structured:
            return {"role": role, "content": [*([{"type": "image"}] if image else []), {"type": "text", "text": text}]}
        return {"role": role, "content": f"{self.image_text}\n{text}" if image else text}

    def _render(self, messages: list, generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def _template_texts(self, turns: Sequence[tuple[str, Optional[str]]]) -> list[tuple[str, bool]]:
        """[(text, is_answer)]: the rendered conversation cut where each answer starts and ends."""
        messages = [self._message("system", self.system)] if self.system else []
        done, out = "", []
        for i, (question, answer) in enumerate(turns):
            messages.append(self._message("user", question, image=i == 0))
            prompt = self._render(messages, True)
            if not prompt.startswith(done):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation turn by turn (an earlier turn "
                    "changes when one is added); set model.chat.chat_template=false to use model.chat.user/assistant"
                )
            out.append((prompt[len(done) :], False))
            if answer is None:
                break
            messages.append(self._message("assistant", answer))
            done = self._render(messages, False)
            if not done.startswith(prompt):
                raise ValueError(
                    "the tokenizer's chat template renders an answered turn differently from its generation "
                    "prompt; set model.chat.chat_template=false to use model.chat.user/assistant"
                )
            out.append((done[len(prompt) :], True))
        return out

    def _template_pieces(self, turns, num_frames: int, train: bool) -> list[tuple[list[int], bool]]:
        texts = self._template_texts(turns)
        first = texts[0][0]
        if first.count(self.image_text) != 1:
            raise ValueError(
                f"the tokenizer's chat template put {first.count(self.image_text)} image placeholders "
                f"({self.image_text!r}) in the first question; set model.chat.chat_template=false"
            )
        before, after = first.split(self.image_text)
        bos = self.tokenizer.bos_token
        head = (
            [self.tokenizer.bos_token_id] if bos and not before.startswith(bos) else []
        )  # as the processor's tokenizer call adds it
        out = [
            (head + self._text(before), False),
            ([self.image_token_id] * self.video_tokens(num_frames), False),
            (self._text(after), False),
        ]
        eos = self.tokenizer.eos_token_id
        for text, is_answer in texts[1:]:
            ids = self._text(text)
            if is_answer and train and eos not in ids:  # the model must learn to stop
                ids = ids + [eos]
            out.append((ids, is_answer))
        return out

    def _text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def pieces(
        self, turns: Sequence[tuple[str, Optional[str]]], num_frames: int, train: bool = False
    ) -> list[tuple[list[int], bool]]:
        """[(ids, is_answer)] of a conversation about a ``num_frames``-frame video; the last answer may be
        None (a prompt to answer). ``train``: a training item (every answer ends with the eos token)."""
        if not turns:
            raise AnnotationError("a conversation needs at least one question")
        if any(answer is None for _, answer in turns[:-1]):
            raise AnnotationError("only the last turn of a conversation may be unanswered")
        if self.template:
            return self._template_pieces(turns, num_frames, train)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        out = [
            (bos + self._text(self.system + self.user), False),
            ([self.image_token_id] * self.video_tokens(num_frames), False),
        ]
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
        for piece, is_answer in self.pieces(turns, num_frames, train=True):
            ids += piece
            labels += piece if is_answer else [IGNORE] * len(piece)
        if len(ids) > self.max_length:
            if sum(label != IGNORE for label in labels[: self.max_length]) == 0:
                raise ConfigError(
                    f"the prompt alone takes more than model.chat.max_length={self.max_length} tokens "
                    f"({self.video_tokens(num_frames)} of them the video's): raise model.chat.max_length"
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        n = len(ids)
        pad = self.max_length - n
        return {
            "input_ids": torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long),
            "attention_mask": torch.tensor([True] * n + [False] * pad),
            "labels": torch.tensor(labels + [IGNORE] * pad, dtype=torch.long),
        }
