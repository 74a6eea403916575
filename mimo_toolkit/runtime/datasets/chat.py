"""The chat template: a conversation -> token ids with placeholders, and which tokens are trained.

The built-in template, simple enough to state in a line (Vicuna-style, without a system
prompt)::

    <BOS>USER: {human} ASSISTANT: {gpt}<EOS>USER: {human} ASSISTANT: {gpt}<EOS>...

With ``data.tokenizer=DIR`` and a chat template in that checkpoint,
:class:`CheckpointTemplate` renders the checkpoint's own jinja2 template instead (sandboxed,
``mimo_toolkit.hf.tokenizer``), and finds each assistant turn's text by rendering growing
prefixes of the conversation: the text a turn adds after the generation prompt is the answer.

A media tag in a human turn (``<image>``, ``<audio>``) becomes as many placeholder ids as
the encoder returns embeddings for one item. The text pieces between tags, the role
prefixes and each answer are tokenized separately, so an answer's tokens are the same
whether it is trained on or generated after its prompt. Targets are the answer tokens and
the EOS closing each answer: the loss is on assistant turns only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...hf.tokenizer import ChatTemplate, TokenizerFiles
from .tokenizers import Tokenizer

USER, ASSISTANT = "USER: ", " ASSISTANT: "


@dataclass(frozen=True)
class Placeholder:
    """How one media tag is written in the text and expanded in the token ids."""

    tag: str
    token_id: int
    count: int


@dataclass
class Encoded:
    ids: list[int]
    target: list[bool]
    """``target[i]``: token ``i`` is part of an answer (predicting it is trained)."""


class Template:
    def __init__(self, tokenizer: Tokenizer, placeholders: list[Placeholder]) -> None:
        self.tok = tokenizer
        self.placeholders = {p.tag: p for p in placeholders}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in self.placeholders) + ")") if placeholders else None

    def _text_with_media(self, text: str) -> list[int]:
        """Text with each media tag expanded to its placeholder ids (pieces tokenized apart)."""
        ids: list[int] = []
        for piece in self._split.split(text) if self._split else [text]:
            if piece in self.placeholders:
                ids += [self.placeholders[piece].token_id] * self.placeholders[piece].count
            elif piece:
                ids += self.tok.encode(piece)
        return ids

    def _human(self, text: str) -> list[int]:
        return self.tok.encode(USER) + self._text_with_media(text) + self.tok.encode(ASSISTANT)

    def encode(self, turns: list[tuple[str, str]]) -> Encoded:
        """``turns``: (human, gpt) pairs -> the whole conversation."""
        out = Encoded([self.tok.bos_id] if self.tok.bos_id is not None else [], [])
        out.target = [False] * len(out.ids)
        for human, gpt in turns:
            prompt = self._human(human)
            answer = self.tok.encode(gpt) + [self.tok.eos_id]
            out.ids += prompt + answer
            out.target += [False] * len(prompt) + [True] * len(answer)
        return out

    def prompt(self, history: list[tuple[str, str]], human: str) -> list[int]:
        """Token ids a model continues with its answer to ``human`` after ``history``."""
        return self.encode(history).ids + self._human(human)


class CheckpointTemplate(Template):
    """A Hugging Face chat template: the conversation as the checkpoint renders it; the loss on
    what each assistant turn adds (its text and end-of-turn marker), plus EOS where the
    template writes none (so the model learns to stop)."""

    def __init__(self, tokenizer: Tokenizer, placeholders: list[Placeholder], chat: ChatTemplate) -> None:
        super().__init__(tokenizer, placeholders)
        self.chat = chat

    def _segments(self, turns: list[tuple[str, str | None]]) -> list[tuple[str, bool]]:
        """(text, is an answer) pieces of the rendered conversation, in order."""
        messages = self.chat.messages(turns)
        out, done = [], ""
        for k, (_, answer) in enumerate(turns):
            prompt = self.chat.render(messages[: 2 * k + 1], add_generation_prompt=True)
            out.append((self._added(done, prompt), False))
            done = prompt
            if answer is None:
                break
            full = self.chat.render(messages[: 2 * k + 2], add_generation_prompt=False)
            out.append((self._added(done, full), True))
            done = full
        return out

    def _added(self, before: str, after: str) -> str:
        if not after.startswith(before):
            raise UserError(
                f"{self.chat.where}: the chat template is not prefix-consistent (a conversation's rendering "
                f"does not start with the rendering of its first turns), so assistant turns cannot be found"
            )
        return after[len(before):]

    def _ids(self, turns: list[tuple[str, str | None]]) -> Encoded:
        out = Encoded([], [])
        eos_text = self.chat.special.get("eos_token")
        for text, is_answer in self._segments(turns):
            if is_answer:
                ids = self.tok.encode(text)
                if not eos_text or eos_text not in text:
                    ids.append(self.tok.eos_id)
            else:
                ids = self._text_with_media(text)
            out.ids += ids
            out.target += [is_answer] * len(ids)
        bos_text = self.chat.special.get("bos_token")
        if self.tok.bos_id is not None and not (bos_text and out.ids[:1] == [self.tok.bos_id]):
            out.ids.insert(0, self.tok.bos_id)
            out.target.insert(0, False)
        return out

    def encode(self, turns: list[tuple[str, str]]) -> Encoded:
        return self._ids(turns)

    def prompt(self, history: list[tuple[str, str]], human: str) -> list[int]:
        return self._ids([*history, (human, None)]).ids


def make_template(tokenizer: Tokenizer, placeholders: list[Placeholder], spec: str) -> Template:
    """The checkpoint's chat template when ``data.tokenizer`` is a directory that has one, else the built-in."""
    if spec != "byte" and Path(spec).is_dir():
        chat = TokenizerFiles.locate(spec).template
        if chat is not None:
            return CheckpointTemplate(tokenizer, placeholders, chat)
    return Template(tokenizer, placeholders)
