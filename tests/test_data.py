"""Real data: LLaVA-style files, tokenizers, image and audio features, bad samples, the shapes
generator, and which samples each step reads (fast, single process)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_support import write_truncated_jpeg

from mimo_toolkit.errors import UserError
from mimo_toolkit.resolve import resolve_job
from mimo_toolkit.runtime.datasets import build_dataset, build_file_dataset
from mimo_toolkit.runtime.datasets.batching import ReplicaData, ValidationData, collate_text, sample_index
from mimo_toolkit.runtime.datasets.loader import StepLoader
from mimo_toolkit.runtime.datasets.llava_json import DataError
from mimo_toolkit.runtime.datasets.media import load_image, log_mel, mel_band_edges, mel_filterbank
from mimo_toolkit.runtime.datasets.tokenizers import ByteTokenizer, load_tokenizer
from mimo_toolkit.runtime.datasets.undecodable import DecodeAgreement
from mimo_toolkit.runtime.eval.inference import single_process_group

REPO = Path(__file__).resolve().parents[1]
IMAGE, AUDIO = -200, -300


def job_for(recipe: str, data: Path, *sets: str):
    return resolve_job(recipe, "tiny", sets=["data.source=llava", f"data.path={data}", *sets]).config


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def turn(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


@pytest.fixture
def media(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (48, 32), (0, 0, 255)).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    write_wav(tmp_path / "tone.wav", 1000.0)
    return tmp_path


def write_wav(path: Path, freq: float, rate: int = 16000, seconds: float = 0.32) -> None:
    t = np.arange(int(rate * seconds))
    x = 0.5 * np.sin(2 * math.pi * freq * t / rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())


# ---- tokenizers -----------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_fits_the_tiny_vocabulary():
    tok = ByteTokenizer()
    text = "What colour? ünïcödé → 形"
    ids = tok.encode(text)
    assert min(ids) >= 3 and max(ids) < 259 <= 320
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"


def make_hf_tokenizer(path: Path, vocab_extra=()) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<s>", "</s>", "<unk>", *vocab_extra],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["USER: What color is the shape? ASSISTANT: red", "blue green square circle"] * 20, trainer)
    tok.decoder = __import__("tokenizers").decoders.ByteLevel()
    tok.save(str(path))
    return path


def test_hf_tokenizer_json_from_a_local_file(tmp_path, media):
    path = make_hf_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(str(path), 320)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode(tok.encode("What color is it?")) == "What color is it?"
    data = write_json(tmp_path / "d.json", [{"id": "a", "image": "red.png", "conversations": turn("<image>\nWhat color?", "red")}])
    ds = build_file_dataset(job_for("llava", data, f"data.tokenizer={path}"))
    sample = ds.get(0, ())
    assert sample.input_ids[0] == tok.bos_id and sample.input_ids.count(IMAGE) == 16
    answer = [t for t, m in zip(sample.labels, sample.loss_mask) if m]
    assert answer[-1] == tok.eos_id and tok.decode(answer[:-1]) == "red"
    with pytest.raises(UserError, match="vocab_size is 100"):
        load_tokenizer(str(path), 100)
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.json"), 320)


# ---- parsing: placeholders, loss mask, truncation ------------------------------------------------


def test_placeholders_expand_to_the_encoders_token_counts(tmp_path, media):
    records = [
        {"id": "one", "image": "red.png", "audio": "tone.wav", "conversations": turn("<image>\n<audio>\nQ?", "A")},
        {"id": "two", "image": ["red.png", "wide.png"], "audio": "tone.wav",
         "conversations": turn("<image><image><audio> Q?", "A")},
        {"id": "text", "conversations": turn("Just text?", "Yes")},
    ]
    ds = build_file_dataset(job_for("multi_encoder", write_json(tmp_path / "d.json", records)))
    counts = [(s.input_ids.count(IMAGE), s.input_ids.count(AUDIO)) for s in (ds.get(i, ()) for i in range(3))]
    assert counts == [(16, 16), (32, 16), (0, 0)]
    two = ds.get(1, ("vision", "audio"))
    assert two.media["vision"].shape == (2, 3, 32, 32) and two.media["audio"].shape == (1, 16, 32)
    text_only = ds.get(2, ("vision", "audio"))
    assert text_only.media["vision"].shape == (0, 3, 32, 32) and text_only.media["audio"].shape == (0, 16, 32)
    assert ds.get(0, ("audio",)).media.keys() == {"audio"}  # media only for the modalities asked for


def test_loss_mask_covers_assistant_turns_only(tmp_path, media):
    convo = turn("<image>\nColor?", "red") + turn("And the shape?", "a square")
    data = write_json(tmp_path / "d.json", [{"id": "m", "image": "red.png", "conversations": convo}])
    ds = build_file_dataset(job_for("llava", data, "train.seq_length=96"))
    s, tok = ds.get(0, ()), ds.tokenizer
    assert len(s.input_ids) == len(s.labels) == len(s.loss_mask)
    assert s.labels[:-1] == s.input_ids[1:]
    trained = [t for t, m in zip(s.labels, s.loss_mask) if m]
    assert trained == tok.encode("red") + [tok.eos_id] + tok.encode("a square") + [tok.eos_id]
    assert all(m == 0 for t, m in zip(s.input_ids, s.loss_mask) if t == IMAGE)
    text = tok.decode(s.input_ids)
    assert text == "USER: \nColor? ASSISTANT: redUSER: And the shape? ASSISTANT: a square"


def test_truncation_keeps_placeholders_or_rejects_the_sample(tmp_path, media):
    records = [
        {"id": "long-answer", "image": "red.png", "conversations": turn("<image>\nQ?", "x" * 200)},
        {"id": "long-prompt", "image": "red.png", "conversations": turn("y" * 60 + "<image>\nQ?", "A")},
        {"id": "answer-out-of-reach", "image": "red.png", "conversations": turn("<image>" + "z" * 80, "A")},
    ]
    ds = build_file_dataset(job_for("llava", write_json(tmp_path / "d.json", records)))
    assert len(ds) == 1 and ds.records[0].sample_id == "long-answer"
    s = ds.get(0, ())
    assert len(s.input_ids) == 64 and s.input_ids.count(IMAGE) == 16 and sum(s.loss_mask) > 0
    assert s.labels[-1] == ds.tokenizer.encode("x")[0]  # the cut-off next token is still the last target
    reasons = dict(ds.bad)
    assert "cut through media placeholders" in reasons["long-prompt"]
    assert "no answer token within train.seq_length=64" in reasons["answer-out-of-reach"]


BAD_RECORDS = [
    ({"id": "missing", "image": "nope.png", "conversations": turn("<image>\nQ?", "A")}, "missing file"),
    ({"id": "unreadable", "image": "broken.png", "conversations": turn("<image>\nQ?", "A")}, "unreadable file"),
    ({"id": "no-tag", "image": "red.png", "conversations": turn("What is this?", "A")}, "no <image> placeholder"),
    ({"id": "two-tags", "image": "red.png", "conversations": turn("<image><image>", "A")}, "2 <image> placeholder(s) but 1"),
    ({"id": "roles", "conversations": [{"from": "gpt", "value": "hi"}]}, "turns must alternate"),
    ({"id": "audio", "audio": "tone.wav", "conversations": turn("<audio>", "A")}, "no audio encoder"),
]


def test_bad_samples_are_skipped_and_named(tmp_path, media):
    good = {"id": "good", "image": "red.png", "conversations": turn("<image>\nQ?", "A")}
    data = write_json(tmp_path / "d.json", [good] + [r for r, _ in BAD_RECORDS])
    ds = build_file_dataset(job_for("llava", data))
    assert len(ds) == 1 and ds.bad_samples == len(BAD_RECORDS)
    reasons = dict(ds.bad)
    for record, why in BAD_RECORDS:
        assert why in reasons[record["id"]], (record["id"], reasons[record["id"]])
    assert "sample missing: missing file" in ds.bad_report()
    with pytest.raises(DataError, match=r"6 bad sample\(s\): sample missing: missing file .*on_bad_sample=stop"):
        build_file_dataset(job_for("llava", data, "data.on_bad_sample=stop"))


def test_jsonl_lines_are_samples_and_a_broken_line_is_a_bad_sample(tmp_path, media):
    lines = [json.dumps({"image": "red.png", "conversations": turn("<image>", "red")}), "{broken", ""]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    ds = build_file_dataset(job_for("llava", tmp_path / "d.jsonl"))
    assert [r.sample_id for r in ds.records] == ["d.jsonl:1"]
    assert ds.bad[0][0] == "d.jsonl:2" and "not JSON" in ds.bad[0][1]
    with pytest.raises(DataError, match="no usable samples"):
        build_file_dataset(job_for("llava", write_json(tmp_path / "e.json", [{"id": "x"}])))
    with pytest.raises(UserError, match="data.valid_path is required"):
        build_file_dataset(job_for("llava", tmp_path / "d.jsonl"), "valid")


def test_an_image_that_fails_to_decode_later_is_dropped_from_the_loss_or_stops(tmp_path, media):
    """The header check passes, so every rank keeps the sample; the rank that decodes it marks
    it, the step's agreement tells every rank, and its loss tokens are gone from every text slice."""
    write_truncated_jpeg(tmp_path / "cut.jpg")
    records = [{"id": f"s{i}", "image": "cut.jpg" if i == 3 else "red.png", "conversations": turn("<image>", "AB")}
               for i in range(8)]
    job = job_for("llava", write_json(tmp_path / "d.json", records))  # vision DP2 / LLM TP2 on 2 ranks
    job.layout.finalize(2)
    ds = build_file_dataset(job)
    assert ds.bad_samples == 0 and len(ds) == 8
    bad = ds.get(3, ("vision",))
    assert bad.undecodable and torch.equal(bad.media["vision"], torch.zeros(1, 3, 32, 32))
    assert not ds.get(3, ()).undecodable  # an LLM rank loads the text only: it cannot know by itself
    assert collate_text([bad], 64, job.layout.special_token_ids).num_loss_tokens == 0

    # Each rank's vision replica decodes half of the step; only one of them meets sample 3.
    ranks = [ReplicaData(ds, job, {"llm": 0, "vision": r}).step(0) for r in (0, 1)]
    offset = next(k for k in range(8) if sample_index(k, 8, job.train.seed) == 3)
    assert sorted(ranks[0].undecodable + ranks[1].undecodable) == [offset]
    clueless = ranks[0] if not ranks[0].undecodable else ranks[1]
    tokens = sum(t.num_loss_tokens for t in clueless.texts)
    assert tokens == 8 * 3  # "AB" + EOS per sample
    clueless.undecodable = [offset]  # what the all-reduce gives every rank (2-rank run: test_runtime.py)
    with single_process_group():
        DecodeAgreement(job, {"llm": 0, "vision": 0}, torch.device("cpu"))(clueless)
    assert clueless.undecodable == [offset]
    assert sum(t.num_loss_tokens for t in clueless.texts) == tokens - 3

    ds.on_bad_sample = "stop"
    with pytest.raises(DataError, match="sample s3: cannot decode .*cut.jpg"):
        ds.get(3, ("vision",))


