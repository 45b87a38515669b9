"""Waveforms to features: read (soundfile), resample, 80-dim fbank / log-mel (torchaudio), CMVN, VTLP, SpecAugment.

Audio is read with soundfile, not `torchaudio.load` (that needs torchcodec and FFmpeg; docs/training.md, set-up notes).
Waveforms are float32 in [-1, 1], shape (N,); features are (T, F) float32, one row per 10 ms frame.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

FEATURE_KINDS = ("fbank", "logmel")
INT16_SCALE = 32768.0  # Kaldi computes fbank on 16-bit sample values; dither is in those units too


@dataclass(frozen=True)
class FeatureConfig:
    """Log mel features. dither: TTS silence is exact zeros, and without a noise floor its log-mel values
    would sit at the floor constant, unlike any real recording's silence."""

    kind: str = "fbank"  # fbank: Kaldi-compatible log mel filterbank; logmel: log of torchaudio's MelSpectrogram
    num_mel_bins: int = 80  # features per frame (F)
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop: one feature row per 10 ms
    sample_rate: int = 16000  # every waveform is resampled to this rate first
    dither: float = 1.0  # std of Gaussian noise added to the waveform, in 16-bit sample units (Kaldi's default)

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"features.kind={self.kind!r} is unknown: choose one of {', '.join(FEATURE_KINDS)}")


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Park et al. 2019 masks, applied to normalized training features (masked values become 0, the mean)."""

    freq_masks: int = 2  # number of frequency masks
    freq_mask_bins: int = 27  # each at most this many mel bins wide (F in the paper)
    time_masks: int = 2  # number of time masks
    time_mask_frames: int = 40  # each at most this many frames long (T in the paper)
    time_mask_max_fraction: float = 0.05  # and at most this fraction of the utterance (p in the paper)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (N,) float32 in [-1, 1] and the file's sample rate; channels are averaged to mono."""
    samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return samples.mean(axis=1), sample_rate


def resample(wave: Tensor, from_rate: int, to_rate: int) -> Tensor:
    """(N,) float32 at `from_rate` -> (M,) at `to_rate` (band-limited sinc interpolation)."""
    if from_rate == to_rate:
        return wave
    return torchaudio.functional.resample(wave, from_rate, to_rate)


def load_waveform(path: str | Path, sample_rate: int) -> Tensor:
    """The file at `path` as (N,) float32 at `sample_rate`, resampled if it was recorded at another rate."""
    samples, file_rate = read_audio(path)
    return resample(torch.from_numpy(samples), file_rate, sample_rate)


def compute_features(
    wave: Tensor, config: FeatureConfig, generator: torch.Generator | None = None, warp: float = 1.0
) -> Tensor:
    """Log mel features (T, num_mel_bins) float32 of a waveform (N,) float32 at config.sample_rate.

    fbank: torchaudio.compliance.kaldi.fbank (Povey window, pre-emphasis, frames inside the signal only:
    T = 1 + (N - window) // hop). logmel: MelSpectrogram with a centred STFT, T = 1 + N // hop.
    generator: the dither's random source (pass a seeded one for reproducible evaluation features).
    warp: vocal tract length warp factor of the mel filterbank (Kaldi's piecewise-linear VTLN warp; fbank
    only); 1.0 is no warp. Training draws one per utterance (`vtlp_warp`).
    """
    if warp != 1.0 and config.kind != "fbank":
        raise ValueError(f"a vocal tract length warp needs features.kind=fbank, not {config.kind!r}")
    if config.dither > 0:
        noise = torch.randn(wave.shape, generator=generator, dtype=wave.dtype)
        wave = wave + noise * (config.dither / INT16_SCALE)
    window = round(config.sample_rate * config.frame_length_ms / 1000)
    hop = round(config.sample_rate * config.frame_shift_ms / 1000)
    if wave.numel() < window:  # both need one full window: a shorter clip is zero-padded to one
        wave = torch.nn.functional.pad(wave, (0, window - wave.numel()))
    if config.kind == "fbank":
        return torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0) * INT16_SCALE,
            num_mel_bins=config.num_mel_bins,
            frame_length=config.frame_length_ms,
            frame_shift=config.frame_shift_ms,
            sample_frequency=config.sample_rate,
            dither=0.0,
            energy_floor=0.0,
            vtln_warp=warp,
        )
    mel = torchaudio.functional.melscale_fbanks(
        window // 2 + 1, 0.0, config.sample_rate / 2, config.num_mel_bins, config.sample_rate
    )
    spectrum = (
        torch.stft(wave, window, hop, window=torch.hann_window(window), center=True, return_complex=True).abs().pow(2)
    )  # (window // 2 + 1, T)
    return (spectrum.T @ mel).clamp_min(1e-10).log()


def utterance_cmvn(features: Tensor) -> Tensor:
    """(T, F) normalized to zero mean and unit variance per feature over this utterance's frames."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, correction=0).clamp_min(1e-5)
    return (features - mean) / std


def apply_cmvn(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(T, F) normalized with global statistics mean, std: (F,)."""
    return (features - mean) / std


def vtlp_warp(low: float, high: float) -> float:
    """A warp factor drawn uniformly from [low, high] (torch's global random state): vocal tract length
    perturbation (Jaitly & Hinton 2013), which makes every training utterance sound like another speaker."""
    return low + (high - low) * torch.rand(()).item()


def spec_augment(features: Tensor, config: SpecAugmentConfig) -> Tensor:
    """(T, F) with random frequency and time masks set to 0 (uses torch's global random state)."""
    masking = torchaudio.transforms.SpecAugment(
        n_time_masks=config.time_masks,
        time_mask_param=config.time_mask_frames,
        n_freq_masks=config.freq_masks,
        freq_mask_param=config.freq_mask_bins,
        p=config.time_mask_max_fraction,
        zero_masking=True,
    )
    return masking(features.T).T  # torchaudio masks (..., freq, time)
