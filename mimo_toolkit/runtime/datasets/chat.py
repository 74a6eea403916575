"""The chat template: a conversation -> token ids with placeholders, and which tokens are trained.

One template, simple enough to state in a line (Vicuna-style, without a system prompt)::

    <BOS>USER: {human} ASSISTANT: {gpt}<EOS>USER: {human} ASSISTANT: {gpt}<EOS>...

A media tag in a human turn (``<image>``, ``<audio>``) becomes as many placeholder ids as
the encoder returns embeddings for one item. The text pieces between tags, the role
prefixes and each answer are tokenized separately, so an answer's tokens are the same
whether it is trained on or generated after its prompt. Targets are the answer tokens and
the EOS closing each answer: the loss is on assistant turns only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    def _human(self, text: str) -> list[int]:
        ids = self.tok.encode(USER)
        pieces = self._split.split(text) if self._split else [text]
        for piece in pieces:
            if piece in self.placeholders:
                p = self.placeholders[piece]
                ids += [p.token_id] * p.count
            elif piece:
                ids += self.tok.encode(piece)
        return ids + self.tok.encode(ASSISTANT)

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