# ---- media ------------------------------------------------------------------------------------------


def test_images_are_resized_cropped_and_clip_normalised(media):
    red = load_image(str(media / "red.png"), 32)
    assert red.shape == (3, 32, 32)
    assert red[0].mean() > 1.5 and red[1].mean() < -1.5  # red high, green low after CLIP normalisation
    wide = load_image(str(media / "wide.png"), 16)
    assert wide.shape == (3, 16, 16) and wide[2].mean() > 1.5


def test_log_mel_features_shape_and_range():
    wav = torch.randn(3000) * 0.1
    feats = log_mel(wav, 16000, 80, 3000)  # Whisper's geometry: 30 s of 10 ms frames (short clip padded)
    assert feats.shape == (80, 3000)
    assert feats.max() - feats.min() <= 2.0 + 1e-6  # log10 floored at its max - 8, then divided by 4
    assert log_mel(wav, 16000, 16, 32).shape == (16, 32)
    filters = mel_filterbank(16000, 400, 80)
    assert filters.shape == (80, 201) and (filters.sum(dim=1) > 0).all()


@pytest.mark.parametrize("freq", [250.0, 500.0, 1000.0, 2000.0, 4000.0])
def test_a_tone_lights_up_the_mel_band_of_its_pitch(freq):
    rate, n_mels = 16000, 16
    t = torch.arange(5120) / rate
    feats = log_mel(0.5 * torch.sin(2 * math.pi * freq * t), rate, n_mels, 32)
    centres = mel_band_edges(rate, n_mels)[1:-1]
    expected = int((centres - freq).abs().argmin())
    assert int(feats.mean(dim=1).argmax()) == expected


