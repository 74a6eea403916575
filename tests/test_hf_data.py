"""Tokenizer, chat template and preprocessing taken from a checkpoint, against transformers.

* a checkpoint directory's chat template renders exactly as transformers renders it (the
  tokenizer's string-content convention and a processor's structured one, LLaVA-style);
  the loss is on assistant turns only; the prompt for generation ends with the template's
  generation prompt;
* images follow the checkpoint's ``preprocessor_config.json`` as ``CLIPImageProcessor`` does (1e-6);
* audio features follow ``WhisperFeatureExtractor`` (1e-5).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mimo_toolkit.hf.preprocessing import AudioPreprocessing, ImagePreprocessing
from mimo_toolkit.hf.tokenizer import TokenizerFiles
from mimo_toolkit.runtime.datasets.chat import CheckpointTemplate, Placeholder, Template, make_template
from mimo_toolkit.runtime.datasets.media import load_image, log_mel
from mimo_toolkit.runtime.datasets.tokenizers import load_tokenizer

WORDS = "what is the color shape of it a red blue square circle top left USER ASSISTANT : , . ? system be nice".split()
VICUNA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
          "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
#: llava-hf's processor template (structured content, images first, {% generation %} tags), reduced
LLAVA = ("{% for message in messages %}{{ message['role'].upper() + ': ' }}"
         "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
         "{% if message['role'] != 'assistant' %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
         "{{ c['text'] + ' ' }}{% endfor %}{% else %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
         "{% generation %}{{ c['text'] + ' ' }}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
TURNS = [("<image>\nWhat is the color of it?", "red."), ("And the shape?", "a square.")]


def write_checkpoint_tokenizer(path, template: str | None = None, processor_template: str | None = None):
    """A WordLevel tokenizer (built here with the tokenizers library) with <s>, </s>, <unk>, <image>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<image>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.add_special_tokens(["<s>", "</s>", "<image>"])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast"}
    if template:
        config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if processor_template:
        (path / "chat_template.jinja").write_text(processor_template)
    return path


def hf_render(path, messages, generation: bool) -> str:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(path)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def test_tokenizer_template_renders_like_transformers_and_trains_answers_only(tmp_path):
    path = write_checkpoint_tokenizer(tmp_path / "tok", VICUNA)
    tok = load_tokenizer(str(path), 64)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    template = make_template(tok, [Placeholder("<image>", -200, 3)], str(path))
    assert isinstance(template, CheckpointTemplate)
    messages = [{"role": r, "content": c} for h, g in TURNS for r, c in (("user", h), ("assistant", g))]
    chat = TokenizerFiles.locate(str(path)).template
    assert chat.render(messages, False) == hf_render(path, messages, False)
    assert chat.render(messages[:3], True) == hf_render(path, messages[:3], True)
    encoded = template.encode(TURNS)
    assert encoded.ids.count(-200) == 3 and encoded.ids[0] == tok.bos_id  # the template's own <s>, once
    answers = [tok.decode([i]) for i, t in zip(encoded.ids, encoded.target) if t]
    assert " ".join(a for a in answers if a) == "red . a square ."  # answers and their </s>, nothing else
    assert [i for i, t in zip(encoded.ids, encoded.target) if t].count(tok.eos_id) == 2
    prompt = template.prompt(TURNS[:1], TURNS[1][0])
    assert tok.decode(prompt[-2:]) == "ASSISTANT :" and prompt == encoded.ids[: len(prompt)]


def test_processor_template_gets_structured_content_and_eos_is_added(tmp_path):
    path = write_checkpoint_tokenizer(tmp_path / "tok", VICUNA, processor_template=LLAVA)
    chat = TokenizerFiles.locate(str(path)).template
    assert chat.structured  # the processor's template wins over the tokenizer's
    messages = chat.messages(TURNS)
    assert messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is the color of it?"}]
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=LLAVA, add_generation_prompt=False)
    assert chat.render(messages, False) == rendered[0] == (
        "USER: <image>\nWhat is the color of it? ASSISTANT: red. USER: And the shape? ASSISTANT: a square. ")
    tok = load_tokenizer(str(path), 64)
    template = make_template(tok, [Placeholder("<image>", -200, 2)], str(path))
    encoded = template.encode(TURNS)
    trained = [i for i, t in zip(encoded.ids, encoded.target) if t]
    assert trained.count(tok.eos_id) == 2 and encoded.ids[0] == tok.bos_id  # no </s> in the template: added


def test_builtin_template_unchanged_without_a_chat_template(tmp_path):
    path = write_checkpoint_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(str(path), 64)
    template = make_template(tok, [], str(path))
    assert type(template) is Template


def test_images_follow_preprocessor_config_like_clip_image_processor(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessor

    config = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
              "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.25], "resample": 3, "do_resize": True,
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (57, 83, 3), generator=gen, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "img.png")
    pre = ImagePreprocessing.from_config(config, "test")
    ours = load_image(str(tmp_path / "img.png"), pre)
    ref = CLIPImageProcessor(**config)(images=Image.open(tmp_path / "img.png"), return_tensors="pt")["pixel_values"][0]
    assert ours.shape == ref.shape == (3, 32, 32)
    assert (ours - ref).abs().max().item() <= 1e-6  # measured: 2.4e-7
    assert ImagePreprocessing.from_config(pre.to_config(), "round trip") == pre


@pytest.mark.parametrize("seconds", [0.3, 1.5])
def test_audio_features_match_whisper_feature_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    pre = AudioPreprocessing(sample_rate=16000, n_fft=400, hop=160, mel_bins=16, frames=100)
    extractor = WhisperFeatureExtractor(**{k: v for k, v in pre.to_config().items() if k != "feature_extractor_type"})
    t = torch.arange(int(16000 * seconds)) / 16000
    wav = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    ref = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")["input_features"][0]
    ours = log_mel(wav, pre.sample_rate, pre.mel_bins, pre.frames, pre.n_fft, pre.hop)
    assert ours.shape == ref.shape == (16, 100)
    assert (ours - ref).abs().max().item() <= 1e-5, (ours - ref).abs().max().item()  # measured: 0
