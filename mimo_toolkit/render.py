"""Launch templates -> text. Pure: no files written, no torch, no torchx.

The templates (``templates/*.j2``, installed as ``mimo_toolkit.templates``) are rendered by
one jinja2 environment whose settings exist to keep shell scripts correct:

* ``autoescape`` off: HTML escaping once turned ``&&`` into ``&amp;&amp;`` in a command;
* ``StrictUndefined``: a misspelt variable is an error, not an empty string;
* ``keep_trailing_newline``, ``trim_blocks``, ``lstrip_blocks``: the output is exactly the
  lines the template shows.

Values never reach a shell or a Slurm directive unquoted. The filters here are the only
quoting the templates use: ``shquote`` (bash words), ``shwords`` (an argument list),
``sbatch`` (``#SBATCH`` values, which
Slurm parses with its own quoting rules and which cannot span lines), ``slurm_pattern``
(paths inside ``--output`` patterns), ``ini`` (``.torchxconfig`` values) and ``oneline``
(values shown in comments). Every variable a template receives is documented in
``templates/README.md``.

jinja2 is imported on first use so that importing this module (for its constants) is free.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .run_dir import RunDir
from .torchrun import LOG_LINE_PREFIX, TRAIN_MODULE, shell_words

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

    from .resolve import ResolvedJob

PACKAGE_TEMPLATES = "mimo_toolkit.templates"

#: Characters no #SBATCH line, .torchxconfig value or torchx --env value can hold.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SBATCH_SAFE = re.compile(r"[\w@%+=:,./-]+", re.ASCII)


# ---- filters -----------------------------------------------------------------------------


def shquote(value: Any) -> str:
    """One bash word. NUL is the one byte no shell word or environment value can hold."""
    if value is None or isinstance(value, bool):
        raise TypeError(f"shquote: refusing to quote {value!r}; test it with {{% if %}} first")
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "\x00" in text:
        raise UserError(f"value {text!r} contains a NUL byte, which no shell word can hold")
    return shlex.quote(text)


def sbatch(value: Any, what: str) -> str:
    """A value on a ``#SBATCH`` line, quoted for Slurm's directive parser.

    sbatch splits directive lines itself: double quotes group, a backslash escapes the
    next character and an unescaped ``#`` starts a comment (older Slurm even inside
    quotes). A directive is one line, so control characters are a user error, named.
    """
    text = str(value)
    if CONTROL_CHARS.search(text):
        raise UserError(
            f"{what}={text!r}: a #SBATCH line cannot hold a newline or other control character"
        )
    if _SBATCH_SAFE.fullmatch(text):
        return text
    return '"' + re.sub(r'([\\"#])', r"\\\1", text) + '"'


def slurm_pattern(path: Any) -> str:
    """A literal path inside a Slurm filename pattern (``--output``): ``%`` is doubled.

    A backslash would switch Slurm's pattern expansion off for the whole name (so %j
    would stay literal), so it is refused.
    """
    text = str(path)
    if "\\" in text:
        raise UserError(f"run dir {text!r}: Slurm log paths cannot contain a backslash")
    return text.replace("%", "%%")


def ini(value: Any, what: str) -> str:
    """A value in ``.torchxconfig`` (configparser: one line, ``%`` interpolates, outer
    whitespace is stripped)."""
    text = str(value)
    if CONTROL_CHARS.search(text) or text != text.strip():
        raise UserError(
            f"{what}={text!r}: .torchxconfig values cannot hold control characters or "
            "leading/trailing spaces"
        )
    return text.replace("%", "%%")


def oneline(value: Any) -> str:
    """A value shown in a ``#`` comment: control characters escaped, so it stays a comment."""
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def shwords(words: list[str], sep: str = " ") -> str:
    """An argument list as bash words (``torchrun``): each word through :func:`shquote`,
    except the launcher's own shell expressions (:class:`mimo_toolkit.torchrun.ShellExpr`)."""
    return shell_words(words, shquote, sep)


def to_json(value: Any) -> str:
    """JSON on one line (a list shown in a comment); unlike jinja's ``tojson``, no HTML escapes."""
    return json.dumps(value, ensure_ascii=False)


FILTERS = {
    "shquote": shquote,
    "shwords": shwords,
    "sbatch": sbatch,
    "slurm_pattern": slurm_pattern,
    "ini": ini,
    "oneline": oneline,
    "json": to_json,
}


