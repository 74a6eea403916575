"""``train.steps=0`` conversion and ``mimo-toolkit export``, checked with transformers.

* a tiny LLaVA imported at LLM TP2 / vision DP2 trains its projector for two steps on
  LLaVA-style data and is exported: the frozen vision tower and LLM are bit-identical to the
  input (names, dtypes, values: the unused last CLIP layer and post_layernorm included), and
  transformers' greedy ``generate`` on the exported directory answers the validation
  questions exactly as ``mimo-toolkit eval`` does;
* ``train.steps=0`` converts a multi-encoder job (CLIP + Whisper + Llama checkpoints) into a
  step-0 checkpoint, which exports one directory per module, each loading in transformers
  with exactly the input's weights; the tokenizer files and preprocessing travel along.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_support import run_job
from hf_files import write_tokenizer
from hf_support import hf_input_ids, make_clip, make_llama, make_llava, make_whisper
from test_eval import data_sets, evaluate, make_shapes

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "mimo-toolkit")


def mimo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=600)


def llava_sets(ckpt: Path) -> list[str]:
    return [f"model.vision.pretrained={ckpt}", f"model.llm.pretrained={ckpt}", "model.vision.num_layers=3"]


def questions(job, data_file: Path, limit: int):
    """(prompt ids, pixel values, reference) of the first ``limit`` samples' questions, as eval builds them."""
    from mimo_toolkit.runtime.datasets import build_file_dataset

    dataset = build_file_dataset(job, "valid", path=str(data_file))
    for index in range(limit):
        record = dataset.records[index]
        sample = dataset.get(index, ("vision",))
        for k, (human, _) in enumerate(record.turns):
            yield dataset.template.prompt(record.turns[:k], human), sample.media["vision"], dataset.tokenizer


def test_exported_llava_is_the_input_where_frozen_and_generates_what_eval_answers(tmp_path):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from mimo_toolkit.resolve import load_manifest

    ckpt = make_llava(tmp_path / "llava")
    data = make_shapes(tmp_path / "data", "--seed", "4", "--train", "32", "--valid", "6", "--image-size", "32")
    run = run_job(tmp_path / "run", "llava", sets=[*llava_sets(ckpt), *data_sets(data), "train.steps=2",
                                                   "train.seq_length=80", "train.save_interval=0", "freeze.llm=true",
                                                   "freeze.vision=true"])
    assert run.returncode == 0, run.output[-3000:]
    proc = mimo("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert proc.returncode == 0 and "LlavaForConditionalGeneration" in proc.stdout, proc.stderr[-3000:]
    source, exported = load_file(str(ckpt / "model.safetensors")), load_file(str(tmp_path / "out/model.safetensors"))
    assert sorted(source) == sorted(exported)
    for name, tensor in source.items():
        same = exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor)
        assert same != name.startswith("multi_modal_projector."), name  # only the projector trained
    again = mimo("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert again.returncode == 2 and again.stderr.strip().endswith("out: exists and is not an empty directory")
    answers = [row["prediction"] for row in evaluate(tmp_path / "run", limit=6)["predictions"]]
    job = load_manifest(json.loads((tmp_path / "run/job.json").read_text())).config
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    generated = []
    for prompt, pixels, tok in questions(job, data / "valid.json", 6):
        ids = hf_input_ids(torch.tensor([prompt]), job.layout.special_token_ids)
        with torch.no_grad():
            out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=32, do_sample=False,
                                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        generated.append(tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new))
    assert len(answers) == len(generated) >= 6
    assert generated == answers


def test_steps_0_converts_and_multi_encoder_exports_one_directory_per_module(tmp_path):
    from transformers import CLIPVisionModel, LlamaForCausalLM, WhisperModel

    tokenizer = write_tokenizer(tmp_path / "tok", vocab=300)
    sets = [f"model.vision.pretrained={make_clip(tmp_path / 'clip')}", f"model.audio.pretrained={make_whisper(tmp_path / 'whisper')}",
            f"model.llm.pretrained={make_llama(tmp_path / 'llama')}", "train.steps=0", f"data.tokenizer={tokenizer}"]
    run = run_job(tmp_path / "run", "multi_encoder", sets=sets)
    assert run.returncode == 0, run.output[-3000:]
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-00000000" and not run.metrics
    report = re.search(r"pretrained import seconds per rank \((\d+) CPU thread\(s\) each\): (\{.*\})", run.output)
    assert report and int(report[1]) >= 1, run.output[-3000:]
    seconds = json.loads(report[2])  # every module's import, on every rank that holds it
    assert sorted(seconds) == ["audio", "llm", "vision"] and all(ranks and min(ranks.values()) >= 0 for ranks in seconds.values())
    proc = mimo("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["audio", "audio_projector", "llm", "vision", "vision_projector"]
    assert (tmp_path / "out/llm/tokenizer.json").is_file() and (tmp_path / "out/llm/tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "out/audio/preprocessor_config.json").read_text())["feature_size"] == 16
    assert json.loads((tmp_path / "out/vision/preprocessor_config.json").read_text())["crop_size"]["height"] == 32
    for cls, name, source in ((LlamaForCausalLM, "llm", "llama"), (CLIPVisionModel, "vision", "clip"),
                              (WhisperModel, "audio", "whisper")):
        ours, theirs = cls.from_pretrained(tmp_path / "out" / name), cls.from_pretrained(tmp_path / source)
        for (key, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(theirs.state_dict().items())):
            assert torch.equal(a, b), (name, key)
