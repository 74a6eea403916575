"""Samples whose media fail to decode during training: dropped from the loss on every rank.

The dataset's checks run on every rank when it is built, so every rank keeps the same good
samples. A file can still pass its header check and fail to decode later (a truncated
JPEG: the header opens, the pixel data is cut). Only the ranks that load that sample's media
(its encoders' replicas) see the failure; the LLM ranks hold its text and would train on
the zeros that stand in for the image. So, under ``data.on_bad_sample=skip``, every step of
a file dataset with encoders begins with one agreement: each rank marks the step offsets of
the samples it could not decode in a ``[global_batch]`` flag vector, a MAX all-reduce over
the world gives every rank the same flags, and the LLM ranks zero those samples' loss masks
before anything counts loss tokens. The sample then contributes no loss and no gradient to
any module, and the loss is normalised over the remaining tokens, exactly as if the sample
had no answer. The trainer counts the agreed samples in ``bad_samples``.

Cost: one all-reduce of ``global_batch`` floats per step (and, with NCCL, one copy back to
the host before the step's first operation), for file datasets only; synthetic data never
fails to decode and skips it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ...config import JobConfig
from .batching import BatchGeometry, StepBatch


def decoding_can_fail(job: JobConfig) -> bool:
    """Whether a step must agree on undecodable samples (file media, ``skip``)."""
    return job.data.source != "synthetic" and job.data.on_bad_sample == "skip" and bool(job.encoders)


class DecodeAgreement:
    """Makes every rank agree on a step's undecodable samples and masks them out of its texts."""

    def __init__(self, job: JobConfig, replica_of: dict[str, int], device: torch.device) -> None:
        self.geometry = BatchGeometry.of(job)
        self.device = device
        lm = job.layout.language_module
        self.text_rows = None
        if lm in replica_of:
            dp = job.layout.module_parallelisms[lm].dp
            self.text_rows = [self.geometry.offsets(mb, replica_of[lm], dp)
                              for mb in range(self.geometry.num_microbatches)]

    def __call__(self, batch: StepBatch) -> None:
        """Replace ``batch.undecodable`` (this rank's failures) by every rank's, and zero the
        loss mask of those samples in this rank's text slices."""
        flags = torch.zeros(self.geometry.global_batch)
        flags[batch.undecodable] = 1.0
        flags = flags.to(self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        batch.undecodable = flags.nonzero().flatten().tolist()
        if not batch.undecodable or batch.texts is None:
            return
        bad = set(batch.undecodable)
        for text, rows in zip(batch.texts, self.text_rows):
            for row, offset in enumerate(rows):
                if offset in bad:
                    text.loss_mask[row].zero_()