# ---- environment ---------------------------------------------------------------------------


def _package_source(name: str):
    """Template source from the installed package (works from a wheel or a zip)."""
    from importlib.resources import files

    resource = files(PACKAGE_TEMPLATES).joinpath(name)
    if not resource.is_file():
        return None
    return resource.read_text(encoding="utf-8"), f"{PACKAGE_TEMPLATES}/{name}", lambda: True


def environment(template_dir: str | os.PathLike | None = None) -> "jinja2.Environment":
    """The jinja2 environment: ``template_dir`` (when given) overrides package templates
    by file name; every other template comes from the package."""
    import jinja2

    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        if not os.path.isdir(template_dir):
            raise UserError(f"--template-dir {str(template_dir)!r} is not a directory")
        loaders.append(jinja2.FileSystemLoader(os.fspath(template_dir)))
    loaders.append(jinja2.FunctionLoader(_package_source))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(FILTERS)
    return env


def render_template(name: str, context: dict[str, Any], template_dir: str | os.PathLike | None = None) -> str:
    """Render one template; template mistakes (a user's --template-dir) are one-line errors."""
    import jinja2

    try:
        return environment(template_dir).get_template(name).render(context)
    except jinja2.TemplateNotFound:
        raise UserError(f"template {name!r} not found (in --template-dir or {PACKAGE_TEMPLATES})") from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"template {exc.name or name}: line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise UserError(f"template {name}: {exc.message} (see templates/README.md for the variables)") from None


# ---- the variables every template receives ------------------------------------------------


def job_env(resolved: "ResolvedJob") -> dict[str, str]:
    """The environment every rank gets: ``cluster.env``, then ``--env`` (which wins)."""
    cfg = resolved.config
    return {**cfg.cluster.env, **cfg.env}


def launch_env(resolved: "ResolvedJob", run_dir: str | os.PathLike) -> dict[str, str]:
    """:func:`job_env` plus, with ``cluster.snapshot``, the run's code snapshot first on
    PYTHONPATH (before a PYTHONPATH the config sets) and PYTHONSAFEPATH, so every attempt
    imports that copy."""
    env = job_env(resolved)
    if resolved.config.cluster.snapshot:
        from .provenance import snapshot_dir

        snap = str(snapshot_dir(RunDir(run_dir).path))
        env["PYTHONPATH"] = snap + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # `python -m` puts the working directory first on sys.path: a job started from a
        # checkout would import the checkout, not the snapshot (Python >= 3.11 honours this).
        env.setdefault("PYTHONSAFEPATH", "1")
    return env


def context(resolved: "ResolvedJob", run_dir: str | os.PathLike) -> dict[str, Any]:
    """The variables of every template (documented in templates/README.md)."""
    cfg = resolved.config
    cluster = cfg.cluster
    rd = RunDir(run_dir)
    signal_name = cluster.signal.split("@")[0]
    return {
        "job": cfg,
        "cluster": cluster,
        "world_size": resolved.world_size,
        "nodes": resolved.nodes,
        "procs_per_node": resolved.procs_per_node,
        "gpus_per_node": cluster.gpus_per_node,
        "run_dir": str(rd.path),
        "job_file": str(rd.job_file),
        "launch_dir": str(rd.launch_dir),
        "log_dir": str(rd.log_dir),
        "exit_status_file": str(rd.exit_status_file),
        "env": launch_env(resolved, run_dir),
        "config_hash": cfg.config_hash(),
        "toolkit_version": resolved.toolkit_version,
        "signal_name": signal_name,
        "trap_signals": list(dict.fromkeys([signal_name, "TERM"])),
        "max_restarts": cluster.max_restarts,
        "train_module": TRAIN_MODULE,
        "log_line_prefix": LOG_LINE_PREFIX,
        "shutdown_timeout_s": shutdown_timeout_s(cluster.signal),
    }


def shutdown_timeout_s(signal_spec: str) -> int:
    """How long torchrun lets the ranks finish their step and save after a stop signal
    before it kills them: most of the warning the signal gives before the time limit
    (torchrun's own default, 30 s, is too short for a large model's checkpoint)."""
    lead = int(signal_spec.split("@")[1])
    return max(30, lead - 15)
