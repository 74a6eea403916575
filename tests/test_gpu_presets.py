"""The GPU presets' Slurm defaults (issue #16): CPUs for the node's ranks (also on srun, which
Slurm >= 22.05 no longer tells), whole-node memory, NCCL settings, collective timeouts, and
the container + venv case. Rendering only: torch-free, no cluster needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_toolkit.launch import render_job
from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.schedulers.slurm import SBATCH_SCRIPT

SCRIPT = str(Path(sys.executable).parent / "mimo-toolkit")


def sbatch(preset: str, *sets: str) -> str:
    return render_job(resolve_job("llava", preset, sets=list(sets)), "slurm", "/scratch/runs/x")[SBATCH_SCRIPT]


def srun_words(script: str) -> list[str]:
    """The srun options of the LAUNCH array, up to the interpreter."""
    block = script[script.index("LAUNCH=(") : script.index("\n)\n", script.index("LAUNCH=("))]
    words = block.split()[1:]
    return words[: next(i for i, w in enumerate(words) if w.startswith(("python", "'python")))]


@pytest.mark.parametrize("preset", ["1node", "4node"])
def test_gpu_presets_get_whole_nodes_and_pass_their_cpus_to_srun(preset):
    script = sbatch(preset)
    assert "#SBATCH --exclusive" in script and "#SBATCH --mem=0" in script
    assert '--cpus-per-task="$SLURM_CPUS_ON_NODE"' in srun_words(script)
    for line in ("export CUDA_DEVICE_MAX_CONNECTIONS=1", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=3",
                 "export NCCL_DEBUG=WARN"):
        assert line in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_explicit_cpus_go_to_sbatch_and_srun():
    script = sbatch("1node", "cluster.cpus_per_task=96", "cluster.exclusive=false")
    assert "#SBATCH --cpus-per-task=96" in script and "--cpus-per-task=96" in srun_words(script)
    assert "#SBATCH --exclusive" not in script


def test_heterogeneous_slurm_jobs_need_explicit_cpus():
    """A hetjob's components may be different node types: the batch host's CPU count is not used."""
    from mimo_toolkit.errors import UserError

    with pytest.raises(UserError, match=r"^cluster.hetjob with cluster.gpus_per_node=8 needs cluster.cpus_per_task"):
        sbatch("4node", "cluster.hetjob=true")
    words = srun_words(sbatch("4node", "cluster.hetjob=true", "cluster.cpus_per_task=64"))
    assert "--cpus-per-task=64" in words and '--cpus-per-task="$SLURM_CPUS_ON_NODE"' not in words


def test_cpu_preset_leaves_cpus_to_slurm():
    assert not any(w.startswith("--cpus-per-task") for w in srun_words(sbatch("tiny")))


def test_collectives_wait_ten_minutes_by_default():
    """A checkpoint barrier waits on synchronous saves; 60 s ended healthy GPU jobs. A dead rank
    is still detected in seconds by the failure board (test_killed_rank_ends_every_rank_and_is_named)."""
    for preset in ("1node", "tiny"):
        assert resolve_job("llava", preset).config.train.timeout_s == 600
    assert resolve_job("llava", "1node", sets=["train.timeout_s=1800"]).config.train.timeout_s == 1800


@pytest.mark.parametrize("sets, message", [
    (["cluster.exclusive=false"],
     "cluster.gpus_per_node=8 with neither cluster.exclusive nor cluster.cpus_per_task: Slurm would give the "
     "node's 8 ranks one CPU; set cluster.exclusive=true (whole nodes) or cluster.cpus_per_task=N (CPUs for all "
     "ranks of a node)"),
    (["cluster.container_image=/images/mimo.sqsh", "cluster.venv=/shared/venv", "cluster.container_mounts=[\"/data:/data\"]"],
     "cluster.venv=/shared/venv is activated on the host and reaches the container only through PATH: mount it at "
     "the same path (add /shared/venv:/shared/venv to cluster.container_mounts), or for a venv inside the image leave "
     "cluster.venv unset and set cluster.python to its interpreter"),
])  # fmt: skip
def test_unsafe_slurm_settings_are_refused_before_anything_is_written(tmp_path, sets, message):
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([SCRIPT, "render", "llava", "-p", "1node", "-s", "slurm", "-o", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"mimo-toolkit: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_mounted_venv_renders(tmp_path):
    script = sbatch("1node", "cluster.container_image=/images/mimo.sqsh", "cluster.venv=/shared/venv/py311",
                    "cluster.container_mounts=[\"/shared:/shared:ro\"]")
    assert "source /shared/venv/py311/bin/activate" in script and "--container-mounts=/shared:/shared:ro" in script


def test_other_schedulers_do_not_apply_slurm_rules(tmp_path):
    proc = subprocess.run([SCRIPT, "render", "llava", "-p", "1node", "-s", "torchx", "-o", str(tmp_path / "out"),
                           "--set", "cluster.exclusive=false"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out/job.json").read_text())["job"]["cluster"]["exclusive"] is False


def test_gpu_check_script_parses_and_its_jobs_validate():
    """scripts/gpu_check.sh cannot run here (no GPU; its --cpu mode takes minutes): its bash
    must parse and every job it would start on the GPU must pass render-time validation."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["bash", "-n", str(repo / "scripts/gpu_check.sh")], check=True)
    sys.path.insert(0, str(repo / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    gpu = [*gpu_check.ONE_RANK, "cluster.gpus_per_node=1", "train.precision=bf16"]
    speed = resolve_job("llava", "1node", sets=[*gpu, *gpu_check.LLAVA_1B, "train.micro_batch_size=8",
                                                "train.global_batch_size=16"])
    assert speed.world_size == 1 and speed.config.train.micro_batch_size == 8
    assert resolve_job("llava", "tiny", sets=gpu).world_size == 1


def test_gpu_check_counts_skips_apart_and_refuses_unknown_phases(tmp_path):
    """A check the machine cannot run (no transformer-engine) is SKIP, not a failure; a rerun
    of some phases (``--only``) names only real ones."""
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    report = gpu_check.Report()
    report.check("a", True)
    report.skip("b", "not installed")
    report.check("c", False)
    assert report.failures == 1 and [c["ok"] for c in report.checks] == [True, None, False]
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--cpu", "--out", str(tmp_path), "--only", "environment,speeed"])
    assert exit_info.value.code == 2 and not (tmp_path / "gpu_check.json").exists()
