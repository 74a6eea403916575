"""``mimo-toolkit export``: a run's newest checkpoint as Hugging Face checkpoints."""

from __future__ import annotations

import warnings

import click

from ..runtime.eager import run_eagerly
from .common import Command

DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@click.command("export", cls=Command)
@click.argument("run_dir", metavar="RUN_DIR")
@click.argument("out_dir", metavar="OUT_DIR")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto", show_default=True,
              help="Tensor dtype; auto: each module's pretrained checkpoint's, else the run's precision.")
def export(run_dir: str, out_dir: str, dtype: str) -> None:
    """Write RUN_DIR's newest checkpoint (any layout) as Hugging Face checkpoints in OUT_DIR.

    LLaVA (one CLIP tower + a Llama LLM) becomes one directory that
    transformers' LlavaForConditionalGeneration loads, with the tokenizer and
    preprocessing files; other recipes get one directory per module
    (LlamaForCausalLM, CLIPVisionModel, WhisperModel) plus the projectors'
    tensors. An imported, unchanged model exports bit for bit (docs/weights.md).

    \b
    Example:
      mimo-toolkit export runs/stage2 exported/llava-stage2
    """
    from ..hf.export import check_export_paths

    check_export_paths(run_dir, out_dir)  # bad arguments fail before torch is imported
    run_eagerly()
    with warnings.catch_warnings():  # megatron-core's import-time notices
        warnings.simplefilter("ignore", UserWarning)
        from ..runtime.eval.hf_export import export_run

        result = export_run(run_dir, out_dir, DTYPES[dtype])
    click.echo(f"{result['run_dir']} ({result['checkpoint']}, step {result['step']}) -> {result['out_dir']}")
    for d in result["directories"]:
        click.echo(f"  {d['directory']:<20} {d['class']:<32} {d['tensors']} tensors")
