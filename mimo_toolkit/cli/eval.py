"""``mimo-toolkit eval``: accuracy of a trained run's greedy answers on validation data."""

from __future__ import annotations

import warnings

import click

from ..runtime.eager import run_eagerly
from .common import Command


@click.command("eval", cls=Command)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--data", metavar="PATH", help="LLaVA-format JSON/JSONL to evaluate on (default: the job's data.valid_path).")
@click.option("--ablate", metavar="MODULE", help="Zero this encoder module's inputs (e.g. audio, vision).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Evaluate the first N samples only.")
def eval_command(run_dir: str, data: str | None, ablate: str | None, limit: int | None) -> None:
    """Exact-match accuracy of RUN_DIR's newest checkpoint, in one process.

    The checkpoint's shards are merged into one model (any training layout), every
    assistant turn of the validation data is answered greedily, and the accuracy (per
    category where records have one) and validation loss are printed and written to
    RUN_DIR/eval.json (eval-ablate-MODULE.json with --ablate).

    \b
    Example:
      mimo-toolkit eval runs/shapes
      mimo-toolkit eval runs/shapes-av --ablate audio --limit 100
    """
    from ..runtime.eval.target import eval_target

    eval_target(run_dir, data, ablate)  # a wrong request fails here, before torch is imported
    run_eagerly()  # megatron-core's torch.compile: slow on CPU, no gain here
    with warnings.catch_warnings():  # megatron-core's import-time notices (experimental APIs, no apex)
        warnings.simplefilter("ignore", UserWarning)
        from ..runtime.eval.evaluate import evaluate_run

        result = evaluate_run(run_dir, data=data, ablate=ablate, limit=limit)
    click.echo("\n".join(report_lines(result)))


def report_lines(result: dict) -> list[str]:
    """What ``eval`` prints."""
    ablated = f", {result['ablate']} inputs zeroed" if result["ablate"] else ""
    lines = [
        f"{result['run_dir']} ({result['checkpoint']}) on {result['data']}: {result['samples']} samples{ablated}",
        f"accuracy {_pct(result)}",
    ]
    lines += [f"  {name:<10} {_pct(acc)}" for name, acc in result["by_category"].items()]
    if result["bad_samples"]:
        lines.append(f"skipped {result['bad_samples']} bad sample(s)")
    lines += [f"validation loss {result['valid_loss']:.4f}", f"wrote {result['file']}"]
    return lines


def _pct(acc: dict) -> str:
    return f"{100 * acc['accuracy']:.1f}% ({acc['correct']}/{acc['total']})"
