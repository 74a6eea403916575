"""Rendering: golden files, bash syntax, the Slurm script's behaviour under a fake Slurm,
the TorchX files read back by TorchX itself, and template overrides.

Regenerate the golden files after an intended change with
``MIMO_REGEN_GOLDEN=1 pytest tests/test_render.py`` and review the diff.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from mimo_toolkit import components, render
from mimo_toolkit.errors import UserError
from mimo_toolkit.launch import render_job, write_job
from mimo_toolkit.schedulers.slurm import SBATCH_SCRIPT, slurm_context
from mimo_toolkit.schedulers.torchx import TORCHX_CONFIG, TORCHX_SCRIPT, torchx_context
from mimo_toolkit.resolve import load_manifest, resolve_job
from mimo_toolkit.run_dir import RunDir

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_RUN_DIR = "/scratch/runs/golden"
REPO = Path(__file__).resolve().parents[1]
MATRIX = [(r, p, s) for r in ("llava", "multi_encoder") for p in ("tiny", "1node", "4node") for s in ("slurm", "torchx")]

# ---- helpers (test_quoting.py uses them too) ------------------------------------------

FAKE_SRUN = r"""#!/bin/bash
# Records its argv and environment; then exits, or behaves like ranks being preempted.
printf '%s\0' "$@" > "$FAKE_OUT/srun.argv"
env -0 > "$FAKE_OUT/srun.env"
for ((i = 1; i < $#; i++)); do [[ ${!i} == --run-dir ]] && { j=$((i + 1)); RUN=${!j}; }; done
if [[ ${FAKE_SRUN:-0} == preempt ]]; then  # the trap is set before the test may signal
  trap 'printf "{\n  \"reason\": \"preempted\"\n}\n" > "$RUN/exit_status.json"; exit 75' USR2 TERM
  touch "$FAKE_OUT/srun.started"
  for _ in $(seq 500); do sleep 0.02; done  # a test that never signals still ends
fi
touch "$FAKE_OUT/srun.started"
if [[ ${FAKE_SRUN:-0} == completed-then-killed ]]; then
  printf '{\n  "reason": "completed"\n}\n' > "$RUN/exit_status.json"
  exit 137
fi
exit "${FAKE_SRUN:-0}"
"""

FAKE_SCONTROL = r"""#!/bin/bash
case "$1 $2" in
  "show hostnames") if [[ $3 == "node[1-2]" ]]; then printf 'node1\nnode2\n'; else printf '%s\n' ${3//,/ }; fi ;;
  "show node") printf 'NodeName=%s Arch=x86_64\n   NodeAddr=10.1.2.3 NodeHostName=h Version=22.05\n' "$3" ;;
  "show job") printf 'JobId=%s JobName=x\n   JobState=%s Reason=None\n' "$3" "${FAKE_JOB_STATE:-RUNNING}" ;;
  requeue*) echo "$2" >> "$FAKE_OUT/requeued" ;;
esac
"""


def fake_bin(tmp: Path, **scripts: str) -> Path:
    """A directory of executables named after the keyword arguments."""
    bindir = tmp / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        path = bindir / name
        path.write_text(text)
        path.chmod(0o755)
    return bindir


def slurm_env(tmp: Path, nodes: int, **extra: str) -> dict:
    bindir = fake_bin(tmp, srun=FAKE_SRUN, scontrol=FAKE_SCONTROL)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    return {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp),
        "FAKE_OUT": str(out),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_CPUS_ON_NODE": "112",  # set by Slurm in every batch step
        **extra,
    }


def read_nul(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1]


def read_env(path: Path) -> dict:
    return dict(item.split("=", 1) for item in read_nul(path))


def bash_syntax_ok(path: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def env_block(script: str) -> str:
    """The export lines between the template's environment markers."""
    start = script.index("# >>> environment")
    return script[start : script.index("# <<< environment", start)]


def sbatch_directives(script: str) -> list[str]:
    """The arguments sbatch reads from the #SBATCH lines (Slurm's own parsing rules:
    quotes group, backslash escapes, an unescaped # ends the line; parsing stops at the
    first line that is not a comment)."""
    args = []
    for line in script.split("\n")[1:]:  # Slurm splits lines on \n only, and words on ASCII space
        if not line.startswith("#"):
            break
        if not line.startswith("#SBATCH"):
            continue
        word, quote, escaped = "", "", False
        for c in line[len("#SBATCH") :]:
            if escaped:
                word, escaped = word + c, False
            elif c == "\\":
                escaped = True
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    word += c
            elif c in "\"'":
                quote = c
            elif c == "#":
                break
            elif c in " \t\v\f\r":
                if word:
                    args.append(word)
                word = ""
            else:
                word += c
        if word:
            args.append(word)
    return args


