"""Values that must be refused when a job is resolved (exit 2, one line naming the key and the
accepted form, nothing written), checked through the real command line in this process; the
range table is complete; the data files a job reads are checked where it runs.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
from cli_support import run_cli

from mimo_toolkit.config import JobConfig
from mimo_toolkit.errors import UserError
from mimo_toolkit.recipe import load_recipe
from mimo_toolkit.resolve import resolve_job, validate
from mimo_toolkit.typed import field_hints
from mimo_toolkit.validation import values
from mimo_toolkit.validation.values import RANGES, numeric_fields, range_of, sections

TIME_FORM = "expected a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"

REFUSED = {
    "train.lr=nan": "train.lr=nan must be a finite number > 0",
    "train.lr=inf": "train.lr=inf must be a finite number > 0",
    "train.clip_grad=-1": "train.clip_grad=-1.0 must be >= 0 (0 disables clipping)",
    "cluster.time=abc": f"cluster.time='abc': {TIME_FORM}",
    "cluster.time=1-2-3": f"cluster.time='1-2-3': {TIME_FORM}",
    "cluster.time=1:2:3:4": f"cluster.time='1:2:3:4': {TIME_FORM}",
    "cluster.time=": f"cluster.time='': {TIME_FORM}",
    "train.adam_beta2=1": "train.adam_beta2=1.0 must be in [0, 1)",
    "train.seed=-1": "train.seed=-1 must be in [0, 4294967295]",
    "train.timeout_s=100000": "train.timeout_s=100000 must be in [5, 86400]",
    "train.min_lr=1": "train.min_lr=1.0 exceeds train.lr=0.002 (the schedule decays from lr to min_lr)",
    "model.vision.init_method_std=0": "model.vision.init_method_std=0.0 must be > 0",
    "cluster.mem=12GB": "cluster.mem='12GB': expected a size such as 0, 64000, 500G or 1T",
    "cluster.dependency=after:abc": "cluster.dependency='after:abc': expected TYPE:JOBID[:JOBID...] items joined by "
                                    "',' or '?' (TYPE: after, afterany, afterok, afternotok, aftercorr, "
                                    "afterburstbuffer), or singleton",
    "cluster.signal=USR2@99999": "cluster.signal=USR2@99999: Slurm sends the signal at most 65535 s before the time limit",
    "cluster.partition=gpu batch": "cluster.partition='gpu batch': must be non-empty, without spaces or control characters",
    "cluster.torchx_scheduler=slrum": "cluster.torchx_scheduler='slrum': expected one of aws_batch, aws_sagemaker, "
                                      "gcp_batch, kubernetes, kubernetes_mcad, local_cwd, local_docker, lsf, ray, slurm",
    "cluster.python=": "cluster.python='': must name the interpreter on the compute nodes",
    "job_name= ": "job_name=' ': must contain a letter or digit, without control characters",
    "job_name=--": "job_name='--': must contain a letter or digit, without control characters",
    "layout.special_token_ids.vision=7": "layout.special_token_ids.vision=7 is a text id (0 <= id < "
                                         "model.llm.vocab_size=320); use a negative id (LLaVA uses -200)",
    "data.source=llava": "data.source=llava needs data.path (a LLaVA-style JSON or JSONL file)",
}  # fmt: skip


@pytest.mark.parametrize("setting", list(REFUSED))
def test_refused_at_render_time(setting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = run_cli(["render", "llava", "-p", "tiny", "-s", "slurm", "-o", "out", "--set", setting])
    assert (run.code, run.out, run.err) == (2, "", f"mimo-toolkit: error: {REFUSED[setting]}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("time", ["90", "90:30", "12:00:00", "2-12", "2-12:30", "2-12:30:15", "UNLIMITED", "0"])
def test_every_slurm_time_format_renders(time, tmp_path):
    run = run_cli(["submit", "llava", "-p", "tiny", "-s", "slurm", "--dry-run", "--set", f"cluster.time={time}"])
    assert run.code == 0, run.err
    assert f"#SBATCH --time={time}\n" in run.out


def test_every_numeric_field_has_a_range():
    """A field added to config.py without a range here fails this test (values.RANGES)."""
    assert values.fields_without_range() == []
    assert all(range_of(cls, name) is not None for cls, name in RANGES)


def _numeric_keys(job: JobConfig):
    for prefix, obj in sections(job):
        for name in numeric_fields(type(obj)):
            yield f"{prefix}.{name}", field_hints(type(obj))[name], range_of(type(obj), name)


@pytest.mark.parametrize("recipe", ["llava", "multi_encoder"])
def test_every_numeric_setting_refuses_values_outside_its_range(recipe):
    """Below each range (and above it where bounded), and every float at nan/inf: each is
    refused naming its key, whatever other fields are; in range, the preset still resolves."""
    job = load_recipe(recipe).build("tiny")
    checked = 0
    for key, hint, accepted in _numeric_keys(job):
        is_float = float in (getattr(hint, "__args__", None) or (hint,))
        bad = [accepted.low if accepted.open_low else accepted.low - 1]
        if accepted.high is not None:
            bad.append(accepted.high if accepted.open_high else accepted.high + 1)
        if is_float:
            bad += [math.nan, math.inf, -math.inf]
        for value in bad:
            if not is_float and not float(value).is_integer():
                continue
            text = repr(float(value)) if is_float else str(int(value))
            with pytest.raises(UserError) as info:
                resolve_job(recipe, "tiny", sets=[f"{key}={text}"])
            assert str(info.value).startswith(f"{key}=") and "must be" in str(info.value), (key, value, info.value)
            checked += 1
    assert checked > 60


def test_torchx_scheduler_names_are_torchxs():
    from torchx.schedulers import get_scheduler_factories

    assert sorted(values.TORCHX_SCHEDULERS) == sorted(get_scheduler_factories())


def test_data_limits_match_the_runtime():
    from mimo_toolkit.runtime.datasets.synthetic import SyntheticDataset
    from mimo_toolkit.runtime.datasets.tokenizers import ByteTokenizer
    from mimo_toolkit.validation import job as rules

    assert rules.BYTE_TOKENIZER_IDS == ByteTokenizer.vocab_size
    assert rules.SYNTHETIC_FIRST_TOKEN == SyntheticDataset.FIRST_TOKEN


# ---- data files -------------------------------------------------------------------------------

RECORD = {"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nhi"},
                                                           {"from": "gpt", "value": "red"}]}
FILES = {
    "ok.json": json.dumps([RECORD]),
    "ok.jsonl": json.dumps(RECORD) + "\n",
    "object.json": json.dumps(RECORD),
    "empty.json": "[]",
    "lines.json": json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n",
    "numbers.jsonl": "1\n2\n",
    "yaml.jsonl": "id: 1\n",
}
LOCAL_ERRORS = {
    "missing.json": "no such file (the job runs on this machine)",
    "object.json": "expected a JSON list of records",
    "empty.json": "holds no records (a JSON list of objects, each a LLaVA-style sample)",
    "lines.json": "not JSON (Extra data at line 2); JSON Lines files end in .jsonl",
    "numbers.jsonl": "holds no records (JSON Lines of objects, each a LLaVA-style sample)",
    "yaml.jsonl": "holds no records (JSON Lines of objects, each a LLaVA-style sample)",
}
#: Elsewhere a file is only sniffed (it may be big): what that catches.
REMOTE_ERRORS = {
    "object.json": "expected a JSON list of records; the file starts with '{'",
    "yaml.jsonl": "expected JSON Lines (one object per line); the file starts with 'i'",
}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _render(scheduler: str, path: str, *extra: str):
    sets = ["data.source=llava", f"data.path={path}", *extra]
    return run_cli(["render", "llava", "-p", "tiny", "-s", scheduler, "-o", "out", "--force", *(f"--set={s}" for s in sets)])


@pytest.mark.parametrize("name", [*FILES, "missing.json"])
def test_data_files_of_a_local_job(name, data_dir):
    run = _render("local", name)
    if name in LOCAL_ERRORS:
        assert (run.code, run.err) == (2, f"mimo-toolkit: error: data.path={name}: {LOCAL_ERRORS[name]}\n")
        assert not (data_dir / "out").exists()
    else:
        assert run.code == 0 and run.err == "", run.err
    torchx_local = _render("torchx", name, "cluster.torchx_scheduler=local_cwd")
    assert torchx_local.code == run.code and torchx_local.err == run.err


@pytest.mark.parametrize("scheduler", ["slurm", "torchx"])
@pytest.mark.parametrize("name", ["missing.json", "object.json", "yaml.jsonl", "ok.jsonl"])
def test_data_files_of_a_cluster_job(scheduler, name, data_dir):
    run = _render(scheduler, name)
    if name in REMOTE_ERRORS:
        assert (run.code, run.err) == (2, f"mimo-toolkit: error: data.path={name}: {REMOTE_ERRORS[name]}\n")
        assert not (data_dir / "out").exists()
        return
    assert run.code == 0
    warning = f"mimo-toolkit: warning: data.path={name}: no such file here; it must exist on the compute nodes\n"
    assert run.err == (warning if name == "missing.json" else "")


def test_tokenizer_and_media_root_of_a_local_job(data_dir):
    (data_dir / "tok.json").write_text("{}")
    cases = {
        "data.tokenizer=nope.json": "data.tokenizer=nope.json: no such file (the job runs on this machine)",
        "data.tokenizer=tok.json": "data.tokenizer=tok.json: not a Hugging Face tokenizer.json (no 'model' section)",
        "data.media_root=media": "data.media_root=media: no such directory (the job runs on this machine)",
    }
    for setting, message in cases.items():
        run = _render("local", "ok.json", setting)
        assert (run.code, run.err) == (2, f"mimo-toolkit: error: {message}\n")
    remote = _render("slurm", "ok.json", "data.media_root=media")
    assert remote.code == 0
    assert remote.err == "mimo-toolkit: warning: data.media_root=media: no such directory here; it must exist on the compute nodes\n"


# ---- structure --------------------------------------------------------------------------------


def test_validate_returns_a_finalized_copy_and_leaves_its_input_alone():
    job = load_recipe("llava").build("1node")
    before = job.to_json()
    resolved = validate(job)
    assert job.to_json() == before and job.layout.language.dp is None
    assert resolved.config is not job and resolved.config.layout.language.dp == 2
    scaled = resolve_job("llava", "4node", nodes=8, sets=["train.global_batch_size=2016"])
    assert scaled.config.layout.language.dp == 14


def test_layout_is_a_leaf_that_imports_no_config():
    tree = ast.parse((Path(__file__).parents[1] / "mimo_toolkit" / "layout.py").read_text())
    local = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert local == {"errors"}