# ---- the shapes generator ------------------------------------------------------------------------


def test_shapes_generator_writes_parseable_deterministic_data(tmp_path):
    def generate(out: Path) -> None:
        subprocess.run([sys.executable, str(REPO / "scripts/make_shapes_dataset.py"), "--out", str(out), "--seed", "3",
                        "--train", "24", "--valid", "8", "--audio"], check=True, capture_output=True, timeout=60)

    generate(tmp_path / "a")
    generate(tmp_path / "b")
    assert (tmp_path / "a/train.json").read_text() == (tmp_path / "b/train.json").read_text()
    job = job_for("multi_encoder", tmp_path / "a/train.json", f"data.valid_path={tmp_path / 'a/valid.json'}",
                  "train.seq_length=96")
    train, valid = build_file_dataset(job), build_file_dataset(job, "valid")
    assert (len(train), train.bad_samples, len(valid), valid.bad_samples) == (24, 0, 8, 0)
    assert {r.category for r in valid.records} == {"color", "shape", "position", "number"}
    sample = valid.get(0, ("vision", "audio"))
    assert sample.media["vision"].shape == (1, 3, 32, 32) and sample.media["audio"].shape == (1, 16, 32)
    number = next(r for r in valid.records if r.category == "number")
    assert number.turns[0][1] in {"one", "two", "three", "four"}


