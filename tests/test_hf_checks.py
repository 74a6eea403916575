"""Render-time checks of ``model.<module>.pretrained`` and ``data.tokenizer`` (no torch needed).

Checkpoints here are written by hand (``hf_files``): config.json plus safetensors files of
zeros whose names and shapes the test chooses, so each bad input is exactly one defect.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hf_files import LLAMA_CONFIG, llama_tensors, write_llama, write_safetensors, write_tokenizer

from mimo_toolkit.errors import UserError
from mimo_toolkit.resolve import load_manifest, resolve_job


def resolve(*sets):
    return resolve_job("llava", "tiny", sets=list(sets)).config


def test_unset_fields_are_filled_from_config_json(tmp_path, monkeypatch):
    write_llama(tmp_path / "llama")
    monkeypatch.chdir(tmp_path)
    job = resolve("model.llm.pretrained=llama")
    llm = job.language_model
    assert llm.pretrained == "llama"  # as given, like data.path
    assert (llm.num_query_groups, llm.rotary_base, llm.rope_scaling_factor) == (2, 500000, None)
    assert (llm.hidden_size, llm.ffn_hidden_size, llm.vocab_size, llm.tie_embeddings) == (128, 256, 320, False)
    assert llm.max_sequence_length == 128
    again = load_manifest(json.loads(json.dumps(resolve_job("llava", "tiny", sets=["model.llm.pretrained=llama"]).manifest())))
    assert again.config.to_dict() == job.to_dict()  # the job's own validation changes nothing


def test_llama3_rope_scaling_is_read_from_either_dialect(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    old = write_llama(tmp_path / "old", {"rope_scaling": scaling, "tie_word_embeddings": True})
    new = write_llama(tmp_path / "new", {"rope_parameters": {**scaling, "rope_theta": 500000.0}, "rope_theta": None,
                                         "tie_word_embeddings": True})
    for path in (old, new):
        llm = resolve(f"model.llm.pretrained={path}").language_model
        assert (llm.rope_scaling_factor, llm.rotary_base, llm.tie_embeddings) == (32.0, 500000, True)
    bad = write_llama(tmp_path / "bad", {"rope_scaling": {**scaling, "high_freq_factor": 2.0}})
    with pytest.raises(UserError, match="high_freq_factor=2.0; megatron-core 0.16.1 fixes it at 4.0"):
        resolve(f"model.llm.pretrained={bad}")


def test_a_field_set_differently_is_refused_naming_both_values(tmp_path):
    path = write_llama(tmp_path / "llama")
    with pytest.raises(UserError) as err:
        resolve(f"model.llm.pretrained={path}", "model.llm.hidden_size=256")
    assert str(err.value) == f"model.llm.hidden_size=256 but {path}/config.json has hidden_size=128"
    # an explicit --set counts even when it equals the field's default
    with pytest.raises(UserError, match="model.llm.rotary_base=10000 but .* has rope_theta=500000"):
        resolve(f"model.llm.pretrained={path}", "model.llm.rotary_base=10000")
    with pytest.raises(UserError, match="max_sequence_length=4096 exceeds .*max_position_embeddings=128"):
        resolve(f"model.llm.pretrained={path}", "model.llm.max_sequence_length=4096")


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def bad_checkpoints(tmp):
    """(description, directory, expected message fragment) for each kind of bad input."""
    tensors = llama_tensors(LLAMA_CONFIG)
    cases = []
    d = tmp / "no-config"
    write_llama(d)
    (d / "config.json").unlink()
    cases.append((d, "no config.json in"))
    d = tmp / "no-weights"
    write_llama(d)
    (d / "model.safetensors").unlink()
    cases.append((d, "no model.safetensors or model.safetensors.index.json"))
    cases.append((write_llama(tmp / "arch", {"architectures": ["MistralForCausalLM"]}),
                  "architectures=['MistralForCausalLM']; a llm module takes LlamaForCausalLM, LlavaForConditionalGeneration"))
    cases.append((write_llama(tmp / "missing", tensors=_without(tensors, "model.layers.1.mlp.up_proj.weight")),
                  "1 tensor(s) missing: model.layers.1.mlp.up_proj.weight"))
    extra = {**tensors, **{f"model.layers.2.{n}.weight": (8,) for n in ("a", "b", "c", "d", "e", "f")}}
    cases.append((write_llama(tmp / "extra", tensors=extra),
                  "6 unexpected tensor(s) for its config.json: model.layers.2.a.weight, model.layers.2.b.weight, "
                  "model.layers.2.c.weight, model.layers.2.d.weight, model.layers.2.e.weight"))
    cases.append((write_llama(tmp / "shape", tensors={**tensors, "model.layers.0.self_attn.k_proj.weight": (128, 128)}),
                  "tensor model.layers.0.self_attn.k_proj.weight has shape [128, 128], config.json implies [64, 128]"))
    d = write_llama(tmp / "truncated")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-10])
    cases.append((d, "(truncated file?)"))
    d = tmp / "sharded"
    write_llama(d)
    (d / "model.safetensors").unlink()
    write_safetensors(d / "part-1.safetensors", _without(tensors, "lm_head.weight"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "part-2.safetensors"}}))
    cases.append((d, "part-2.safetensors: cannot read"))
    return cases


def test_bad_checkpoints_are_refused_with_one_line(tmp_path):
    for directory, fragment in bad_checkpoints(tmp_path):
        with pytest.raises(UserError) as err:
            resolve(f"model.llm.pretrained={directory}")
        assert fragment in str(err.value) and "\n" not in str(err.value), (directory.name, str(err.value))


def test_sharded_checkpoint_is_read_from_its_index(tmp_path):
    d = write_llama(tmp_path / "sharded")
    tensors = llama_tensors(LLAMA_CONFIG)
    (d / "model.safetensors").unlink()
    names = sorted(tensors)
    half = {n: tensors[n] for n in names[: len(names) // 2]}
    rest = {n: tensors[n] for n in names[len(names) // 2 :]}
    write_safetensors(d / "model-00001-of-00002.safetensors", half)
    write_safetensors(d / "model-00002-of-00002.safetensors", rest, dtype="BF16")
    weight_map = {**{n: "model-00001-of-00002.safetensors" for n in half}, **{n: "model-00002-of-00002.safetensors" for n in rest}}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert resolve(f"model.llm.pretrained={d}").language_model.num_query_groups == 2


def test_tokenizer_checks(tmp_path):
    ok = write_tokenizer(tmp_path / "ok", vocab=300, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve(f"data.tokenizer={ok}").data.tokenizer == str(ok)  # a checkpoint directory
    big = write_tokenizer(tmp_path / "big", vocab=400)
    with pytest.raises(UserError, match=r"data.tokenizer=.*big: tokenizer.json has 400 ids but the language model's vocab_size is 320"):
        resolve(f"data.tokenizer={big}")
    raising = write_tokenizer(tmp_path / "raise", chat_template="{{ raise_exception('only user turns, please') }}")
    with pytest.raises(UserError, match=r"raise/tokenizer_config.json: the chat template raised: only user turns, please"):
        resolve(f"data.tokenizer={raising}")
    broken = write_tokenizer(tmp_path / "broken", chat_template="{% for m in messages %}")
    with pytest.raises(UserError, match="the chat template does not compile"):
        resolve(f"data.tokenizer={broken}")
    escape = write_tokenizer(tmp_path / "escape", chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(UserError, match="the chat template raised: access to attribute '__class__'"):
        resolve(f"data.tokenizer={escape}")


def test_cli_refuses_bad_checkpoint_without_writing_or_importing_torch(tmp_path):
    bad = write_llama(tmp_path / "bad", tensors={**llama_tensors(LLAMA_CONFIG), "model.norm.weight": (64,)})
    good = write_llama(tmp_path / "good")
    script = str(Path(sys.executable).parent / "mimo-toolkit")
    base = [sys.executable, "-X", "importtime", script, "render", "llava", "-p", "tiny", "-s", "slurm"]
    proc = subprocess.run([*base, "-o", str(tmp_path / "out"), "--set", f"model.llm.pretrained={bad}"],
                          capture_output=True, text=True, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].endswith("bad/model.safetensors: tensor model.norm.weight has shape [64], config.json implies [128]")
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([*base, "-o", str(tmp_path / "out"), "--set", f"model.llm.pretrained={good}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "mimo_toolkit.hf.pretrained" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "megatron", "transformers", "safetensors", "numpy"))
    assert not heavy, heavy
    job = json.loads((tmp_path / "out" / "job.json").read_text())["job"]
    assert job["model"]["llm"]["pretrained"] == str(good) and job["model"]["llm"]["num_query_groups"] == 2


def test_export_refuses_bad_paths_before_importing_torch(tmp_path):
    """Not a run directory, or an OUT_DIR that holds something: one line, exit 2, no torch."""
    script = str(Path(sys.executable).parent / "mimo-toolkit")
    (tmp_path / "run").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    for run, message in ((tmp_path / "nothing", "nothing: not a run directory (no job.json)"),
                         (tmp_path / "run", "out: exists and is not an empty directory")):
        if run.name == "run":
            (run / "job.json").write_text("{}")
        proc = subprocess.run([sys.executable, "-X", "importtime", script, "export", str(run), str(tmp_path / "out")],
                              capture_output=True, text=True)
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(message), proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert not {m for m in imported if m.split(".")[0] in ("torch", "megatron")}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"]


def test_stage_presets_agree_with_the_hub_checkpoints(tmp_path, monkeypatch):
    """stage1 (CLIPModel + sharded Vicuna) and stage2 (llava-1.5-7b-hf) resolve against
    checkpoints shaped exactly as on the hub (config.json as published; sparse tensors)."""
    from hf_files import write_hub_checkpoints

    monkeypatch.setenv("MIMO_TOOLKIT_WEIGHTS", str(write_hub_checkpoints(tmp_path / "weights")))
    one_node = resolve_job("llava", "1node").config
    for preset in ("stage1", "stage2"):
        job = resolve_job("llava", preset).config
        for module in ("vision", "llm"):
            arch, reference = vars(job.model[module]), vars(one_node.model[module])
            differs = {k for k in reference if arch[k] != reference[k]}
            expected = {"pretrained", "vocab_size"} if (module, preset) == ("llm", "stage2") else {"pretrained"}
            assert differs == expected, (preset, module, differs)  # the recipe's architecture IS the checkpoints
        assert job.model["vision"].built_layers == 23  # LLaVA-1.5's penultimate-layer features
    assert resolve_job("llava", "stage2").config.language_model.vocab_size == 32064
