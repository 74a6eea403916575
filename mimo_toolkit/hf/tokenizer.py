"""A checkpoint's tokenizer files and chat template, read without transformers.

``data.tokenizer`` is ``byte`` (built in), a ``tokenizer.json`` file, or a checkpoint
directory holding ``tokenizer.json`` + ``tokenizer_config.json`` (special tokens, and the
chat template) and possibly ``chat_template.jinja`` / ``chat_template.json`` (where
transformers saves a processor's template). Chat templates are code from the internet:
they are rendered in jinja2's immutable sandbox, with the helpers Hugging Face templates
use (``raise_exception``, ``tojson``, ``strftime_now``, the ``{% generation %}`` tag).

Two calling conventions exist, and the file a template comes from says which: a
tokenizer's template gets ``content`` as a string; a processor's template
(``chat_template.jinja``/``.json``, ``processor_config.json``) gets a list of parts,
``{"type": "image"}`` / ``{"type": "text", "text": ...}``, as ``processor.apply_chat_template`` passes them.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: processor templates, where transformers 4.4x/5.x save them
PROCESSOR_TEMPLATES = ("chat_template.jinja", "chat_template.json", "processor_config.json")
MEDIA_TAGS = {"<image>": "image", "<audio>": "audio"}
#: a conversation every template must render (the render-time check)
PROBE = [("<image>\nWhat is shown?", "A red square."), ("And its position?", "Top left.")]


@dataclass
class TokenizerFiles:
    """The tokenizer files ``data.tokenizer`` names."""

    tokenizer_json: Path
    config: dict = field(default_factory=dict)
    """tokenizer_config.json ({} without one)."""
    template: "ChatTemplate | None" = None

    @classmethod
    def locate(cls, spec: str) -> "TokenizerFiles":
        path = Path(spec)
        if path.is_file():
            return cls(path)
        if not path.is_dir():
            raise UserError(f"data.tokenizer={spec}: no such file or directory (use 'byte', a tokenizer.json or a checkpoint directory)")
        if not (path / TOKENIZER_JSON).is_file():
            raise UserError(f"data.tokenizer={spec}: no {TOKENIZER_JSON} in the directory")
        config = _json(path / TOKENIZER_CONFIG) if (path / TOKENIZER_CONFIG).is_file() else {}
        files = cls(path / TOKENIZER_JSON, config)
        files.template = ChatTemplate.find(path, config, files.special_tokens())
        return files

    def vocab_size(self) -> int | None:
        """1 + the largest id of tokenizer.json (its model's vocabulary and added tokens); None
        for a file that is no tokenizer.json (``validation.files`` names that problem)."""
        data = _json(self.tokenizer_json)
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return None
        vocab = data["model"].get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
        ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and "id" in t]
        if not ids:
            raise UserError(f"{self.tokenizer_json}: no vocabulary")
        return 1 + max(ids)

    def special_tokens(self) -> dict[str, str]:
        """``bos_token``, ``eos_token``, ... as strings (tokenizer_config.json writes some as objects)."""
        out = {}
        for key, value in self.config.items():
            if key.endswith("_token"):
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    out[key] = value
        return out


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a Hugging Face tokenizer file ({exc})") from None


class ChatTemplate:
    """A Hugging Face chat template, compiled in jinja2's immutable sandbox."""

    def __init__(self, source: str, where: str, special: dict[str, str], structured: bool) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.where = where
        self.special = special
        self.structured = structured
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_generation_extension(), "jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise UserError(f"{where}: the chat template does not compile ({exc})") from None

    @classmethod
    def find(cls, directory: Path, config: dict, special: dict[str, str]) -> "ChatTemplate | None":
        """The directory's template: a processor's first (it knows about images), else the tokenizer's."""
        for name in PROCESSOR_TEMPLATES:
            path = directory / name
            if not path.is_file():
                continue
            if name.endswith(".jinja"):
                return cls(path.read_text(encoding="utf-8"), str(path), special, structured=True)
            text = _json(path).get("chat_template")
            if isinstance(text, str):
                return cls(text, str(path), special, structured=True)
        text = config.get("chat_template")
        if isinstance(text, list):  # named templates: take "default"
            text = next((t.get("template") for t in text if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(text, str):
            return cls(text, str(directory / TOKENIZER_CONFIG), special, structured=False)
        return None

    def messages(self, turns: list[tuple[str, str]]) -> list[dict]:
        """(human, gpt) pairs -> the messages this template's convention expects."""
        out = []
        for human, gpt in turns:
            out.append({"role": "user", "content": self._content(human)})
            if gpt is not None:
                out.append({"role": "assistant", "content": self._content(gpt)})
        return out

    def _content(self, text: str):
        if not self.structured:
            return text
        parts: list[dict] = []
        for piece in re.split("(" + "|".join(map(re.escape, MEDIA_TAGS)) + r")\n?", text):
            if piece in MEDIA_TAGS:
                parts.append({"type": MEDIA_TAGS[piece]})
            elif piece.strip():
                parts.append({"type": "text", "text": piece})
        return parts

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        import jinja2

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
        except jinja2.TemplateError as exc:
            raise UserError(f"{self.where}: the chat template raised: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any error in third-party template code is the template's
            raise UserError(f"{self.where}: the chat template failed: {type(exc).__name__}: {exc}") from None


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    import jinja2

    raise jinja2.TemplateError(message)


def _generation_extension():
    """``{% generation %}...{% endgeneration %}`` (marks assistant text in HF templates): renders its body."""
    import jinja2.ext
    import jinja2.nodes

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


def check_tokenizer(job) -> None:
    """Render-time checks of ``data.tokenizer``: vocabulary fits the LLM; the template renders."""
    spec = job.data.tokenizer
    if spec == "byte" or not Path(spec).exists():
        return  # existence is checked where the job reads it (validation.files)
    files = TokenizerFiles.locate(spec)
    vocab, lm = files.vocab_size(), job.model.get(job.layout.language_module)
    if lm is not None and vocab is not None and vocab > lm.vocab_size:
        raise UserError(
            f"data.tokenizer={spec}: {files.tokenizer_json.name} has {vocab} ids but the language model's "
            f"vocab_size is {lm.vocab_size}"
        )
    if files.template is not None:
        turns = [(h, g) for h, g in PROBE]
        files.template.render(files.template.messages(turns), add_generation_prompt=False)
        files.template.render(files.template.messages(turns[:1])[:1], add_generation_prompt=True)