# ---- which samples a step reads --------------------------------------------------------------------


def test_sample_positions_resume_exactly_and_reshuffle_every_epoch(tmp_path, media):
    records = [{"id": f"s{i}", "conversations": turn(f"Q{i}?", "A")} for i in range(20)]
    data = write_json(tmp_path / "d.json", records)
    job = job_for("llava", data)
    job.layout.finalize(2)

    def ids(step: int) -> list[str]:  # a fresh dataset and loader, as after a restart
        loader = ReplicaData(build_file_dataset(job), job, {"llm": 0, "vision": 0})
        return [s.sample_id for mb in range(loader.geometry.num_microbatches)
                for s in loader._samples("llm", step, mb, ())]

    assert ids(3) == ids(3) and ids(3) != ids(4)
    epoch0 = [sample_index(p, 20, 1234) for p in range(20)]
    epoch1 = [sample_index(p, 20, 1234) for p in range(20, 40)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20)) and epoch0 != epoch1


def test_validation_reads_every_sample_once_and_masks_the_wrap_around(tmp_path, media):
    records = [{"id": f"s{i}", "conversations": turn(f"Q{i}?", "A")} for i in range(11)]
    job = job_for("llava", write_json(tmp_path / "d.json", records))  # global batch 8: 2 steps, 5 wrapped
    job.layout.finalize(2)
    data = ValidationData(build_file_dataset(job), job, {"llm": 0, "vision": 0})
    assert data.steps == 2
    seen = []
    for step in range(2):
        for mb in range(data.geometry.num_microbatches):
            for s in data._samples("llm", step, mb, ()):
                seen.append((s.sample_id, sum(s.loss_mask) > 0))
    assert [sid for sid, counted in seen if counted] == [f"s{i}" for i in range(11)]
    assert len(seen) == 16


