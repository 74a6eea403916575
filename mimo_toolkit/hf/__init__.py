"""Hugging Face checkpoints in and out, the torch-free half.

What the CLI needs to validate ``--set model.<module>.pretrained=DIR`` and
``--set data.tokenizer=DIR`` at render time, in plain Python (no torch, no transformers,
no safetensors import):

* :mod:`.checkpoint` reads ``config.json`` and the safetensors headers (tensor names,
  dtypes, shapes, byte offsets) of a checkpoint directory;
* :mod:`.architectures` maps a checkpoint's ``config.json`` to the recipe's architecture
  fields (filling unset fields, refusing contradictions);
* :mod:`.mapping` is THE table of which Hugging Face tensors make which megatron-core
  parameter (QKV packing, gate/up, vocabulary padding, ...), used by the import, the export
  and the key/shape checks;
* :mod:`.tokenizer` reads a checkpoint's tokenizer files and renders its chat template in
  a sandboxed jinja2 environment;
* :mod:`.validate` runs all of it for a job (called by ``resolve.validate``).

The torch half (lazy per-rank slice reads, writing Hugging Face directories) lives in
``mimo_toolkit.runtime.model.hf_import`` and ``mimo_toolkit.runtime.eval.hf_export``.
"""
