"""The command line, through the installed console script (``mimo-toolkit`` beside the
interpreter): exit codes, one-line errors, nothing written on error or dry run, help with
examples, files that load back, no torch on the light path; and a local run end to end.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mimo_toolkit import torchrun
from mimo_toolkit.cli import cli
from mimo_toolkit.resolve import load_manifest, resolve_job

SCRIPT = str(Path(sys.executable).parent / "mimo-toolkit")
COMMANDS = ["recipes", "show", "render", "submit", "train"]


def mimo(*args, cwd, env=None, python_flags=()):
    cmd = [sys.executable, *python_flags, SCRIPT, *args] if python_flags else [SCRIPT, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_console_script_is_installed():
    assert Path(SCRIPT).is_file() and os.access(SCRIPT, os.X_OK)
    assert shutil.which("mimo-toolkit", path=str(Path(SCRIPT).parent)) == SCRIPT


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_an_example(command, tmp_path):
    proc = mimo(*([command] if command else []), "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "Example:" in proc.stdout and "mimo-toolkit" in proc.stdout
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "lava"], "unknown recipe 'lava' (did you mean 'llava'?); recipes: ..."),
        (["show", "llava", "-p", "8node"], "recipe 'llava' has no preset '8node' (did you mean '4node'?); presets: tiny, 1node, 4node, stage1, stage2"),
        (["show", "llava", "--set", "train.stepz=3"], "--set train.stepz: unknown key (did you mean train.steps?)"),
        (["show", "llava", "--set", "layout.llm.tp=3"], "layout.llm.tp=3 does not divide model.llm.num_attention_heads=32"),
        (["show", "llava", "--nodes", "abc"], "Invalid value for '--nodes' / '-n': 'abc' is not a valid integer. (see `mimo-toolkit show --help`)"),
        (["render", "llava", "-s", "slurm"], "Missing option '-o' / '--output-dir'. (see `mimo-toolkit render --help`)"),
        (["render", "llava", "-s", "pbs", "-o", "out"], "Invalid value for '--scheduler' / '-s': 'pbs' is not one of 'slurm', 'torchx', 'local'. (see `mimo-toolkit render --help`)"),
        (["render", "llava", "-s", "slurm", "-o", "out", "--job-name", "a\nb"], "job_name='a\\nb': must contain a letter or digit, without control characters"),
        (["render", "llava", "-s", "slurm", "-o", "out", "--template-dir", "nope"], "--template-dir 'nope' is not a directory"),
        (["render", "llava", "-s", "torchx", "-o", "out", "--env", "A=x=y"], "env A='x=y': TorchX's --env K=V,... cannot carry '=', ',', control characters, outer spaces or an empty value; use --scheduler slurm"),
        (["submit", "llava", "-s", "slurm", "--env", "1A=x"], "--env '1A': not a valid environment variable name"),
        (["train", "--config", "x"], "Missing option '--run-dir'. (see `mimo-toolkit train --help`)"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_exit_2_and_write_nothing(args, message, tmp_path):
    proc = mimo(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    if message.endswith("..."):  # other recipes may exist
        assert proc.stderr.startswith(f"mimo-toolkit: error: {message[:-3]}") and proc.stderr.count("\n") == 1
    else:
        assert proc.stderr == f"mimo-toolkit: error: {message}\n"
    assert proc.stdout == "" and listing(tmp_path) == []


def test_submit_without_sbatch_is_a_user_error(tmp_path):
    env = dict(os.environ, PATH=str(Path(SCRIPT).parent))  # the venv only: no sbatch
    proc = mimo("submit", "llava", "-p", "4node", "-s", "slurm", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mimo-toolkit: error: sbatch not found on PATH; ") and proc.stderr.count("\n") == 1
    assert listing(tmp_path) == []


def test_submit_slurm_runs_sbatch_on_the_written_script(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SBATCH_ARGS"\necho "777;cluster"\n')
    (bindir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", SBATCH_ARGS=str(tmp_path / "args"))
    proc = mimo("submit", "llava", "-p", "4node", "-s", "slurm", "--run-dir", "run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "777\n"
    script = tmp_path / "run" / "launch" / "job.sbatch"
    assert (tmp_path / "args").read_text() == f"--parsable\n{script}\n"
    assert script.is_file() and (tmp_path / "run" / "logs").is_dir()


@pytest.mark.parametrize("scheduler", ["slurm", "torchx", "local"])
def test_dry_run_prints_everything_and_writes_nothing(scheduler, tmp_path):
    proc = mimo("submit", "llava", "-p", "4node", "-s", scheduler, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == []  # not even ./runs
    run_dir = next(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("# ---- /"))
    run_dir = str(Path(run_dir).parent)
    assert run_dir.startswith(f"{tmp_path}/runs/llava-4node-2")
    last = proc.stdout.splitlines()[-1]
    if scheduler == "slurm":
        assert "#SBATCH --nodes=4" in proc.stdout and last == f"sbatch --parsable {run_dir}/launch/job.sbatch"
    elif scheduler == "torchx":
        assert "exec torchx run -s slurm mimo.train" in proc.stdout and last.endswith(f"bash {run_dir}/launch/torchx.sh")  # env PATH=... first when torchx is not on PATH
    else:
        assert "--nproc-per-node=32" in last and f"--config {run_dir}/job.json" in last


def test_render_writes_files_that_load_back(tmp_path):
    proc = mimo("render", "multi_encoder", "-p", "4node", "-s", "torchx", "--nodes", "2", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert proc.stdout.splitlines() == [str(out / "job.json"), str(out / "launch/torchx.sh"), str(out / "launch/.torchxconfig")]
    manifest = json.loads((out / "job.json").read_text())
    resolved = load_manifest(manifest)
    shown = json.loads(mimo("show", "multi_encoder", "-p", "4node", "--nodes", "2", "--config", cwd=tmp_path).stdout)
    assert resolved.config.config_hash() == manifest["config_hash"] == shown["config_hash"]
    assert (resolved.world_size, resolved.nodes) == (16, 2)
    assert subprocess.run(["bash", "-n", str(out / "launch/torchx.sh")]).returncode == 0


def test_show_prints_the_layout_and_collapses_big_rank_maps(tmp_path):
    proc = mimo("show", "llava", "--preset", "4node", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[1] == "world size 32 = 4 node(s) x 8 process(es) per node, 8 GPU(s) per node"
    assert "vision   4   1   1   2  0-7    0      encoder frozen, projector trains" in lines
    assert "llm      4   1   1   6  8-31   1-3    frozen" in lines
    assert lines[-2:] == ["  0-7    0      vision tp 0-3 dp 0-1", "  8-31   1-3    llm tp 0-3 dp 0-5"]
    big = ["llava", "-p", "4node", "--nodes", "512", "--set", "train.global_batch_size=4088"]
    compact = mimo("show", *big, cwd=tmp_path).stdout.splitlines()
    assert len(compact) < 20 and compact[-1] == "  8-4095  1-511  llm tp 0-3 dp 0-1021"
    full = mimo("show", *big, "--rank-map", "full", cwd=tmp_path).stdout.splitlines()
    assert len(full) > 4096 and full[-1].split()[:3] == ["4095", "511", "7"]


def test_recipes_lists_presets_with_their_docstrings(tmp_path):
    proc = mimo("recipes", cwd=tmp_path)
    assert proc.returncode == 0
    assert "  4node            32 GPUs, heterogeneous: vision TP2 DP2 on ranks 0-3, audio TP2 DP2 on ranks 4-7, LLM TP4 DP6 on ranks 8-31." in proc.stdout
    assert "  1node (default)  8 GPUs, colocated" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["recipes"],
        ["show", "llava", "-p", "4node"],
        ["render", "llava", "-s", "slurm", "--nodes", "4", "-o", "out"],
        ["render", "llava", "-s", "torchx", "-o", "out"],
        ["submit", "llava", "-s", "slurm", "--dry-run"],
    ],
)
def test_light_commands_never_import_torch(args, tmp_path):
    proc = mimo(*args, cwd=tmp_path, python_flags=["-X", "importtime"])
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "megatron", "torchx", "numpy"))
    assert not heavy, heavy
    assert "mimo_toolkit.cli" in imported  # the probe sees the CLI's imports at all


# ---- a local run end to end (in-process: the entrypoint is swapped for a fake) -------------

FAKE_TRAIN = """
import argparse, json, os, sys, time
p = argparse.ArgumentParser(); p.add_argument("--config"); p.add_argument("--run-dir"); a = p.parse_args()
rank = int(os.environ["RANK"])
steps = json.load(open(a.config))["job"]["train"]["steps"]
print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']}", flush=True)
for step in range(1, steps + 1):
    if rank == 0:
        with open(os.path.join(a.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step}) + "\\n")
    time.sleep(0.01)
