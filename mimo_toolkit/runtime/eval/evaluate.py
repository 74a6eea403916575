"""``mimo-toolkit eval``: exact-match accuracy of greedy answers, and the validation loss.

Every assistant turn of every sample of the validation file is a question: the model gets
the conversation up to that turn (earlier answers are the references) and answers
greedily until EOS. A prediction is correct when it equals the reference after folding
case and whitespace and dropping a final period. Records with a ``category`` (the shapes
task has color, shape, position, number) get accuracy per category too.

The validation loss is the same quantity as training's ``valid_loss`` (mean loss per answer
token over the file, teacher-forced), so a merged checkpoint can be checked against what
the training job reported. ``ablate`` zeroes one encoder module's inputs (``audio``: the
log-mel features) to show what that modality contributes. A full evaluation also redraws
the run's loss curves with the accuracy in the title.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from ...run_dir import write_json_atomic
from ..datasets.batching import collate_media, collate_text
from ..parallel.loss import vocab_parallel_cross_entropy
from . import inference
from .plot import plot_curves
from .target import eval_target

BATCH = 32
MAX_NEW_TOKENS = 32


@dataclass
class Question:
    sample: int
    """Index in the dataset (its media are the sample's)."""
    prompt: list[int]
    reference: str
    human: str
    category: str | None


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".")


def evaluate_run(run_dir: str, data: str | None = None, ablate: str | None = None, limit: int | None = None) -> dict:
    """Evaluate the newest checkpoint of ``run_dir``; writes ``eval.json`` (or ``eval-ablate-<m>.json``)."""
    from ..datasets import build_file_dataset

    rd, job = eval_target(run_dir, data, ablate)
    checkpoint = inference.latest_checkpoint(rd)
    start = time.monotonic()
    with inference.single_process_group():
        loaded = inference.load_model(job, checkpoint)
        evaluation = Evaluation(loaded, build_file_dataset(loaded.job, "valid", path=data), ablate, limit)
        loss, rows = evaluation.validation_loss(), evaluation.answers()
    result = _summary(rd, checkpoint, loaded.step, evaluation, loss, rows)
    result["seconds"] = round(time.monotonic() - start, 2)
    name = f"eval-ablate-{ablate}.json" if ablate else "eval.json"
    write_json_atomic(rd.path / name, result)
    result["file"] = str(rd.path / name)
    if not ablate and limit is None:
        accuracy = f"{100 * result['accuracy']:.1f}%"
        plot_curves(rd, f"{job.recipe}/{job.preset}: {rd.path.name}, eval accuracy {accuracy} at step {loaded.step}")
    return result


class Evaluation:
    """A loaded model and the first ``limit`` samples of a dataset, in batches of ``BATCH``."""

    def __init__(self, loaded: inference.LoadedModel, dataset, ablate: str | None, limit: int | None) -> None:
        self.loaded = loaded
        self.dataset = dataset
        self.ablate = ablate
        self.indices = list(range(len(dataset)))[:limit]
        self.modalities = tuple(loaded.job.encoders)
        self.undecodable: set[int] = set()
        """Samples whose media failed to decode: out of the loss (``collate_text``) and the accuracy."""

    def _samples(self, indices: list[int]) -> list:
        samples = [self.dataset.get(i, self.modalities) for i in indices]
        self.undecodable.update(i for i, s in zip(indices, samples) if s.undecodable)
        return samples

    def _media(self, samples) -> dict[str, torch.Tensor]:
        media = {m: collate_media(samples, m, 1).items for m in self.modalities}
        if self.ablate:
            media[self.ablate] = torch.zeros_like(media[self.ablate])
        return media

    def validation_loss(self) -> float:
        job = self.loaded.job
        loss_sum, tokens = 0.0, 0
        for start in range(0, len(self.indices), BATCH):
            samples = self._samples(self.indices[start : start + BATCH])
            text = collate_text(samples, job.train.seq_length, job.layout.special_token_ids)
            embeddings = inference.encode_media(self.loaded, self._media(samples))
            out = inference.logits(self.loaded, text.input_ids, embeddings)
            per_token = vocab_parallel_cross_entropy(out, text.labels, job.language_model.vocab_size, self.loaded.tp_group)
            loss_sum += float((per_token * text.loss_mask).sum())
            tokens += text.num_loss_tokens
        return loss_sum / max(tokens, 1)

    def questions(self) -> list[Question]:
        """Every assistant turn whose prompt fits the sequence length."""
        out = []
        for i in self.indices:
            record = self.dataset.records[i]
            for k, (human, gpt) in enumerate(record.turns):
                prompt = self.dataset.template.prompt(record.turns[:k], human)
                if len(prompt) < self.dataset.seq_length:
                    out.append(Question(i, prompt, gpt, human, record.category))
        return out

    def answers(self) -> list[dict]:
        tok = self.dataset.tokenizer
        questions = self.questions()
        rows = []
        for start in range(0, len(questions), BATCH):
            batch = questions[start : start + BATCH]
            media = self._media(self._samples([q.sample for q in batch]))
            generated = inference.greedy_generate(self.loaded, [q.prompt for q in batch], media, tok.eos_id,
                                                  tok.pad_id, MAX_NEW_TOKENS)
            for q, ids in zip(batch, generated):
                if q.sample in self.undecodable:
                    continue
                prediction = tok.decode(ids)
                rows.append({
                    "id": self.dataset.records[q.sample].sample_id, "category": q.category, "question": q.human,
                    "reference": q.reference, "prediction": prediction,
                    "correct": normalise(prediction) == normalise(q.reference),
                })
        return rows


def _accuracy(rows: list[dict]) -> dict:
    correct = sum(r["correct"] for r in rows)
    return {"accuracy": correct / len(rows) if rows else 0.0, "correct": correct, "total": len(rows)}


def _summary(rd, checkpoint, step, evaluation: Evaluation, loss: float, rows: list[dict]) -> dict:
    by_category = defaultdict(list)
    for row in rows:
        if row["category"] is not None:
            by_category[row["category"]].append(row)
    return {
        "run_dir": str(rd.path),
        "checkpoint": checkpoint.name,
        "step": step,
        "data": str(evaluation.dataset.path),
        "ablate": evaluation.ablate,
        "samples": len(evaluation.indices) - len(evaluation.undecodable),
        "bad_samples": evaluation.dataset.bad_samples + len(evaluation.undecodable),
        "valid_loss": loss,
        **_accuracy(rows),
        "by_category": {c: _accuracy(r) for c, r in sorted(by_category.items())},
        "predictions": rows,
    }
