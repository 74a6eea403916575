"""Every shell example in README.md and docs/*.md runs, so a document that drifts from the
code fails here.

Extraction (nothing to register: a new example is picked up by itself):

* a fenced block whose lines start with ``$ `` holds commands (those lines, ``\\``
  continuations joined) and, under each, the output it shows; any other fenced block of
  shell (no language, ``bash``, ``sh``, ``console``) holds one command per line;
* a ```` ```python ```` block whose first line is ``# some/path.py`` is written to that path
  before the file's commands run (``~`` is a scratch home), as a reader would save it;
* a file's commands run in order in one scratch directory (``export`` and the files they
  write carry over), ``mimo-toolkit`` in this process, ``torchx`` as a process.

A command must exit 0, and the output shown under it must appear in its output in order
(``...`` matches anything, a line ending (starting) in ``...`` matches by its beginning
(end), 12-hex config hashes are masked). What cannot run here is said explicitly, in :data:`REWRITES` (how a
command is run instead) and :data:`SKIPPED` (why it is not run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import run_cli

from mimo_toolkit.recipe import iter_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

#: Examples not run here, by a piece of their command, and why.
SKIPPED = {
    "<!-- main-command -->": "installs the package and runs the ~6-minute shapes demo (its own CI step)",
    "<!-- test-command -->": "installs the package and runs this test suite (.ci/run runs it)",
    "status 42": "42 stands for a submitted job's id; test_slurm_examples runs status and cancel on a real one",
    "logs 42": "42 stands for a submitted job's id (logs are tested in tests/test_slurm_e2e.py)",
    " JOB": "JOB stands for a job id or run directory (tests/test_slurm_e2e.py, tests/test_submit_local.py)",
    "eval RUN_DIR": "needs a trained run directory (tests/test_eval.py trains one and evaluates it)",
    "mimo-toolkit export ": "needs a trained run directory (tests/test_hf_export.py converts, trains and exports)",
    "hf download ": "downloads from the Hugging Face hub, which this machine cannot reach (weights are never downloaded here)",
    "calibrate llava": "measures this machine for minutes (tests/test_calibrate.py runs a short calibration)",
    "--profile calib.json": "reads the file `mimo-toolkit calibrate` writes (tests/test_calibrate.py)",
}  # fmt: skip

#: How a command that needs a cluster or trains for minutes is run instead (in order).
REWRITES = [
    # submit: print what it would write and run (the Slurm ones really run in test_slurm_examples)
    (re.compile(r"^(mimo-toolkit submit (?!.*--dry-run).*)$"), r"\1 --dry-run"),
    # torchx on Slurm: TorchX's own dry run (the request it would submit)
    (re.compile(r"^torchx run -s slurm "), "torchx run --dryrun -s slurm "),
    # [--option VALUE] in a synopsis is optional: run without it
    (re.compile(r" \[[^\]]*\]"), ""),
]
#: Examples that train: run by test_training_example only (tiny job, 2 steps).
TRAINS = re.compile(r"^torchx run -s local_cwd mimo\.train --config ")
HASH = re.compile(r"\b[0-9a-f]{12}\b")
#: A line of a block without prompts that is a command (the rest is output or prose).
COMMAND = re.compile(r"^([A-Za-z_]\w*=\S*\s+)*(mimo-toolkit|torchx|export|python3?|bash|scripts/\S+|\.venv/)(\s|$)")


@dataclass
class Example:
    path: Path
    line: int
    command: str
    output: list[str] = field(default_factory=list)
    marker: str = ""
    """The HTML comment just above the block (``<!-- main-command -->``), if any."""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def skip_reason(self) -> str | None:
        text = f"{self.marker} {self.command}"
        return next((why for key, why in SKIPPED.items() if key in text), None)


@dataclass
class DocFile:
    path: Path
    examples: list[Example]
    files: dict[str, str]
    """Paths (as written in the ``# path.py`` comment) -> contents."""


# ---- extraction ----------------------------------------------------------------------------


def _blocks(text: str):
    """(language, first line number, lines, marker) of every fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        above = next((lines[k].strip() for k in range(start - 2, -1, -1) if lines[k].strip()), "")
        yield match.group(1), start + 1, body, above if above.startswith("<!--") else ""
        i += 1


def _commands(body: list[str], first: int):
    """(line number, command, output lines) of one shell block."""
    prompted = any(line.startswith("$ ") for line in body)
    out: list[tuple[int, str, list[str]]] = []
    k = 0
    while k < len(body):
        line = body[k]
        if (prompted and not line.startswith("$ ")) or (not prompted and not COMMAND.match(line)):
            if prompted and out:
                out[-1][2].append(line)
            k += 1
            continue
        number, command = first + k, line[2:] if prompted else line
        while command.rstrip().endswith("\\") and k + 1 < len(body):
            k += 1
            command = command.rstrip()[:-1] + " " + body[k].strip()
        out.append((number, re.sub(r"\s+#\s.*$", "", command).strip(), []))
        k += 1
    return out


def parse(path: Path) -> DocFile:
    doc = DocFile(path, [], {})
    for language, first, body, marker in _blocks(path.read_text()):
        if language == "python":
            head = body[0].strip() if body else ""
            if re.fullmatch(r"#\s*\S+\.py", head):
                doc.files[head.lstrip("#").strip()] = "\n".join(body) + "\n"
        elif language in ("", "bash", "sh", "console"):
            for number, command, output in _commands(body, first):
                while output and not output[-1].strip():
                    output.pop()
                doc.examples.append(Example(path, number, command, output, marker))
    return doc


# ---- running -------------------------------------------------------------------------------


@dataclass
class Session:
    """A reader's shell: a scratch directory, a scratch home and exported variables."""

    cwd: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def expand(self, word: str) -> str:
        return re.sub(r"(^|(?<==))~(?=/|$)", lambda m: m.group(1) + str(self.home), word)

    def run(self, command: str) -> tuple[int, str]:
        """Run ``command`` (``;`` and ``&&`` sequences, ``NAME=VALUE`` prefixes, ``export``);
        returns the last exit code and the output of all its parts."""
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words, output, code = list(lexer), [], 0
        parts: list[list[str]] = [[]]
        for word in words:
            if word in (";", "&&"):
                parts.append([])
            elif word in ("|", "||", "&"):
                raise AssertionError(f"unsupported shell syntax {word!r} in a docs example: {command}")
            else:
                parts[-1].append(self.expand(word))
        for part in filter(None, parts):
            code, text = self._run_one(part)
            output.append(text)
            if code != 0:
                break
        return code, "".join(output)

    def _run_one(self, words: list[str]) -> tuple[int, str]:
        env = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words[:1] == ["export"]:
            for item in words[1:]:
                name, _, value = item.partition("=")
                self.env[name] = value
            return 0, ""
        env = {**self.env, **env, "HOME": str(self.home)}
        if words[0] == "mimo-toolkit":
            result = run_cli(words[1:], env=env)
            return result.code, result.out + result.err
        if words[0] == "torchx":
            full = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
            proc = subprocess.run([str(BIN / "torchx"), *words[1:]], cwd=self.cwd, env=full, capture_output=True,
                                  text=True, timeout=300)
            return proc.returncode, proc.stdout + proc.stderr
        if words[0] in ("python", "python3") and words[1:2] and words[1].startswith("scripts/"):
            full = {**os.environ, **env}  # a repository script, run from the scratch directory
            proc = subprocess.run([sys.executable, str(REPO / words[1]), *words[2:]], cwd=self.cwd, env=full,
                                  capture_output=True, text=True, timeout=300)
            return proc.returncode, proc.stdout + proc.stderr
        raise AssertionError(f"docs example runs {words[0]!r}: add it to tests/test_docs_examples.py")


def rewritten(command: str) -> str:
    for pattern, replacement in REWRITES:
        command = pattern.sub(replacement, command)
    return command


def shown_output_matches(expected: list[str], actual: str) -> str | None:
    """None when every expected line appears in ``actual`` in order; else the first missing."""
    lines = [HASH.sub("<hash>", line.rstrip()) for line in actual.splitlines()]
    at = 0
    for want in expected:
        want = HASH.sub("<hash>", want.rstrip())
        if want.strip() == "...":
            continue
        while at < len(lines):
            at += 1
            if _line_matches(want, lines[at - 1]):
                break
        else:
            return want
    return None


def _line_matches(want: str, have: str) -> bool:
    """Equal, or (``...`` at an end, spaces collapsed) the same beginning or ending."""
    if want.endswith("..."):
        return " ".join(have.split()).startswith(" ".join(want[:-3].split()))
    if want.startswith("..."):
        return have.endswith(want[3:])
    return have == want


@pytest.fixture
def session(tmp_path, monkeypatch):
    """A scratch shell; the built-in recipes' presets are restored afterwards (a docs file
    may add presets to them, as the README's cluster preset does)."""
    recipes = [load_recipe(e.name) for e in iter_recipes() if e.origin == "built-in"]
    saved = [(r, dict(r.presets), r.default_preset) for r in recipes]
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("MIMO_TOOLKIT_RECIPE_PATH", raising=False)
    yield Session(tmp_path / "work", tmp_path / "home")
    for recipe, presets, default in saved:
        recipe.presets, recipe.default_preset = presets, default


def write_files(doc: DocFile, s: Session) -> None:
    for name, text in doc.files.items():
        path = Path(s.expand(name))
        path = path if path.is_absolute() else s.cwd / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_every_document_has_examples():
    """The extraction works at all: the README's tour is found, with its outputs and files."""
    readme = parse(REPO / "README.md")
    commands = [e.command for e in readme.examples]
    assert "mimo-toolkit recipes" in commands and "mycluster.py" in readme.files
    assert any(e.output for e in readme.examples)
    assert len([e for d in DOCS for e in parse(d).examples]) > 30


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_examples_run(path, session):
    doc = parse(path)
    write_files(doc, session)
    failures, ran = [], 0
    for example in doc.examples:
        if example.skip_reason() or TRAINS.match(example.command):
            continue
        command = rewritten(example.command)
        code, output = session.run(command)
        ran += 1
        if code != 0:
            failures.append(f"{example.where}: `{command}` exited {code}: {output.strip()[-600:]}")
        elif example.output and (missing := shown_output_matches(example.output, output)) is not None:
            failures.append(f"{example.where}: `{command}` does not print the line shown: {missing!r}")
    assert not failures, "\n".join(failures)
    if doc.examples:
        print(f"{path.name}: ran {ran} of {len(doc.examples)} examples")


@pytest.mark.slow
def test_training_example(session):
    """The README's `torchx run -s local_cwd mimo.train ...` verbatim, on the run directory
    its `submit ... --run-dir runs/demo` names (rendered here, 2 steps: the submit itself
    needs Slurm)."""
    examples = [e for d in DOCS for e in parse(d).examples if TRAINS.match(e.command)]
    assert examples, "no training example found"
    for example in examples:
        config = re.search(r"--config (\S+)/job\.json", example.command).group(1)
        submit = next(e.command for e in parse(example.path).examples if f"--run-dir {config}" in e.command)
        render = re.sub(r"submit (.*) --run-dir (\S+)", r"render \1 -o \2 --set train.steps=2", submit)
        code, output = session.run(render)
        assert code == 0, output
        code, output = session.run(example.command)
        assert code == 0, f"{example.where}: {output[-3000:]}"
        metrics = (session.cwd / config / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 2, metrics


@pytest.mark.slurm
def test_slurm_examples(slurm_cluster, session):
    """The examples that submit a CPU job to Slurm, for real on the local cluster: sbatch
    accepts the script, `status` knows the job, `cancel` ends it."""
    ran = 0
    for doc in map(parse, DOCS):
        write_files(doc, session)
        for example in doc.examples:
            if example.command.startswith("export "):
                session.run(example.command)
            if not re.match(r"^mimo-toolkit submit .*(-s|--scheduler) slurm", example.command) or example.skip_reason():
                continue
            code, dry = session.run(rewritten(example.command))
            assert code == 0, f"{example.where}: {dry}"
            if "#SBATCH --gpus-per-node" in dry:
                continue  # a GPU job: the local cluster has none (test_docs_examples_run ran its dry run)
            submitted = run_cli(shlex.split(example.command)[1:], env=session.env)
            assert submitted.code == 0, f"{example.where}: {submitted.err}"
            job_id = submitted.out.strip().splitlines()[-1]  # submit prints the job id last
            for follow in (f"mimo-toolkit status {job_id}", f"mimo-toolkit cancel {job_id}"):
                code, text = session.run(follow)
                assert code == 0, f"{follow}: {text}"
            ran += 1
    assert ran >= 1


def test_shown_output_is_compared_in_order(session):
    assert shown_output_matches(["a", "...", "c d..."], "a\nb\nc  d e\n") is None
    assert shown_output_matches(["b", "a"], "a\nb\n") == "a"
    assert shown_output_matches(["...x/job.json", "config 0123456789ab"], "/abs/x/job.json\nconfig fedcba987654\n") is None
    code, output = session.run("mimo-toolkit show lava; mimo-toolkit recipes")
    assert code == 2 and output.startswith("mimo-toolkit: error: unknown recipe 'lava'")
    assert rewritten("mimo-toolkit submit x -s slurm") == "mimo-toolkit submit x -s slurm --dry-run"
    assert rewritten("mimo-toolkit plan llava --nodes 4 [--apply FILE]") == "mimo-toolkit plan llava --nodes 4"