if os.environ.get("FAKE_FAIL") == str(rank):
    sys.exit(3)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_submit_local_streams_rank_logs_and_progress(fail, tmp_path, monkeypatch):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    monkeypatch.setattr(torchrun, "TRAIN_MODULE", "fake_train")
    monkeypatch.chdir(tmp_path)
    env = [f"PYTHONPATH={tmp_path}"] + (["FAKE_FAIL=1"] if fail else [])
    args = ["submit", "llava", "-p", "tiny", "-s", "local", "--run-dir", "run", "--set", "train.steps=20"]
    result = CliRunner().invoke(cli, args + [f"--env={e}" for e in env])
    out = result.output
    assert "[rank0] hello from rank 0 of 2" in out and "[rank1] hello from rank 1 of 2" in out
    assert "[progress] step 20/20" in out
    if fail:
        assert result.exit_code == 1 and ": FAILED (20/20 steps)" in out
    else:
        assert result.exit_code == 0 and ": SUCCEEDED (20/20 steps)" in out
    written = load_manifest(json.loads((tmp_path / "run" / "job.json").read_text()))
    expected = resolve_job("llava", "tiny", sets=["train.steps=20"], env=env)
    assert written.config.config_hash() == expected.config.config_hash()


# ---- recipe files of one's own ----------------------------------------------------------