def render_files(recipe, preset, scheduler, run_dir=GOLDEN_RUN_DIR, **kw):
    return render_job(resolve_job(recipe, preset, **kw), scheduler, run_dir)


# ---- golden files ------------------------------------------------------------------------


def without_provenance(files: dict[str, str]) -> dict[str, str]:
    """job.json's ``provenance`` names this checkout's commit: left out of golden files
    (test_provenance_and_snapshot checks it)."""
    data = json.loads(files["job.json"])
    assert set(data.pop("provenance")) == {"toolkit_version", "toolkit", "recipe"}
    return {**files, "job.json": json.dumps(data, indent=2, sort_keys=True) + "\n"}


@pytest.mark.parametrize("recipe, preset, scheduler", MATRIX)
def test_golden(recipe, preset, scheduler):
    assert_golden(GOLDEN / f"{recipe}-{preset}-{scheduler}", without_provenance(render_files(recipe, preset, scheduler)))


def assert_golden(folder: Path, files: dict[str, str]) -> None:
    """``files`` equal the golden folder byte for byte (MIMO_REGEN_GOLDEN=1 rewrites it)."""
    if os.environ.get("MIMO_REGEN_GOLDEN"):
        shutil.rmtree(folder, ignore_errors=True)
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(text.encode())
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert on_disk == sorted(files), "golden files differ in names; regenerate with MIMO_REGEN_GOLDEN=1"
    for rel, text in files.items():
        assert text.encode() == (folder / rel).read_bytes(), f"{folder / rel} differs"


@pytest.mark.parametrize("recipe, preset, scheduler", MATRIX)
def test_rendered_scripts_parse(recipe, preset, scheduler, tmp_path):
    files = render_files(recipe, preset, scheduler, run_dir=tmp_path)
    for rel, text in files.items():
        if rel.endswith((".sh", ".sbatch")):
            (tmp_path / "s").write_text(text)
            bash_syntax_ok(tmp_path / "s")
    resolved = load_manifest(json.loads(files["job.json"]))
    assert resolved.config.config_hash() == resolve_job(recipe, preset).config.config_hash()


def test_sbatch_directives_sized_to_the_job():
    sets = ["cluster.partition=gpu,batch", "cluster.qos=high", "train.global_batch_size=2016"]
    files = render_files("multi_encoder", "4node", "slurm", nodes=8, sets=sets)
    args = sbatch_directives(files[SBATCH_SCRIPT])
    assert "--nodes=8" in args and "--gpus-per-node=8" in args and "--ntasks-per-node=1" in args
    assert "--partition=gpu,batch" in args and "--qos=high" in args and "--exclusive" in args
    assert "--signal=B:USR2@300" in args and "--requeue" in args and "--open-mode=append" in args
    assert f"--output={GOLDEN_RUN_DIR}/logs/%x-%j.out" in args
    assert not any(a.startswith(("--account", "--gpus-per-node=0", "--dependency")) for a in args)
    cpu = sbatch_directives(render_files("llava", "tiny", "slurm")[SBATCH_SCRIPT])
    assert not any(a.startswith("--gpus") for a in cpu) and "--signal=B:USR2@60" in cpu


# ---- the Slurm script under a fake Slurm -------------------------------------------------


