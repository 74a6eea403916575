#!/usr/bin/env python3
"""Write the built-in "shapes" task as a LLaVA-format dataset (train.json, valid.json, media).

Each sample is a small picture of one coloured shape (colour x shape x position, with
jittered size, place, colour and background) and one question about it::

    What color is the shape?        -> red | green | blue | yellow | purple
    What shape is it?               -> circle | square | triangle
    Where is the shape?             -> top left | top right | bottom left | bottom right

With ``--audio`` every sample also has a short WAV tone whose pitch encodes a number that
is NOT in the picture (250, 500, 1000, 2000 Hz -> one, two, three, four), and a quarter of
the questions ask for it ("What number does the tone say?"): only a model that reads the
audio encoder can answer those. Records carry a ``category`` (color, shape, position,
number) so ``mimo-toolkit eval`` reports accuracy per question kind; ``--categories``
restricts the questions asked.

The answer depends only on the media, so validation accuracy shows whether the encoders
are wired to the language model. Deterministic for a given ``--seed``.

    python scripts/make_shapes_dataset.py --out data/shapes --seed 0 --train 2000 --valid 200
"""

from __future__ import annotations

import argparse
import json
import math
import random
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 205, 30),
          "purple": (150, 60, 190)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
             "bottom right": (0.75, 0.75)}
NUMBERS = {"one": 250.0, "two": 500.0, "three": 1000.0, "four": 2000.0}
QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is it?",
    "position": "Where is the shape?",
    "number": "What number does the tone say?",
}
SUPERSAMPLE = 4  # draw large, then downscale: anti-aliased edges at tiny sizes


def draw_image(rng: random.Random, size: int, color: str, shape: str, position: str) -> Image.Image:
    big = size * SUPERSAMPLE
    grey = rng.randint(200, 250)
    img = Image.new("RGB", (big, big), (grey, grey, grey))
    rgb = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLORS[color])
    fx, fy = POSITIONS[position]
    cx = (fx + rng.uniform(-0.05, 0.05)) * big
    cy = (fy + rng.uniform(-0.05, 0.05)) * big
    r = rng.uniform(0.18, 0.23) * big
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        side = r * 0.9
        draw.rectangle([cx - side, cy - side, cx + side, cy + side], fill=rgb)
    else:
        draw.polygon([(cx, cy - r), (cx + r * 1.05, cy + r * 0.8), (cx - r * 1.05, cy + r * 0.8)], fill=rgb)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def write_tone(path: Path, rng: random.Random, freq: float, seconds: float, rate: int) -> None:
    """16-bit mono sine with a 10 ms fade in and out and a little noise."""
    n = int(seconds * rate)
    freq *= rng.uniform(0.97, 1.03)
    amp, phase, fade = rng.uniform(0.3, 0.6), rng.uniform(0, 2 * math.pi), max(1, int(0.01 * rate))
    t = np.arange(n)
    envelope = np.minimum(1.0, np.minimum(t, n - 1 - t) / fade)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 0.01, n)
    x = amp * envelope * np.sin(2 * math.pi * freq * t / rate + phase) + noise
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def make_split(out: Path, split: str, count: int, seed: int, args) -> int:
    rng = random.Random(seed * 7919 + {"train": 1, "valid": 2}[split])
    categories = args.categories
    records = []
    for i in range(count):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        position, number = rng.choice(list(POSITIONS)), rng.choice(list(NUMBERS))
        category = categories[i % len(categories)] if split == "valid" else rng.choice(categories)
        name = f"{split}-{i:05d}"
        image = f"images/{name}.png"
        draw_image(rng, args.image_size, color, shape, position).save(out / image)
        tags = "<image>\n"
        record = {"id": name, "image": image, "category": category}
        if args.audio:
            record["audio"] = f"audio/{name}.wav"
            write_tone(out / record["audio"], rng, NUMBERS[number], args.audio_seconds, args.sample_rate)
            tags += "<audio>\n"
        answer = {"color": color, "shape": shape, "position": position, "number": number}[category]
        record["conversations"] = [{"from": "human", "value": tags + QUESTIONS[category]},
                                   {"from": "gpt", "value": answer}]
        records.append(record)
    (out / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
    return len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="training samples")
    parser.add_argument("--valid", type=int, default=200, help="validation samples")
    parser.add_argument("--audio", action="store_true", help="add a WAV tone per sample (multi_encoder)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (the tiny ViT's)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--audio-seconds", type=float, default=0.32, help="clip length (tiny: 32 frames x 10 ms)")
    parser.add_argument("--categories", help="comma-separated question kinds to ask (default: all; number needs --audio)")
    args = parser.parse_args(argv)
    kinds = ["color", "shape", "position"] + (["number"] if args.audio else [])
    args.categories = args.categories.split(",") if args.categories else kinds
    unknown = [c for c in args.categories if c not in kinds]
    if unknown:
        parser.error(f"--categories {','.join(unknown)}: choose from {','.join(kinds)}")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    if args.audio:
        (args.out / "audio").mkdir(exist_ok=True)
    for split, count in (("train", args.train), ("valid", args.valid)):
        n = make_split(args.out, split, count, args.seed, args)
        print(f"wrote {n} {split} samples to {args.out / (split + '.json')}")


if __name__ == "__main__":
    main()