PRESET_FILE = '''
from mimo_toolkit.recipes.llava import recipe as llava

@llava.preset("mycluster")
def mycluster():
    """4 nodes of our H100 partition."""
    job = llava.build("4node")
    job.cluster.partition = "h100"
    return job

@llava.preset("mycluster-small")
def small():
    """Ours, one node."""
    job = llava.build("mycluster")
    job.cluster.nodes = 1
    job.layout.module_parallelisms["vision"].dp = 1
    job.layout.module_parallelisms["llm"].dp = 1
    job.layout.module_parallelisms["llm"].rank_offset = 4
    return job
'''


def test_a_file_of_presets_extends_the_recipe_they_are_registered_on(tmp_path):
    """README's "Your own cluster preset": no `recipe` in the file; its presets come first,
    the first is the default, the job is named after the preset, and it works by path and
    from $MIMO_TOOLKIT_RECIPE_PATH (listed by `recipes`)."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "mycluster.py").write_text(PRESET_FILE)
    by_path = mimo("show", "dir/mycluster.py", "--config", cwd=tmp_path)
    assert by_path.returncode == 0, by_path.stderr
    job = json.loads(by_path.stdout)["job"]
    assert (job["recipe"], job["preset"], job["job_name"], job["cluster"]["partition"]) == ("llava", "mycluster", "llava-mycluster", "h100")
    env = dict(os.environ, MIMO_TOOLKIT_RECIPE_PATH=str(tmp_path / "dir"))
    small = mimo("show", "mycluster", "-p", "mycluster-small", "--rank-map", "none", cwd=tmp_path, env=env)
    assert small.returncode == 0, small.stderr
    assert small.stdout.startswith("llava/mycluster-small: heterogeneous layout")
    assert "world size 8 = 1 node(s)" in small.stdout
    listed = mimo("recipes", cwd=tmp_path, env=env).stdout.splitlines()
    at = listed.index(f"mycluster  presets for llava (LLaVA-1.5: CLIP ViT-L/14-336 + MLP projector + Vicuna-7B)  [{tmp_path}/dir/mycluster.py]")
    assert listed[at + 1 : at + 4] == [
        "  mycluster (default)  4 nodes of our H100 partition.",
        "  mycluster-small      Ours, one node.",
        "  (and llava's presets: tiny, 1node, 4node, stage1, stage2)",
    ]
    assert "  tiny             2 CPU processes over gloo: LLM TP2, vision DP2 (colocated); everything trains." in listed


@pytest.mark.parametrize(
    "text, message",
    [
        ("x = 1\n", "has no `recipe = Recipe(...)` and registers no preset (decorate preset functions with `@<recipe>.preset(\"name\")`)"),
        ("from mimo_toolkit.recipes import llava, multi_encoder\n"
         "@llava.recipe.preset('a')\ndef a(): return llava.recipe.build('tiny')\n"
         "@multi_encoder.recipe.preset('b')\ndef b(): return multi_encoder.recipe.build('tiny')\n"
         "l, m = llava.recipe, multi_encoder.recipe\n",
         "has no `recipe = Recipe(...)` and adds presets to several recipes (llava, multi_encoder); give it a `recipe`"),
    ],
)  # fmt: skip
def test_a_recipe_file_without_recipe_or_presets_is_refused(text, message, tmp_path):
    (tmp_path / "mine.py").write_text(text)
    proc = mimo("show", "mine.py", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == f"mimo-toolkit: error: mine.py {message}\n"