def test_synthetic_validation_split_is_distinct_from_training():
    job = resolve_job("llava", "tiny").config
    train, valid = build_dataset(job), build_dataset(job, "valid")
    assert len(valid) == 256
    assert train.get(0, ()).sample_id == "synthetic-0" and valid.get(0, ()).sample_id == "synthetic-4096"


# ---- the step loader (worker processes) ----------------------------------------------------------


def _same_step(a, b) -> bool:
    texts = all(torch.equal(x.input_ids, y.input_ids) and torch.equal(x.loss_mask, y.loss_mask)
                and x.placeholders == y.placeholders for x, y in zip(a.texts, b.texts, strict=True))
    media = all(torch.equal(x.items, y.items) and x.tokens_per_sample == y.tokens_per_sample
                for m in a.media for x, y in zip(a.media[m], b.media[m], strict=True))
    return texts and media and a.media.keys() == b.media.keys()


def test_worker_processes_load_exactly_the_inline_batches_and_resume_anywhere(tmp_path, media):
    """Images decoded in 2 worker processes, 2 steps ahead each: the same step batches as
    loading in the training process, in order, and a loader started at step 5 (a resumed
    run) gives step 5 of the uninterrupted one."""
    records = [{"id": f"s{i}", "image": ["red.png", "wide.png"][i % 2], "conversations": turn("<image>Q?", f"A{i}")}
               for i in range(12)]
    job = job_for("llava", write_json(tmp_path / "d.json", records))
    job.layout.finalize(2)
    source = ReplicaData(build_file_dataset(job), job, {"llm": 0, "vision": 1})
    workers = StepLoader(source, stop=9, workers=2, prefetch=2, pin_memory=False)
    inline = StepLoader(source, stop=9, workers=0, prefetch=1, pin_memory=False)
    for step in range(3, 9):
        assert _same_step(workers.step(step), inline.step(step)), step
    resumed = StepLoader(source, stop=9, workers=2, prefetch=2, pin_memory=False)
    assert _same_step(resumed.step(5), source.step(5))
    assert _same_step(resumed.step(6), source.step(6))
    assert _same_step(resumed.step(2), source.step(2))  # out of order: restarts there


def test_a_worker_error_is_the_same_one_line_error(tmp_path, media):
    data = write_json(tmp_path / "d.json", [{"id": "t", "image": "red.png", "conversations": turn("<image>", "A")}])
    job = job_for("llava", data, "data.on_bad_sample=stop")
    job.layout.finalize(2)
    source = ReplicaData(build_file_dataset(job), job, {"llm": 0, "vision": 0})
    (tmp_path / "red.png").write_bytes((tmp_path / "red.png").read_bytes()[:60])  # truncated after the check
    with pytest.raises(DataError, match="^sample t: cannot decode") as err:
        StepLoader(source, stop=3, workers=1, prefetch=1, pin_memory=False).step(0)
    assert "\n" not in str(err.value) and "DataLoader" not in str(err.value), repr(str(err.value))


def test_a_process_with_live_workers_exits(tmp_path):
    """Workers ignore SIGTERM (preemption is the trainer's), so multiprocessing's exit
    handler, which terminates them, would wait forever: the loader stops them first."""
    script = (
        "from mimo_toolkit.resolve import resolve_job\n"
        "from mimo_toolkit.runtime.datasets import build_dataset\n"
        "from mimo_toolkit.runtime.datasets.batching import ReplicaData\n"
        "from mimo_toolkit.runtime.datasets.loader import StepLoader\n"
        "job = resolve_job('llava', 'tiny').config\n"
        "loader = StepLoader(ReplicaData(build_dataset(job), job, {'llm': 0, 'vision': 0}), 50, 2, 2, False)\n"
        "loader.step(0)\n"
        "print('trained', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]