def run_sbatch_script(tmp_path, sets=(), nodes=4, background=False, resolved=None, run_dir=None, **env):
    """Write the job (llava/4node with ``sets`` unless ``resolved``) and run its script
    under the fake Slurm; returns (exit code, output, run dir) or, in the background,
    (process, run dir)."""
    run_dir = run_dir or tmp_path / "run"
    write_job(resolved or resolve_job("llava", "4node", sets=list(sets)), "slurm", run_dir)
    cmd = ["bash", str(run_dir / SBATCH_SCRIPT)]
    proc = subprocess.Popen(
        cmd, env=slurm_env(tmp_path, nodes, **env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,  # its own process group: finish() can end strays
    )  # fmt: skip
    if background:
        return proc, run_dir
    return (*finish(proc), run_dir)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for the script, then end anything it left running (a fake srun, tee)."""
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out


def attempt_log(run_dir: Path, expect: str, restart: int = 0) -> str:
    """The attempt's tee'd log once it shows ``expect`` (tee may flush after the script exits)."""
    path = run_dir / "logs" / f"slurm-4242-{restart}.out"
    text = ""
    for _ in range(250):
        text = path.read_text() if path.exists() else ""
        if expect in text:
            break
        time.sleep(0.02)
    return text


def test_script_launches_one_torchrun_per_node(tmp_path):
    code, out, run_dir = run_sbatch_script(tmp_path, sets=["cluster.container_image=/img/x.sqsh", "cluster.container_mounts=/data:/data"])
    assert code == 0, out
    argv = read_nul(tmp_path / "out" / "srun.argv")
    assert argv[:3] == ["--kill-on-bad-exit=1", "--wait=60", "--ntasks-per-node=1"]
    assert argv[3] == "--cpus-per-task=112"  # the exclusive node's CPUs, for the task running all its ranks
    assert argv[4:8] == ["--container-image=/img/x.sqsh", "--container-mounts=/data:/data", "--no-container-mount-home", "python3"]
    assert "--rdzv-endpoint=10.1.2.3:19242" in argv and "--rdzv-id=4242" in argv and "--nnodes=4" in argv
    assert "--nproc-per-node=8" in argv and "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2" in argv
    tail = argv[len(argv) - 6 :]
    assert tail == ["-m", "mimo_toolkit.train", "--config", str(run_dir / "job.json"), "--run-dir", str(run_dir)]
    env = read_env(tmp_path / "out" / "srun.env")
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}] "
    assert "srun exited with status 0" in attempt_log(run_dir, "srun exited")
    assert not (tmp_path / "out" / "requeued").exists()


def wait_started(tmp_path: Path) -> None:
    """Until the fake srun runs (the trap is set before srun starts)."""
    for _ in range(500):
        if (tmp_path / "out" / "srun.started").exists():
            return
        time.sleep(0.01)
    raise AssertionError("srun never started")


@pytest.mark.parametrize(
    "sig, env, code, requeued, restart, expect",
    [
        # the --signal=B:USR2 warning: the ranks save, the job is requeued
        (signal.SIGUSR2, {}, 0, True, 0, "requeueing (restart 1 of 3)"),
        # scancel: SIGTERM while Slurm ends the job (22.05 would requeue a COMPLETING job)
        (signal.SIGTERM, {"FAKE_JOB_STATE": "COMPLETING"}, 75, False, 0, "Slurm is ending the job (COMPLETING): a preempted --requeue job is requeued by Slurm itself"),
        # cluster.max_restarts reached
        (signal.SIGTERM, {"SLURM_RESTART_COUNT": "3"}, 75, False, 3, "cluster.max_restarts=3 reached"),
    ],
)  # fmt: skip
def test_script_preemption(sig, env, code, requeued, restart, expect, tmp_path):
    proc, run_dir = run_sbatch_script(tmp_path, background=True, FAKE_SRUN="preempt", **env)
    wait_started(tmp_path)
    proc.send_signal(sig)
    status, out = finish(proc)
    assert status == code, out
    assert (tmp_path / "out" / "requeued").exists() == requeued
    if requeued:
        assert (tmp_path / "out" / "requeued").read_text() == "4242\n"
    log = attempt_log(run_dir, expect, restart=restart)
    assert f"received SIG{sig.name[3:]}; forwarding it" in log and expect in log


def test_script_exits_with_sruns_status_and_does_not_requeue_failures(tmp_path):
    code, out, run_dir = run_sbatch_script(tmp_path, FAKE_SRUN="3")
    assert code == 3
    assert not (tmp_path / "out" / "requeued").exists()
    assert "srun exited with status 3" in attempt_log(run_dir, "srun exited")


def test_script_succeeds_when_training_completed_but_shutdown_was_signalled(tmp_path):
    """A late time-limit warning can reach torchrun after the run finished and saved; the
    run's own exit_status.json ("completed") decides, not torchrun's exit code."""
    code, out, run_dir = run_sbatch_script(tmp_path, FAKE_SRUN="completed-then-killed")
    assert code == 0
    assert not (tmp_path / "out" / "requeued").exists()
    assert "training completed (srun exited with status 137" in attempt_log(run_dir, "training completed")


def test_script_refuses_a_different_node_count(tmp_path):
    code, out, _ = run_sbatch_script(tmp_path, nodes=3)
    assert code == 2 and "rendered for 4 node(s) but the job has 3" in out
    assert not (tmp_path / "out" / "srun.argv").exists()


# ---- TorchX ------------------------------------------------------------------------------


def run_torchx_script(tmp_path, resolved, fake_torchx=None, run_dir=None):
    """Write the job and run torchx.sh with a torchx that records its argv and environment."""
    run_dir = run_dir or tmp_path / "run"
    write_job(resolved, "torchx", run_dir)
    recorder = '#!/bin/bash\nprintf "%s\\0" "$@" > "$FAKE_OUT/torchx.argv"\nenv -0 > "$FAKE_OUT/torchx.env"\n'
    bindir = fake_bin(tmp_path, torchx=fake_torchx or recorder)
    (tmp_path / "out").mkdir(exist_ok=True)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_OUT": str(tmp_path / "out"), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(run_dir / TORCHX_SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return proc, run_dir


def test_torchx_script_runs_the_component_sized_to_the_job(tmp_path):
    from torchx.runner.config import load
    from torchx.specs.builders import materialize_appdef

    resolved = resolve_job("llava", "4node", nodes=8, env=["NCCL_DEBUG=INFO"], sets=[
        "train.global_batch_size=2016", "cluster.partition=batch", "cluster.account=acct", "cluster.cpus_per_task=32",
        "cluster.mem=500G", "cluster.max_restarts=2",
    ])  # fmt: skip
    proc, run_dir = run_torchx_script(tmp_path, resolved)
    assert proc.returncode == 0, proc.stderr
    argv = read_nul(tmp_path / "out" / "torchx.argv")
    assert argv[:4] == ["run", "-s", "slurm", "mimo.train"]
    app = materialize_appdef(components.train, argv[4:])  # TorchX's own parsing of the arguments
    role = app.roles[0]
    assert role.num_replicas == 8 and role.resource.gpu == 8 and role.resource.cpu == 32
    assert role.resource.memMB == 500 * 1024 and role.max_retries == 2
    assert role.env["NCCL_DEBUG"] == "INFO" and role.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert f"--config {run_dir}/job.json --run-dir {run_dir}" in role.args[1]
    assert "--nnodes=8 --nproc-per-node=8" in role.args[1]
    env = read_env(tmp_path / "out" / "torchx.env")
    assert env["SBATCH_ACCOUNT"] == "acct" and env["SBATCH_EXCLUSIVE"] == "exclusive"
    cfg: dict = {}
    with open(env["TORCHXCONFIG"]) as f:
        load("slurm", f, cfg)
    assert cfg["partition"] == "batch" and cfg["time"] == "04:00:00"
    assert cfg["comment"] == f"mimo-toolkit llava/4node config {resolved.config.config_hash()}"


def test_torchx_dryrun_prints_a_sane_sbatch(tmp_path):
    real = Path(sys.executable).parent / "torchx"
    wrapper = f'#!/bin/bash\nexec {real} "$1" --dryrun "${{@:2}}"\n'  # run -> run --dryrun
    resolved = resolve_job("multi_encoder", "4node", sets=["cluster.partition=batch"])
    proc, run_dir = run_torchx_script(tmp_path, resolved, fake_torchx=wrapper)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("#SBATCH --job-name=multi_encoder-4node-") == 4  # one hetjob group per node
    assert "--partition=batch --time=04:00:00" in out and "--gpus-per-task=8" in out
    assert f"-m mimo_toolkit.train --config {run_dir}/job.json --run-dir {run_dir}" in out


def test_torchx_rejects_what_torchx_cannot_carry():
    with pytest.raises(UserError, match=r"^cluster.container_image: TorchX 0.7's slurm scheduler cannot set it"):
        render_files("llava", "4node", "torchx", sets=["cluster.container_image=/x.sqsh"])
    with pytest.raises(UserError, match=r"^env A='x=y': TorchX's --env"):
        render_files("llava", "4node", "torchx", env=["A=x=y"])
    with pytest.raises(UserError, match=r"^cluster.mem='lots'"):
        render_files("llava", "4node", "torchx", sets=["cluster.mem=lots"])


def test_every_launcher_runs_the_same_torchrun_words(tmp_path):
    """The torchrun command line is built once (mimo_toolkit/torchrun.py): the batch script
    and the TorchX component run the same words, up to the values only each launcher knows."""
    from torchx.specs import macros

    code, out, run_dir = run_sbatch_script(tmp_path)
    assert code == 0, out
    srun = read_nul(tmp_path / "out" / "srun.argv")
    sbatch_words = srun[srun.index("python3"):]
    role = components.train(str(run_dir / "job.json"), str(run_dir), nnodes=4, nproc_per_node=8).roles[0]
    role = macros.Values(img_root="", app_id="4242", replica_id="0", rank0_env="HEAD").apply(role)
    env = {"HEAD": "10.1.2.3"}
    command = subprocess.run(["bash", "-c", "printf '%s\\0' " + role.args[1].removeprefix("exec ")],
                             env=env, capture_output=True, text=True).stdout.split("\0")[:-1]
    assert command == [w.replace("10.1.2.3:19242", "10.1.2.3:29500") for w in sbatch_words]
    single = components.train("/r/job.json", "/r", nnodes=1, nproc_per_node=4).roles[0]
    assert "--rdzv-endpoint=localhost:0" in single.args[1]


# ---- templates -----------------------------------------------------------------------------


def test_template_dir_overrides_by_name(tmp_path):
    (tmp_path / "slurm.sbatch.j2").write_text("#!/bin/bash\necho {{ job.job_name | shquote }} {{ nodes }}\n")
    resolved = resolve_job("llava", "4node", job_name="it's")
    slurm = render_job(resolved, "slurm", "/r", template_dir=tmp_path)
    assert slurm[SBATCH_SCRIPT] == "#!/bin/bash\necho 'it'\"'\"'s' 4\n"
    torchx = render_job(resolved, "torchx", "/r", template_dir=tmp_path)  # falls back to the package
    assert torchx[TORCHX_SCRIPT].startswith("#!/bin/bash\n# mimo-toolkit")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{{ nope }}", "template slurm.sbatch.j2: 'nope' is undefined (see templates/README.md for the variables)"),
        ("{% if %}", "template slurm.sbatch.j2: line 1: Expected an expression, got 'end of statement block'"),
        ("{{ job.job_name }} && {{ '<x>' }}", None),
    ],
)
def test_template_errors_are_one_line(tmp_path, text, message):
    (tmp_path / "slurm.sbatch.j2").write_text(text)
    resolved = resolve_job("llava", "tiny")
    if message is None:  # autoescape is off: && and <> stay as written
        assert render_job(resolved, "slurm", "/r", template_dir=tmp_path)[SBATCH_SCRIPT] == "llava-tiny && <x>"
        return
    with pytest.raises(UserError) as info:
        render_job(resolved, "slurm", "/r", template_dir=tmp_path)
    assert str(info.value) == message


def test_templates_load_through_importlib_resources_from_a_zip(tmp_path, monkeypatch):
    archive = tmp_path / "templates.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_templates/__init__.py", "")
        z.writestr("zipped_templates/slurm.sbatch.j2", "zipped {{ nodes }}\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.setattr(render, "PACKAGE_TEMPLATES", "zipped_templates")
    assert render_job(resolve_job("llava", "tiny"), "slurm", "/r")[SBATCH_SCRIPT] == "zipped 1\n"


def test_readme_documents_every_template_variable():
    readme = (REPO / "templates" / "README.md").read_text()
    resolved = resolve_job("llava", "4node")
    names = set(render.context(resolved, "/r")) | set(torchx_context(resolved, RunDir("/r")))
    names |= set(slurm_context(resolved))
    names |= set(render.FILTERS)
    missing = sorted(n for n in names if f"`{n}`" not in readme and f"`{n}(" not in readme)
    assert not missing, f"templates/README.md does not document {missing}"


def test_write_job_refuses_another_configs_run_dir(tmp_path):
    write_job(resolve_job("llava", "tiny"), "slurm", tmp_path)
    write_job(resolve_job("llava", "tiny"), "slurm", tmp_path)  # the same config again is fine
    write_job(resolve_job("llava", "tiny", sets=["train.steps=7"]), "slurm", tmp_path)  # resumable change
    with pytest.raises(UserError, match=r"changed settings \(train.seed: 1234 -> 7\)"):
        write_job(resolve_job("llava", "tiny", sets=["train.seed=7"]), "slurm", tmp_path)
    with pytest.raises(UserError, match=r"another model \(model.llm.num_layers: 2 -> 4\)"):
        write_job(resolve_job("llava", "tiny", sets=["model.llm.num_layers=4"]), "slurm", tmp_path, force=True)
    write_job(resolve_job("llava", "tiny", sets=["train.seed=7"]), "slurm", tmp_path, force=True)
    assert load_manifest(RunDir(tmp_path).read_job()).config.train.seed == 7
    assert (tmp_path / "logs").is_dir() and os.access(tmp_path / SBATCH_SCRIPT, os.X_OK)
    assert not (tmp_path / TORCHX_CONFIG).exists()


# ---- the rest of Slurm: extra flags, dependencies, hetjobs, partial nodes -------------------

HETERO_3 = ["layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1", "layout.llm.dp=2",
            "layout.llm.rank_offset=1"]


def test_extra_flags_and_dependency_reach_sbatch_and_srun(tmp_path):
    sets = ["cluster.sbatch_extra=--gres=gpu:8,--mail-type=END,--comment=a b#c", "cluster.srun_extra=--mpi=pmix",
            "cluster.after=1234:afternotok"]
    files = render_files("llava", "4node", "slurm", sets=sets)
    args = sbatch_directives(files[SBATCH_SCRIPT])
    assert {"--gres=gpu:8", "--mail-type=END", "--comment=a b#c", "--dependency=afternotok:1234"} <= set(args)
    assert "--dependency=afterok:77" in sbatch_directives(
        render_files("llava", "4node", "slurm", sets=["cluster.after=77"])[SBATCH_SCRIPT])
    code, out, _ = run_sbatch_script(tmp_path, sets=sets)
    assert code == 0, out
    argv = read_nul(tmp_path / "out" / "srun.argv")
    assert argv[:5] == ["--kill-on-bad-exit=1", "--wait=60", "--ntasks-per-node=1", "--cpus-per-task=112", "--mpi=pmix"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["cluster.sbatch_extra=gres=gpu:8"], "cluster.sbatch_extra entry 'gres=gpu:8': expected one --flag or --flag=value on one line"),
        (['cluster.srun_extra=["--x\\ny"]'], "cluster.srun_extra entry '--x\\ny': expected one --flag or --flag=value on one line"),
        (["cluster.after=12:later"], "cluster.after='12:later': expected JOBID[:afterok|afterany|afternotok], e.g. 1234:afterok"),
        (["cluster.groups.audio.partition=x"], "--set cluster.groups.audio.partition: unknown key"),
        (["cluster.hetjob=true"], "cluster.hetjob=true needs layout.mode=heterogeneous (modules on their own nodes), not colocated"),
    ],
)  # fmt: skip
def test_bad_slurm_settings_are_one_line_errors(sets, message):
    with pytest.raises(UserError) as info:
        render_files("llava", "tiny", "slurm", sets=sets)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_hetjob_components_and_node_placement(tmp_path):
    sets = [*HETERO_3, "layout.llm.rank_offset=2", "layout.vision.dp=2", "cluster.procs_per_node=2", "cluster.nodes=2",
            "cluster.hetjob=true", "cluster.groups.vision.partition=old", "cluster.groups.vision.constraint=v100"]
    resolved = resolve_job("llava", "tiny", sets=sets)
    script = render_job(resolved, "slurm", "/r")[SBATCH_SCRIPT]
    args = sbatch_directives(script)
    het = args.index("hetjob")
    first, second = args[:het], args[het + 1:]
    assert "--partition=old" in first and "--constraint=v100" in first and "--signal=B:USR2@60" in first
    assert "--nodes=1" in second and not any(a.startswith(("--partition", "--signal", "--output")) for a in second)
    code, out, _ = run_sbatch_script(tmp_path, resolved=resolved, SLURM_JOB_NODELIST_HET_GROUP_0="node1",
                                     SLURM_JOB_NODELIST_HET_GROUP_1="node2")
    assert code == 0, out
    argv = read_nul(tmp_path / "out" / "srun.argv")
    assert argv[3] == "--het-group=0-1"
    # each node's task takes its node rank from Slurm: ranks follow the component order
    prefix = argv.index("bash")
    assert argv[prefix + 3] == "mimo-node" and "PROCS=(2 2)" in argv[prefix + 2]
    assert "--rdzv-backend=static" in argv and "--nnodes=2" in argv and not any(a.startswith("--nproc") for a in argv)
    with pytest.raises(UserError, match=r"^cluster.hetjob: node 0 holds ranks of llm and vision"):
        render_files("llava", "tiny", "slurm", sets=[*HETERO_3, "cluster.procs_per_node=2", "cluster.nodes=None",
                                                     "cluster.allow_partial_nodes=true", "cluster.hetjob=true"])
    with pytest.raises(UserError, match=r"^cluster.hetjob: TorchX's component runs one role"):
        render_job(resolved, "torchx", "/r")


def test_partial_nodes_run_fewer_processes_on_the_last_node(tmp_path):
    """3 ranks on nodes of 2: refused unless allowed, then 2 + 1 processes."""
    sets = [*HETERO_3, "cluster.procs_per_node=2", "cluster.nodes=None"]
    with pytest.raises(UserError, match=r"cluster.allow_partial_nodes=true runs 1 process\(es\) on the last node"):
        resolve_job("llava", "tiny", sets=sets)
    resolved = resolve_job("llava", "tiny", sets=[*sets, "cluster.allow_partial_nodes=true"])
    assert (resolved.world_size, resolved.nodes, resolved.node_procs) == (3, 2, [2, 1])
    code, out, _ = run_sbatch_script(tmp_path, resolved=resolved, nodes=2)
    assert code == 0, out
    argv = read_nul(tmp_path / "out" / "srun.argv")
    script = argv[argv.index("bash") + 2]
    for node, procs in ((0, "2"), (1, "1")):  # what each node's task exports for torchrun
        probe = subprocess.run(["bash", "-c", script, "mimo-node", "bash", "-c", 'echo "$PET_NODE_RANK $PET_NPROC_PER_NODE"'],
                               env={"SLURM_NODEID": str(node), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
        assert probe.stdout.split() == [str(node), procs], probe.stderr
    with pytest.raises(UserError, match=r"^cluster.allow_partial_nodes: this layout runs \[2, 1\] processes per node"):
        render_job(resolved, "torchx", "/r")


@pytest.mark.parametrize("mode_sets", [
    [],  # colocated
    ["layout.mode=homogeneous", "layout.llm.tp=1", "layout.vision.tp=1"],
    ["layout.mode=heterogeneous", "layout.vision.dp=1", "layout.llm.tp=1", "layout.llm.dp=1", "layout.llm.rank_offset=1"],
])  # fmt: skip
def test_nodes_equal_to_the_layouts_own_count_is_a_no_op(mode_sets):
    plain = resolve_job("llava", "tiny", sets=mode_sets)
    same = resolve_job("llava", "tiny", sets=mode_sets, nodes=plain.nodes)
    assert same.config.layout == plain.config.layout and same.world_size == plain.world_size


def test_dependency_on_torchx(tmp_path):
    """TorchX's slurm scheduler gets the dependency through sbatch's input variable; other
    TorchX schedulers have none, and say so."""
    resolved = resolve_job("llava", "4node", sets=["cluster.after=99:afterany"])
    proc, _ = run_torchx_script(tmp_path, resolved)
    assert proc.returncode == 0, proc.stderr
    assert read_env(tmp_path / "out" / "torchx.env")["SBATCH_DEPENDENCY"] == "afterany:99"
    with pytest.raises(UserError, match=r"^cluster.after: TorchX's local_cwd scheduler has no job dependencies"):
        render_files("llava", "4node", "torchx", sets=["cluster.after=99", "cluster.torchx_scheduler=local_cwd"])


def test_provenance_and_snapshot(tmp_path):
    """job.json names the toolkit's and the recipe's commit and dirty state; with
    cluster.snapshot the launch environment imports the copy in RUN_DIR/snapshot."""
    recipe = tmp_path / "mine.py"
    recipe.write_text("from mimo_toolkit.recipes.llava import recipe as llava\n\n"
                      "@llava.preset('mine')\ndef mine():\n    return llava.build('tiny')\n")
    resolved = resolve_job(str(recipe), "mine", sets=["cluster.snapshot=true"])
    files = write_job(resolved, "slurm", tmp_path / "run")
    prov = json.loads((tmp_path / "run" / "job.json").read_text())["provenance"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["toolkit"]["git_commit"] == head and isinstance(prov["toolkit"]["git_dirty"], bool)
    assert prov["recipe"] == {"path": str(recipe), "git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    snap = tmp_path / "run" / "snapshot"
    assert snap in files and (snap / "recipe" / "mine.py").read_text() == recipe.read_text()
    assert (snap / "mimo_toolkit" / "train.py").exists() and (snap / "mimo_toolkit" / "recipes" / "llava.py").exists()
    assert (snap / "mimo_toolkit" / "templates" / "slurm.sbatch.j2").exists()
    assert not list(snap.rglob("__pycache__"))
    probe = subprocess.run(["bash", "-c", env_block((tmp_path / "run" / SBATCH_SCRIPT).read_text())
                            + "\npython3 -c 'import mimo_toolkit; print(mimo_toolkit.__file__)'"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert probe.stdout.strip() == str(snap / "mimo_toolkit" / "__init__.py"), probe.stderr


# ---- sweeps ----------------------------------------------------------------------------------


def sweep_request(tmp_path, scheduler="slurm", sweeps=("train.lr=1e-3,5e-4", "train.seed=1,2"), throttle=None, sets=()):
    from mimo_toolkit.launch import materialize_sweep
    from mimo_toolkit.sweep import expand

    elements = expand(sweeps, lambda extra: resolve_job("llava", "tiny", sets=[*sets, *extra]))
    return materialize_sweep(elements, scheduler, tmp_path / "sweep", throttle=throttle)


def test_sweep_array_runs_each_elements_own_script(tmp_path):
    from mimo_toolkit.schedulers.base import write_files
    from mimo_toolkit.schedulers.slurm import ARRAY_SCRIPT

    request = sweep_request(tmp_path, throttle=2)
    names = [e.name for e in request.elements]
    assert names == ["lr=1e-3_seed=1", "lr=1e-3_seed=2", "lr=5e-4_seed=1", "lr=5e-4_seed=2"]
    script = request.array.files[ARRAY_SCRIPT]
    args = sbatch_directives(script)
    assert "--array=0-3%2" in args and f"--output={tmp_path}/sweep/logs/%x-%A_%a.out" in args
    for element, part in zip(request.elements, request.parts):
        write_files(part, element.resolved)
    write_files(request.array, request.elements[0].resolved, force=True)
    bash_syntax_ok(tmp_path / "sweep" / ARRAY_SCRIPT)
    env = slurm_env(tmp_path, nodes=1, SLURM_ARRAY_TASK_ID="2")
    proc = subprocess.run(["bash", str(tmp_path / "sweep" / ARRAY_SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    argv = read_nul(tmp_path / "out" / "srun.argv")
    assert argv[-4:] == ["--config", f"{tmp_path}/sweep/lr=5e-4_seed=1/job.json", "--run-dir",
                         f"{tmp_path}/sweep/lr=5e-4_seed=1"]
    config = json.loads((tmp_path / "sweep" / "lr=5e-4_seed=1" / "job.json").read_text())["job"]["train"]
    assert (config["lr"], config["seed"]) == (5e-4, 1)


@pytest.mark.parametrize(
    "sweeps, sets, message",
    [
        (["train.nope=1,2"], [], "--sweep element train.nope=1: --set train.nope: unknown key"),
        (["train.lr=fast,1e-3"], [], "--sweep element train.lr=fast: "),
        (["train.lr"], [], "--sweep 'train.lr': expected KEY=V1,V2,..."),
        (["train.lr=1e-3,1e-3"], [], "--sweep 'train.lr=1e-3,1e-3': values must be non-empty and distinct"),
        (["cluster.time=00:10:00,00:20:00"], [], "--sweep element cluster.time=00:20:00: its Slurm resources differ"),
    ],
)  # fmt: skip
def test_bad_sweeps_are_one_line_errors(tmp_path, sweeps, sets, message):
    with pytest.raises(UserError) as info:
        sweep_request(tmp_path, sweeps=sweeps, sets=sets)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "sweep").exists()


def test_sweeps_on_torchx_are_refused_and_local_runs_them_in_turn(tmp_path):
    with pytest.raises(UserError, match=r"^--sweep: --scheduler torchx has no job arrays"):
        sweep_request(tmp_path, scheduler="torchx")
    local = sweep_request(tmp_path, scheduler="local", sweeps=["train.seed=1,2"])
    assert [p.run_dir.name for p in local.parts] == ["seed=1", "seed=2"] and local.array is None
    assert {p.array_id for p in local.parts} == {str(tmp_path / "sweep")}


# ---- Kubernetes through TorchX -----------------------------------------------------------

KUBERNETES = ["cluster.torchx_scheduler=kubernetes", "cluster.image=ghcr.io/example/mimo:1.0", "cluster.cpus_per_task=32",
              "cluster.mem=500G", "cluster.torchx_mounts=type=volume,src=runs-pvc,dst=/scratch/runs",
              "cluster.kubernetes_queue=research"]


def test_kubernetes_job_through_torchx_own_scheduler(tmp_path):
    """torchx.sh for TorchX's kubernetes scheduler, read back by TorchX (component arguments,
    .torchxconfig) and turned into the Volcano job by TorchX's own KubernetesScheduler
    submit_dryrun: golden-tested, with the image, resources, env and entrypoint checked."""
    import yaml
    from torchx.runner.config import load
    from torchx.schedulers.kubernetes_scheduler import KubernetesScheduler
    from torchx.specs.builders import materialize_appdef

    resolved = resolve_job("llava", "4node", sets=KUBERNETES, env=["NCCL_DEBUG=INFO"])
    files = without_provenance(render_job(resolved, "torchx", GOLDEN_RUN_DIR))
    proc, run_dir = run_torchx_script(tmp_path, resolved)  # the same job, run dir under tmp_path
    assert proc.returncode == 0, proc.stderr
    argv = read_nul(tmp_path / "out" / "torchx.argv")
    assert argv[:4] == ["run", "-s", "kubernetes", "mimo.train"]
    cfg: dict = {}
    with open(read_env(tmp_path / "out" / "torchx.env")["TORCHXCONFIG"]) as f:
        load("kubernetes", f, cfg)
    app = materialize_appdef(components.train, argv[4:])
    request = KubernetesScheduler("mimo").submit_dryrun(app, cfg).request
    job = request.resource
    tasks = job["spec"]["tasks"]
    assert job["spec"]["queue"] == "research" and len(tasks) == 4
    container = tasks[0]["template"].spec.containers[0]
    assert container.image == "ghcr.io/example/mimo:1.0"
    assert container.resources.limits == {"cpu": "32000m", "memory": "512000M", "nvidia.com/gpu": "8"}
    env = {e.name: e.value for e in container.env}
    assert env["NCCL_DEBUG"] == "INFO" and env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}] "
    assert f"-m mimo_toolkit.train --config {run_dir}/job.json --run-dir {run_dir}" in container.command[-1]
    assert {m.mount_path for m in container.volume_mounts} == {"/dev/shm", "/scratch/runs"}
    # golden: torchx.sh, .torchxconfig, and the Volcano job TorchX makes of the golden run dir
    golden_app = materialize_appdef(components.train, [f"{k}={v}" for k, v in torchx_context(
        resolved, RunDir(GOLDEN_RUN_DIR))["component_args"]])
    volcano = str(KubernetesScheduler("mimo").submit_dryrun(golden_app, cfg).request)
    name = yaml.safe_load(volcano)["metadata"]["name"]  # TorchX draws a unique app id per dry run
    files["volcano.yaml"] = volcano.replace(name, "APP_ID")
    assert_golden(GOLDEN / "llava-4node-kubernetes", files)


def test_kubernetes_needs_an_image():
    with pytest.raises(UserError, match=r"^cluster.image: TorchX's kubernetes scheduler runs a container image"):
        render_files("llava", "4node", "torchx", sets=["cluster.torchx_scheduler=kubernetes"])
    with pytest.raises(UserError, match=r"^cluster.image: TorchX's slurm scheduler runs no container image"):
        render_files("llava", "4node", "torchx", sets=["cluster.image=x:1"])
