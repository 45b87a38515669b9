"""app/data/augment.py: the on-the-fly waveform effects of conf/data/asr_voices.yaml, on real recordings."""

import os
from pathlib import Path

import pytest
import torch

from app.data.audio import load_waveform
from app.data.augment import (
    WaveAugmentConfig,
    add_noise,
    augment_waveform,
    change_speed,
    colour,
    reverberate,
    telephone,
)
from app.errors import UserInputError
from tests.conftest import ROOT

DATA_ROOT = Path(os.environ.get("QRNN_DATA_ROOT", ROOT.parent / "shared" / "data"))
RATE = 16000
ALL_ON = WaveAugmentConfig(speed_prob=1, coloration_prob=1, reverb_prob=1, noise_prob=1, telephone_prob=1)


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """A real LibriVox sentence (pocketsphinx test data), 16 kHz."""
    path = DATA_ROOT / "pocketsphinx_testdata" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"
    return load_waveform(path, RATE)


def _band_energy(wave: torch.Tensor, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(wave).abs().pow(2)
    frequency = torch.fft.rfftfreq(wave.numel(), 1 / RATE)
    return float(spectrum[(frequency >= low) & (frequency < high)].sum() / spectrum.sum())


def _rms(wave: torch.Tensor) -> float:
    return float(wave.pow(2).mean().sqrt())


def test_a_seeded_generator_gives_the_same_augmentation_and_another_seed_another(speech):
    first = augment_waveform(speech, RATE, ALL_ON, torch.Generator().manual_seed(3))
    again = augment_waveform(speech, RATE, ALL_ON, torch.Generator().manual_seed(3))
    other = augment_waveform(speech, RATE, ALL_ON, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert first.shape != other.shape or not torch.allclose(first, other)
    assert torch.isfinite(first).all() and first.abs().max() <= 1.5


def test_all_probabilities_zero_leave_the_wave_as_it_is(speech):
    off = WaveAugmentConfig(speed_prob=0, coloration_prob=0, reverb_prob=0, noise_prob=0, telephone_prob=0)
    assert torch.equal(augment_waveform(speech, RATE, off), speech)


def test_speed_changes_the_length_by_the_factor(speech):
    faster, slower = change_speed(speech, RATE, 1.1), change_speed(speech, RATE, 0.9)
    assert abs(faster.numel() - speech.numel() / 1.1) <= 2
    assert abs(slower.numel() - speech.numel() / 0.9) <= 2


def test_noise_is_added_at_the_requested_snr(speech):
    for colour_name in ("white", "pink", "brown"):
        noisy = add_noise(speech, 10.0, colour_name, torch.Generator().manual_seed(0))
        snr = 20 * torch.log10(torch.tensor(_rms(speech) / _rms(noisy - speech)))
        assert abs(float(snr) - 10.0) < 0.01, colour_name
    pink = add_noise(speech, 0.0, "pink", torch.Generator().manual_seed(0)) - speech
    white = add_noise(speech, 0.0, "white", torch.Generator().manual_seed(0)) - speech
    assert _band_energy(pink, 0, 1000) > 2 * _band_energy(white, 0, 1000)  # pink: more energy at low frequencies


def test_telephone_keeps_the_300_3400_hz_band_only(speech):
    before, after = speech, telephone(speech, RATE)
    assert after.shape == before.shape
    assert _band_energy(before, 4000, 8000) > 0.005
    assert _band_energy(after, 4000, 8000) < 0.1 * _band_energy(before, 4000, 8000)
    assert _band_energy(after, 0, 200) < 0.1 * _band_energy(before, 0, 200)


def test_reverb_keeps_the_level_and_spreads_the_energy_in_time(speech):
    wet = reverberate(speech, RATE, 0.6, torch.Generator().manual_seed(0))
    assert wet.shape == speech.shape and abs(_rms(wet) / _rms(speech) - 1) < 1e-3
    # the room smears the silence between words: fewer near-silent 10 ms frames
    frames = lambda wave: wave[: wave.numel() // 160 * 160].reshape(-1, 160).pow(2).mean(1)  # noqa: E731
    quiet = lambda wave: int((frames(wave) < 1e-3 * frames(wave).max()).sum())  # noqa: E731
    assert quiet(wet) < quiet(speech)


def test_coloration_changes_the_spectrum_within_its_gain(speech):
    coloured = colour(speech, RATE, 2, 6.0, torch.Generator().manual_seed(1))
    ratio = torch.fft.rfft(coloured[:8192]).abs() / torch.fft.rfft(speech[:8192]).abs().clamp_min(1e-6)
    assert not torch.allclose(coloured, speech)
    assert float(ratio[(ratio > 0)].median()) < 10 ** (12 / 20)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"noise_prob": 1.5}, "noise_prob=1.5 must be a probability"),
        ({"speed": [1.1, 0.9]}, "speed=[1.1, 0.9] must be [low, high]"),
        ({"rt60_s": [0.0, 0.5]}, "rt60_s=[0.0, 0.5] must be [low, high] with 0 < low"),
        ({"reverb": 0.3}, "unknown keys ['reverb']"),
        ({"snr_db": "loud"}, "ranges are [low, high] lists"),
    ],
)
def test_bad_wave_augment_settings_are_named_in_one_line(values, message):
    with pytest.raises(UserInputError) as err:
        WaveAugmentConfig.from_mapping(values)
    assert message in str(err.value) and "\n" not in str(err.value)
