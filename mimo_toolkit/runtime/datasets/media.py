"""Media files -> encoder inputs: images for a CLIP-style ViT, WAV audio as Whisper-style log-mel features.

Images: decoded with Pillow, converted to RGB, resized so the short side is ``resize``
(bicubic, or the checkpoint's filter) and centre-cropped to a square, rescaled and normalised
(CLIP's preprocessing; a pretrained checkpoint's ``preprocessor_config.json`` gives the
numbers: :class:`mimo_toolkit.hf.preprocessing.ImagePreprocessing`).

Audio: PCM WAV read with the standard library, mixed to mono, resampled (linearly) to the
encoder's ``sample_rate`` and padded or trimmed to ``num_frames`` hops of 10 ms, then
Whisper's features: a 25 ms Hann-window STFT, a Slaney-style mel filterbank (librosa's
default, as Whisper uses), ``log10`` of the power clamped at 1e-10, floored at 8 below the
clip's maximum, and scaled by ``(x + 4) / 4``. Written with ``torch.stft`` so no audio
library is needed.

:func:`check_image` and :func:`check_wav` read only what proves a file decodable enough to
be kept at dataset build time (headers; for images also Pillow's integrity check).
"""

from __future__ import annotations

import math
import wave
from functools import lru_cache

import torch
import torch.nn.functional as F

from ...hf.preprocessing import AudioPreprocessing, ImagePreprocessing


# ---- images -------------------------------------------------------------------------------


def check_image(path: str) -> None:
    """Raise if ``path`` is not an image Pillow can identify and verify."""
    from PIL import Image

    with Image.open(path) as img:
        img.verify()


def load_image(path: str, pre: ImagePreprocessing | int) -> torch.Tensor:
    """``[3, crop, crop]`` float tensor (``pre`` an int: CLIP's preprocessing at that size)."""
    from PIL import Image

    pre = ImagePreprocessing.default(pre) if isinstance(pre, int) else pre
    size = pre.crop
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if min(w, h) != pre.resize:  # shortest edge to `resize`, the other truncated (transformers' rule)
            short, long = pre.resize, int(pre.resize * max(w, h) / min(w, h))
            img = img.resize((short, long) if w <= h else (long, short), Image.Resampling[pre.resample.upper()])
            w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    pixels = data.view(size, size, 3).permute(2, 0, 1).to(torch.float64) * pre.rescale
    if pre.normalize:
        mean = torch.tensor(pre.mean, dtype=torch.float64).view(3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float64).view(3, 1, 1)
        pixels = (pixels - mean) / std
    return pixels.float()


# ---- audio --------------------------------------------------------------------------------


def check_wav(path: str) -> None:
    """Raise if ``path`` is not a PCM WAV file the loader can read."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() not in (1, 2, 4) or w.getnframes() == 0:
            raise ValueError(f"unsupported WAV: {w.getsampwidth()}-byte samples, {w.getnframes()} frames")


def load_wav(path: str) -> tuple[torch.Tensor, int]:
    """Mono waveform in [-1, 1] and its sample rate."""
    with wave.open(path, "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        samples = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() - 128.0) / 128.0
    else:
        dtype = {2: torch.int16, 4: torch.int32}[width]
        samples = torch.frombuffer(bytearray(raw), dtype=dtype).float() / float(2 ** (8 * width - 1))
    return samples.view(-1, channels).mean(dim=1), rate


def resample(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """Linear-interpolation resampling (store audio at the encoder's rate to avoid it)."""
    if rate == target:
        return wav
    length = max(1, round(wav.numel() * target / rate))
    return F.interpolate(wav.view(1, 1, -1), size=length, mode="linear", align_corners=False).view(-1)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    mel = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_band_edges(sample_rate: int, n_mels: int) -> torch.Tensor:
    """``n_mels + 2`` frequencies (Hz): band ``k`` rises from edge ``k``, peaks at ``k+1``, ends at ``k+2``."""
    top = _hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    return _mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, area-normalised (librosa ``norm='slaney'``)."""
    edges = mel_band_edges(sample_rate, n_mels)
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    widths = edges.diff()
    ramps = edges.view(-1, 1) - freqs.view(1, -1)
    lower = -ramps[:-2] / widths[:-1].view(-1, 1)
    upper = ramps[2:] / widths[1:].view(-1, 1)
    filters = torch.clamp(torch.minimum(lower, upper), min=0.0)
    filters *= (2.0 / (edges[2:] - edges[:-2])).view(-1, 1)
    return filters.float()


def stft_sizes(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop): Whisper's 25 ms window and 10 ms hop (400 and 160 at 16 kHz)."""
    return round(0.025 * sample_rate), round(0.010 * sample_rate)


def log_mel(wav: torch.Tensor, sample_rate: int, n_mels: int, n_frames: int,
            n_fft: int | None = None, hop: int | None = None) -> torch.Tensor:
    """``[n_mels, n_frames]`` Whisper-style log-mel features of a mono waveform at ``sample_rate``
    (window and hop: a checkpoint's, else Whisper's 25 ms and 10 ms)."""
    default_fft, default_hop = stft_sizes(sample_rate)
    n_fft, hop = n_fft or default_fft, hop or default_hop
    wav = F.pad(wav, (0, max(0, n_frames * hop - wav.numel())))[: n_frames * hop]
    window = torch.hann_window(n_fft)
    spec = torch.stft(wav, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec[:, :-1].abs() ** 2  # Whisper drops the last frame: n_frames frames remain
    mel = mel_filterbank(sample_rate, n_fft, n_mels) @ power
    log_spec = mel.clamp_min(1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def load_audio_features(path: str, pre: AudioPreprocessing) -> torch.Tensor:
    wav, rate = load_wav(path)
    return log_mel(resample(wav, rate, pre.sample_rate), pre.sample_rate, pre.mel_bins, pre.frames, pre.n_fft, pre.hop)
