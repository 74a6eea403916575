"""Arbitrary user strings must come out of the rendered scripts byte for byte, never as code.

Job names, --env values, run-directory paths and string overrides are drawn from a mix of
shell metacharacters, newlines, unicode and plain text. Each rendered script must pass
``bash -n``, run under a fake Slurm/TorchX with the exact values reaching srun/torchx, and
never run an injected command (a marker file an injected ``touch`` would create). Values a
``#SBATCH`` line cannot hold must be a one-line UserError instead of a broken script.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_render import (
    bash_syntax_ok,
    env_block,
    read_env,
    read_nul,
    run_sbatch_script,
    run_torchx_script,
    sbatch_directives,
)

from mimo_toolkit import components
from mimo_toolkit.errors import UserError
from mimo_toolkit.launch import render_job, write_job
from mimo_toolkit.schedulers.slurm import SBATCH_SCRIPT
from mimo_toolkit.schedulers.torchx import TORCHX_SCRIPT
from mimo_toolkit.render import oneline, sbatch
from mimo_toolkit.resolve import load_manifest, resolve_job

MARKER = Path(tempfile.gettempdir()) / f"mimo-quoting-marker-{os.getpid()}"
NASTY = [
    "'", '"', "\\", "$", "`", ";", "&&", "|", "*", "!", "#", "%", "%j", ",", "=", " ", "\t", "\n", "\r",
    "-", "--help", "$(touch INJECTED)", f"`touch {MARKER}`", f"';touch {MARKER};'", f'";touch {MARKER};"',
    "${HOME}", "$((1+1))", "\\n", "é", "🚀", "\u2028", "日本",
]  # fmt: skip
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(pieces: list[str], chars) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(pieces), st.text(chars, max_size=4)), max_size=6).map("".join)


TEXT = _text(NASTY, CHARS)
#: strings a #SBATCH line can hold (no control characters), drawn more often so that most
#: examples render and run instead of being refused
LINE = _text([p for p in NASTY if not CONTROL.search(p)], st.characters(blacklist_categories=("Cs", "Cc")))
#: strings TorchX's --env K=V,... syntax can carry (no '=', ',' or control characters)
ENV_SAFE = _text([p for p in NASTY if not re.search(r"[=,\x00-\x1f]", p)], st.characters(
    blacklist_categories=("Cs", "Cc"), blacklist_characters="=,"))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def no_injection(sandbox: Path) -> None:
    assert not MARKER.exists(), "an injected command ran"
    assert not list(sandbox.rglob("INJECTED")), "an injected command ran"


@contextlib.contextmanager
def sandbox_dir():
    """A fresh directory per example (hypothesis reruns the test body), removed after."""
    path = Path(tempfile.mkdtemp(prefix="mimo-q-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def job_for(job_name: str, value: str, data_path: str, partition: str):
    """The job, or None where validation refuses the names (a job name holds a letter or digit
    and no control character, a Slurm partition no space): one line, before anything renders."""
    try:
        return resolve_job(
            "llava", "4node",
            sets=[f"data.path={data_path}", f"cluster.partition={partition}"],
            env=[f"MIMO_Q={value}"],
            job_name=job_name,
        )  # fmt: skip
    except UserError as exc:
        assert "\n" not in str(exc)
        assert (CONTROL.search(job_name) or not any(ch.isalnum() for ch in job_name)
                or not re.fullmatch(r"[^\s\x00-\x1f\x7f]+", partition)), str(exc)
        event("refused by validation: not a name")
        return None


@SETTINGS
@given(
    job_name=st.one_of(LINE, TEXT), value=TEXT, run_name=st.one_of(LINE, TEXT), data_path=TEXT, partition=st.one_of(LINE, TEXT)
)
def test_slurm_script_carries_any_string(job_name, value, run_name, data_path, partition):
    with sandbox_dir() as sandbox:
        check_slurm_script(sandbox, job_name, value, sandbox / ("run" + run_name.replace("/", "_"))[:200], data_path, partition)


def check_slurm_script(sandbox, job_name, value, run_dir, data_path, partition):
    resolved = job_for(job_name, value, data_path, partition)
    if resolved is None:
        return
    cfg = resolved.config
    directive_values = [cfg.job_name, cfg.cluster.partition or "", str(run_dir)]
    try:
        files = render_job(resolved, "slurm", run_dir)
    except UserError as exc:
        assert "\n" not in str(exc)
        assert any(CONTROL.search(v) for v in directive_values) or "\\" in str(run_dir), str(exc)
        assert not run_dir.exists()
        event("refused: not a #SBATCH value")
        return
    assert not any(CONTROL.search(v) for v in directive_values), "a #SBATCH value with a newline was rendered"
    script = files[SBATCH_SCRIPT]

    # #SBATCH lines read back by Slurm's rules; the header stays comments.
    args = sbatch_directives(script)
    assert f"--job-name={cfg.job_name}" in args
    if cfg.cluster.partition:
        assert f"--partition={cfg.cluster.partition}" in args
    assert f"--output={str(run_dir).replace('%', '%%')}/logs/%x-%j.out" in args
    head = script[: script.index("set -euo pipefail")]
    assert all(line.startswith("#") or not line for line in head.split("\n"))

    # The export block alone gives the value back byte for byte.
    probe = subprocess.run(
        ["bash", "-c", env_block(script) + '\nprintf %s "$MIMO_Q"'], cwd=sandbox, capture_output=True
    )
    assert probe.returncode == 0 and probe.stdout == value.encode(), probe.stderr

    # The whole script under a fake Slurm: exact values reach srun, nothing injected runs.
    code, out, _ = run_sbatch_script(sandbox, resolved=resolved, run_dir=run_dir)
    assert code == 0, out
    bash_syntax_ok(run_dir / SBATCH_SCRIPT)
    argv = read_nul(sandbox / "out" / "srun.argv")
    assert argv[-4:] == ["--config", str(run_dir / "job.json"), "--run-dir", str(run_dir)]
    assert read_env(sandbox / "out" / "srun.env")["MIMO_Q"] == value
    assert load_manifest(json.loads((run_dir / "job.json").read_text())).config.data.path == cfg.data.path
    no_injection(sandbox)


@SETTINGS
@given(job_name=TEXT, value=st.one_of(ENV_SAFE, TEXT), run_name=TEXT)
def test_torchx_script_carries_any_string(job_name, value, run_name):
    with sandbox_dir() as sandbox:
        check_torchx_script(sandbox, job_name, value, sandbox / ("run" + run_name.replace("/", "_"))[:200])


def check_torchx_script(sandbox, job_name, value, run_dir):
    from torchx.specs import macros
    from torchx.specs.builders import materialize_appdef
    from torchx.util.types import to_dict

    resolved = job_for(job_name, value, "x", "batch")
    if resolved is None:
        return
    try:
        proc, _ = run_torchx_script(sandbox, resolved, run_dir=run_dir)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("env MIMO_Q=")
        assert not run_dir.exists()
        event("refused: not a TorchX --env value")
        return
    assert proc.returncode == 0, proc.stderr
    bash_syntax_ok(run_dir / TORCHX_SCRIPT)
    argv = read_nul(sandbox / "out" / "torchx.argv")
    pairs = dict(arg.split("=", 1) for arg in argv[4:])
    assert pairs["--name"] == resolved.config.job_name and pairs["--run_dir"] == str(run_dir)
    assert to_dict(pairs["--env"])["MIMO_Q"] == value
    role = materialize_appdef(components.train, argv[4:]).roles[0]  # TorchX's own argument parsing
    role = macros.Values(img_root="", app_id="app", replica_id="0", rank0_env="HEAD").apply(role)  # as schedulers do
    assert role.env["MIMO_Q"] == value and role.name == re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.config.job_name)
    assert shlex.split(role.args[1])[-4:] == ["--config", str(run_dir / "job.json"), "--run-dir", str(run_dir)]
    no_injection(sandbox)


@settings(max_examples=300, deadline=None)
@given(st.text(CHARS))
def test_sbatch_quoting_round_trips(text):
    if CONTROL.search(text):
        try:
            sbatch(text, "x")
        except UserError as exc:
            assert "\n" not in str(exc)
            return
        raise AssertionError("a control character reached a #SBATCH line")
    assert sbatch_directives(f"#!/bin/bash\n#SBATCH --x={sbatch(text, 'x')}\n") == [f"--x={text}"]
    assert "\n" not in oneline(text) and "\r" not in oneline(text)


def test_newline_in_a_directive_value_is_a_one_line_error(tmp_path):
    """Validation refuses a job name with a newline; the #SBATCH filter still guards the
    values it does not see (the run directory)."""
    try:
        resolve_job("llava", "tiny", job_name="a\nb")
    except UserError as exc:
        assert str(exc) == "job_name='a\\nb': must contain a letter or digit, without control characters"
    else:
        raise AssertionError("a job name with a newline was accepted")
    run_dir = tmp_path / "a\nb"
    try:
        write_job(resolve_job("llava", "tiny"), "slurm", run_dir)
    except UserError as exc:
        assert str(exc).startswith("run dir=") and "a #SBATCH line cannot hold a newline" in str(exc)
    else:
        raise AssertionError("rendered a #SBATCH line with a newline")
    assert not run_dir.exists()
