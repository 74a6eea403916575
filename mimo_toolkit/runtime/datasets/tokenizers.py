"""Text tokenizers: a built-in byte-level one and a Hugging Face ``tokenizer.json`` from a local file.

The built-in tokenizer needs no download and fits any vocabulary of at least 259 ids (the
tiny presets have 320): ids 0-2 are the runtime's PAD, BOS and EOS, and byte ``b`` is id
``3 + b``. A ``tokenizer.json`` keeps its own ids. In a checkpoint directory
(``data.tokenizer=DIR``) the beginning-, end-of-sequence and padding tokens are the ones its
``tokenizer_config.json`` names; otherwise they are found by their usual names
(``<s>``/``</s>``, ``<|endoftext|>``, ...). The directory's chat template, if any, is
``chat.CheckpointTemplate``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...hf.tokenizer import TokenizerFiles
from .sample import BOS_ID, EOS_ID, PAD_ID

_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<unk>")


class ByteTokenizer:
    """UTF-8 bytes, shifted past the three special ids."""

    OFFSET = 3
    bos_id, eos_id, pad_id = BOS_ID, EOS_ID, PAD_ID
    vocab_size = OFFSET + 256

    def encode(self, text: str) -> list[int]:
        return [self.OFFSET + b for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")


@dataclass
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` loaded from a local ``tokenizer.json`` (no network access)."""

    path: str
    bos_id: int | None
    eos_id: int
    pad_id: int
    vocab_size: int
    _tok: object

    @classmethod
    def from_spec(cls, spec: str) -> "HFTokenizer":
        """A tokenizer.json file, or a checkpoint directory (special tokens from its config)."""
        if not Path(spec).is_dir():
            return cls.from_file(spec)
        files = TokenizerFiles.locate(spec)
        tok = cls.from_file(str(files.tokenizer_json), files.special_tokens())
        tok.path = spec
        return tok

    @classmethod
    def from_file(cls, path: str, special: dict[str, str] | None = None) -> "HFTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError("data.tokenizer: a tokenizer.json needs the 'tokenizers' package (pip install tokenizers)") from None
        if not Path(path).is_file():
            raise UserError(f"data.tokenizer={path}: no such file (use 'byte' or a path to a tokenizer.json)")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as exc:  # the library raises a bare Exception for malformed files
            raise UserError(f"data.tokenizer={path}: not a Hugging Face tokenizer.json ({exc})") from None
        special = special or {}
        named = {key: tok.token_to_id(special[key]) if key in special else None
                 for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
        eos = named["eos_token"] if named["eos_token"] is not None else _first_id(tok, _EOS_NAMES)
        if eos is None:
            raise UserError(f"data.tokenizer={path}: no end-of-sequence token (one of {', '.join(_EOS_NAMES)})")
        bos = named["bos_token"] if named["bos_token"] is not None else _first_id(tok, _BOS_NAMES)
        pad = next((named[k] for k in ("pad_token", "unk_token") if named[k] is not None), _first_id(tok, _PAD_NAMES))
        return cls(path, bos, eos, eos if pad is None else pad, tok.get_vocab_size(), tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


Tokenizer = ByteTokenizer | HFTokenizer


def _first_id(tok, names: tuple[str, ...]) -> int | None:
    for name in names:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def load_tokenizer(spec: str, model_vocab: int) -> Tokenizer:
    """``data.tokenizer`` -> a tokenizer whose ids all fit the language model's vocabulary."""
    tok: Tokenizer = ByteTokenizer() if spec == "byte" else HFTokenizer.from_spec(spec)
    if tok.vocab_size > model_vocab:
        raise UserError(
            f"data.tokenizer={spec} has {tok.vocab_size} ids but the language model's vocab_size is "
            f"{model_vocab}; raise model.<llm>.vocab_size or use a smaller tokenizer"
        )
    return tok
