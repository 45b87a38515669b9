"""Waveform augmentation for training speech, applied on the fly (a new draw every epoch): speed, microphone
coloration, room reverberation, additive noise at a random SNR, and the telephone band.

Each effect fires with its own probability and draws its parameters from the generator passed in (default: torch's
global random state, which Lightning seeds per run and per loader worker, as it does for VTLP and SpecAugment), so a
run is reproducible from its seed. The order is the physical chain: the talker's speed, the microphone, the room, the
noise in the room, then the channel.

    speed        resample by a factor in `speed` (0.9-1.1: tempo and pitch together, Ko et al. 2015)
    coloration   `coloration_bands` peaking filters, random centre 150-6000 Hz, gain within +-`coloration_db`
    reverb       a generated impulse response: a direct path, then exponentially decaying noise whose RT60
                 is drawn from `rt60_s`; the result is scaled back to the input's RMS
    noise        white, pink or brown noise (shaped in the frequency domain) at an SNR in `snr_db`
    telephone    300-3400 Hz band-pass, 8 kHz resampling and 8-bit mu-law companding (G.711), back to the input rate
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torchaudio
from torch import Tensor

from app.errors import UserInputError

NOISE_COLOURS = ("white", "pink", "brown")


@dataclass(frozen=True)
class WaveAugmentConfig:
    """Probabilities and ranges of the on-the-fly waveform effects (conf/data/asr_voices.yaml: data.wave_augment)."""

    speed_prob: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)
    coloration_prob: float = 0.3
    coloration_bands: int = 2
    coloration_db: float = 6.0
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.7)
    noise_prob: float = 0.4
    snr_db: tuple[float, float] = (5.0, 30.0)
    telephone_prob: float = 0.15

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise UserInputError(f"data.wave_augment.{item.name}={value} must be a probability in [0, 1]")
        for name, positive in (("speed", True), ("rt60_s", True), ("snr_db", False)):
            low, high = getattr(self, name)
            if not (low <= high and (low > 0 or not positive)):
                bound = "0 < low <= high" if positive else "low <= high"
                raise UserInputError(f"data.wave_augment.{name}={[low, high]} must be [low, high] with {bound}")
        if self.coloration_bands < 0 or self.coloration_db < 0:
            raise UserInputError("data.wave_augment.coloration_bands and coloration_db must be >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WaveAugmentConfig:
        """From the Hydra mapping; an unknown key is named in one line with the known ones."""
        known = {item.name for item in fields(cls)}
        if unknown := sorted(set(values) - known):
            raise UserInputError(f"data.wave_augment has unknown keys {unknown}: use {sorted(known)}")
        ranges = {"speed", "rt60_s", "snr_db"}
        try:
            return cls(
                **{key: tuple(float(v) for v in value) if key in ranges else value for key, value in values.items()}
            )
        except (TypeError, ValueError) as err:
            raise UserInputError(f"data.wave_augment: {err} (ranges are [low, high] lists of numbers)") from err


def augment_waveform(
    wave: Tensor, sample_rate: int, config: WaveAugmentConfig, generator: torch.Generator | None = None
) -> Tensor:
    """1-D float waveform -> the augmented waveform (a new tensor; its length changes with the speed factor)."""

    def fires(probability: float) -> bool:
        return probability > 0 and _uniform(0.0, 1.0, generator) < probability

    if fires(config.speed_prob):
        wave = change_speed(wave, sample_rate, _uniform(*config.speed, generator))
    if fires(config.coloration_prob):
        wave = colour(wave, sample_rate, config.coloration_bands, config.coloration_db, generator)
    if fires(config.reverb_prob):
        wave = reverberate(wave, sample_rate, _uniform(*config.rt60_s, generator), generator)
    if fires(config.noise_prob):
        colour_name = NOISE_COLOURS[int(_uniform(0.0, len(NOISE_COLOURS), generator)) % len(NOISE_COLOURS)]
        wave = add_noise(wave, _uniform(*config.snr_db, generator), colour_name, generator)
    if fires(config.telephone_prob):
        wave = telephone(wave, sample_rate)
    return wave


def change_speed(wave: Tensor, sample_rate: int, factor: float) -> Tensor:
    """Play `factor` times faster (shorter and higher for factor > 1), by resampling on a 1 % grid."""
    step = sample_rate // 100
    source_rate = max(step, round(sample_rate * factor / step) * step)
    if source_rate == sample_rate:
        return wave
    return torchaudio.functional.resample(wave, source_rate, sample_rate)


def colour(wave: Tensor, sample_rate: int, bands: int, max_db: float, generator: torch.Generator | None) -> Tensor:
    """A microphone's uneven response: `bands` smooth bumps or dips (Gaussian in log frequency) at random centres
    (150-6000 Hz), gains (within +-max_db) and widths (0.3-1.5 octaves), applied in the frequency domain."""
    frequency = torch.fft.rfftfreq(_fast_length(wave.numel()), 1.0 / sample_rate).clamp_min(1.0)
    gain_db = torch.zeros_like(frequency)
    for _ in range(bands):
        centre = _uniform(math.log2(150.0), math.log2(min(6000.0, sample_rate * 0.45)), generator)
        gain, width = _uniform(-max_db, max_db, generator), _uniform(0.3, 1.5, generator)
        gain_db += gain * torch.exp(-0.5 * ((frequency.log2() - centre) / width) ** 2)
    return _finite(_filter(wave, 10 ** (gain_db / 20)))


def room_impulse_response(sample_rate: int, rt60_s: float, generator: torch.Generator | None) -> Tensor:
    """A direct path, a 1-20 ms gap, then a diffuse tail: Gaussian noise decaying by 60 dB in rt60_s."""
    length = max(1, int(rt60_s * sample_rate))
    t = torch.arange(length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length, generator=generator) * torch.exp(-6.9078 * t / rt60_s)  # ln(1000): -60 dB
    gap = int(_uniform(0.001, 0.02, generator) * sample_rate)
    tail[:gap] = 0.0
    direct_to_reverberant = 10 ** (_uniform(-3.0, 6.0, generator) / 20)
    tail = tail / tail.norm().clamp_min(1e-8)
    tail[0] = direct_to_reverberant
    return tail


def reverberate(wave: Tensor, sample_rate: int, rt60_s: float, generator: torch.Generator | None) -> Tensor:
    """The wave in a room of this RT60 (same length as the input, same RMS)."""
    response = room_impulse_response(sample_rate, rt60_s, generator)
    size = _fast_length(wave.numel() + response.numel() - 1)
    wet = torch.fft.irfft(torch.fft.rfft(wave, n=size) * torch.fft.rfft(response, n=size), n=size)[: wave.numel()]
    return _finite(wet * (_rms(wave) / _rms(wet)))


def coloured_noise(length: int, colour_name: str, generator: torch.Generator | None) -> Tensor:
    """Unit-RMS noise with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum."""
    white = torch.randn(length, generator=generator)
    if colour_name == "white":
        return white / _rms(white)
    exponent = {"pink": 0.5, "brown": 1.0}[colour_name]
    size = _fast_length(length)
    frequency = torch.arange(size // 2 + 1, dtype=torch.float32).clamp_min(1.0)
    shaped = _filter(white, frequency**-exponent)
    return shaped / _rms(shaped)


def add_noise(wave: Tensor, snr_db: float, colour_name: str, generator: torch.Generator | None) -> Tensor:
    """Noise added at this signal-to-noise ratio (speech RMS over noise RMS, in dB)."""
    noise = coloured_noise(wave.numel(), colour_name, generator)
    return wave + noise * (_rms(wave) / 10 ** (snr_db / 20))


def telephone(wave: Tensor, sample_rate: int) -> Tensor:
    """300-3400 Hz, 8 kHz, 8-bit mu-law, back at the input rate and level."""
    frequency = torch.fft.rfftfreq(_fast_length(wave.numel()), 1.0 / sample_rate)
    band = torch.sigmoid((frequency - 300.0) / 40.0) * torch.sigmoid((3400.0 - frequency) / 80.0)
    narrow = _filter(wave, band)
    if sample_rate % 8000 == 0:  # the 8 kHz channel: keep every k-th sample (the band-pass removed what would alias)
        step = sample_rate // 8000
        peak = narrow.abs().max().clamp_min(1e-8)
        coded = torchaudio.functional.mu_law_encoding(narrow[::step] / peak, 256)
        decoded = torchaudio.functional.mu_law_decoding(coded, 256) * peak
        narrow = _filter(decoded.repeat_interleave(step)[: wave.numel()], band)  # hold, then the band again
    return _finite(narrow)


def _fast_length(length: int) -> int:
    """The FFT size used for a signal of `length` samples: the next power of two (no wrap-around, fast)."""
    return 1 << max(1, (length - 1).bit_length())


def _filter(wave: Tensor, response: Tensor) -> Tensor:
    """The wave through a zero-phase filter whose magnitude response is `response` on the rfft grid of
    _fast_length(len(wave))."""
    size = 2 * (response.numel() - 1)
    return torch.fft.irfft(torch.fft.rfft(wave, n=size) * response, n=size)[: wave.numel()]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _rms(wave: Tensor) -> Tensor:
    return wave.pow(2).mean().sqrt().clamp_min(1e-8)


def _finite(wave: Tensor) -> Tensor:
    """Filters can overshoot on a loud input: keep the samples finite and within +-1.5 full scale."""
    return torch.nan_to_num(wave, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1.5, 1.5)
