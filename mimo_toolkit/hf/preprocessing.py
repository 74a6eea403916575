"""Image and audio preprocessing as a checkpoint's ``preprocessor_config.json`` states it.

A CLIP/LLaVA checkpoint's ``CLIPImageProcessor`` config says how images become pixels (resize
the shortest edge, centre-crop, rescale by 1/255, normalise with a mean and std, the
resampling filter); a Whisper checkpoint's ``WhisperFeatureExtractor`` config says how audio
becomes log-mel features (sample rate, FFT size, hop, mel bins, frames). Without a
checkpoint, the recipe's defaults are CLIP's and Whisper's own values. The runtime
(``runtime.datasets.media``) applies them; the export writes them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

PREPROCESSOR_CONFIG = "preprocessor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: PIL's resampling filters by the number transformers stores
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize the shortest edge to ``resize``, centre-crop ``crop``, rescale, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"
    rescale: float = 1 / 255
    normalize: bool = True

    @classmethod
    def default(cls, image_size: int) -> "ImagePreprocessing":
        return cls(image_size, image_size)

    @classmethod
    def from_config(cls, config: dict, where: str) -> "ImagePreprocessing":
        size, crop = _edge(config.get("size"), "shortest_edge"), _edge(config.get("crop_size"), "height")
        if not config.get("do_center_crop", True):
            crop = None
        if size is None or crop is None:
            raise UserError(f"{where}: expected a shortest-edge resize and a square centre crop (size, crop_size)")
        resample = RESAMPLE.get(config.get("resample", 3))
        if resample is None:
            raise UserError(f"{where}: resample={config.get('resample')} is not a PIL filter number (0-5)")
        return cls(
            resize=size if config.get("do_resize", True) else crop, crop=crop,
            mean=tuple(config.get("image_mean", CLIP_MEAN)), std=tuple(config.get("image_std", CLIP_STD)),
            resample=resample, rescale=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
            normalize=bool(config.get("do_normalize", True)),
        )

    def to_config(self) -> dict:
        return {
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": self.resize},
            "resample": {v: k for k, v in RESAMPLE.items()}[self.resample], "do_center_crop": True,
            "crop_size": {"height": self.crop, "width": self.crop}, "do_rescale": self.rescale != 1.0,
            "rescale_factor": self.rescale, "do_normalize": self.normalize, "image_mean": list(self.mean),
            "image_std": list(self.std), "do_convert_rgb": True,
        }


@dataclass(frozen=True)
class AudioPreprocessing:
    """Whisper's log-mel features: ``n_fft``-sample Hann windows every ``hop`` samples."""

    sample_rate: int
    n_fft: int
    hop: int
    mel_bins: int
    frames: int

    @classmethod
    def default(cls, sample_rate: int, mel_bins: int, frames: int) -> "AudioPreprocessing":
        """Whisper's 25 ms window and 10 ms hop (400 and 160 samples at 16 kHz)."""
        return cls(sample_rate, round(0.025 * sample_rate), round(0.010 * sample_rate), mel_bins, frames)

    @classmethod
    def from_config(cls, config: dict, where: str) -> "AudioPreprocessing":
        try:
            return cls(int(config["sampling_rate"]), int(config["n_fft"]), int(config["hop_length"]),
                       int(config["feature_size"]), int(config["nb_max_frames"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: not a WhisperFeatureExtractor config ({exc})") from None

    def to_config(self) -> dict:
        return {
            "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": self.mel_bins,
            "sampling_rate": self.sample_rate, "hop_length": self.hop, "n_fft": self.n_fft,
            "nb_max_frames": self.frames, "chunk_length": self.frames * self.hop // self.sample_rate,
            "n_samples": self.frames * self.hop, "padding_value": 0.0, "padding_side": "right",
            "return_attention_mask": False,
        }


def _edge(value, key: str) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if key == "height" and value.get("height") != value.get("width"):
            return None
        return value.get(key) or value.get("height")
    return None


def preprocessing_of(arch, directories: list[str | None]) -> ImagePreprocessing | AudioPreprocessing:
    """The preprocessing of one encoder: the first ``preprocessor_config.json`` among
    ``directories`` (its pretrained checkpoint, then the tokenizer's), else the defaults.
    Refuses one that contradicts the encoder (crop size, mel bins, frames)."""
    for directory in directories:
        path = Path(directory) / PREPROCESSOR_CONFIG if directory else None
        if path is None or not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if arch.KIND == "vision" and ("crop_size" in config or "size" in config):
            found = ImagePreprocessing.from_config(config, str(path))
            if found.crop != arch.image_size:
                raise UserError(f"{path}: crop size {found.crop} but the vision encoder's image_size is {arch.image_size}")
            return found
        if arch.KIND == "audio" and "feature_size" in config:
            found = AudioPreprocessing.from_config(config, str(path))
            if (found.mel_bins, found.frames, found.sample_rate) != (arch.num_mel_bins, arch.num_frames, arch.sample_rate):
                raise UserError(
                    f"{path}: feature_size={found.mel_bins}, nb_max_frames={found.frames}, sampling_rate="
                    f"{found.sample_rate} but the audio encoder has num_mel_bins={arch.num_mel_bins}, "
                    f"num_frames={arch.num_frames}, sample_rate={arch.sample_rate}"
                )
            return found
    if arch.KIND == "vision":
        return ImagePreprocessing.default(arch.image_size)
    return AudioPreprocessing.default(arch.sample_rate, arch.num_mel_bins, arch.num_frames)

