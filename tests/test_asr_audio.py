"""Audio reading and resampling on real recordings, feature shapes, CMVN, VTLP and SpecAugment."""

from pathlib import Path

import pytest
import soundfile as sf
import torch

from app.data.audio import (
    FeatureConfig,
    SpecAugmentConfig,
    apply_cmvn,
    compute_features,
    load_waveform,
    read_audio,
    spec_augment,
    utterance_cmvn,
    vtlp_warp,
)

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FSDD_FILE = DATA_ROOT / "fsdd" / "recordings" / "7_jackson_0.wav"
LIBRIVOX_FILE = DATA_ROOT / "pocketsphinx_testdata" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"


def test_fsdd_recording_is_read_at_8khz_and_resampled_to_16khz():
    samples, rate = read_audio(FSDD_FILE)
    assert rate == 8000 and samples.dtype.name == "float32" and samples.ndim == 1
    wave = load_waveform(FSDD_FILE, 16000)
    assert wave.dtype == torch.float32 and wave.numel() == 2 * samples.size
    assert 0 < wave.abs().max() <= 1.0


@pytest.mark.parametrize(("kind", "frames"), [("fbank", 98), ("logmel", 101)])
def test_features_are_80_bins_every_10_ms(kind, frames):
    wave = torch.randn(16000) * 0.1  # 1 s at 16 kHz
    features = compute_features(wave, FeatureConfig(kind=kind))
    assert features.shape == (frames, 80) and features.dtype == torch.float32  # fbank: 1 + (16000 - 400) // 160
    assert torch.isfinite(features).all()


def test_features_of_a_real_sentence_have_one_row_per_10_ms():
    info = sf.info(str(LIBRIVOX_FILE))
    features = compute_features(load_waveform(LIBRIVOX_FILE, 16000), FeatureConfig())
    assert features.shape == (1 + (info.frames - 400) // 160, 80)


def test_digital_silence_gets_a_finite_dithered_noise_floor():
    silence = torch.zeros(8000)
    assert torch.isfinite(compute_features(silence, FeatureConfig(dither=0.0))).all()
    seeded = [compute_features(silence, FeatureConfig(), torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])  # evaluation features are reproducible
    assert seeded[0].std() > 0.1


def test_cmvn_normalizes_each_feature():
    features = torch.randn(200, 80) * 3 + 7
    normalized = utterance_cmvn(features)
    assert normalized.mean(0).abs().max() < 1e-4 and (normalized.std(0, correction=0) - 1).abs().max() < 1e-3
    mean, std = features.mean(0), features.std(0)
    assert torch.allclose(apply_cmvn(features, mean, std), (features - mean) / std)


def test_spec_augment_masks_bands_and_frames_with_zeros():
    torch.manual_seed(0)
    features = torch.randn(300, 80) + 5  # no zeros before masking
    masked = spec_augment(
        features, SpecAugmentConfig(freq_masks=2, freq_mask_bins=10, time_masks=2, time_mask_frames=15)
    )
    zero = masked == 0
    assert masked.shape == features.shape
    assert 0 < zero.float().mean() < 0.5
    assert torch.equal(masked[~zero], features[~zero])
    assert (zero.all(dim=0).sum() + zero.all(dim=1).sum()) > 0  # whole bands or whole frames


def test_vtlp_warps_the_filterbank_of_a_real_recording_along_frequency():
    wave = load_waveform(LIBRIVOX_FILE, 16000)
    config = FeatureConfig(dither=0.0)
    plain = compute_features(wave, config)
    low, high = (compute_features(wave, config, warp=warp) for warp in (0.9, 1.1))
    assert torch.equal(compute_features(wave, config, warp=1.0), plain)
    assert low.shape == high.shape == plain.shape
    # a warp factor > 1 reads each mel band from lower frequencies (a longer vocal tract), < 1 from higher:
    # the bands' mean energy is shifted toward higher bins by one and lower bins by the other
    centroid = [(f.exp().mean(0) * torch.arange(80)).sum() / f.exp().mean(0).sum() for f in (low, plain, high)]
    assert centroid[0] < centroid[1] < centroid[2] or centroid[0] > centroid[1] > centroid[2]
    assert (low - plain).abs().mean() > 0.05 and (high - plain).abs().mean() > 0.05
    with pytest.raises(ValueError, match="features.kind=fbank"):
        compute_features(wave, FeatureConfig(kind="logmel"), warp=1.1)


def test_vtlp_draws_warps_uniformly_within_the_range():
    torch.manual_seed(0)
    warps = torch.tensor([vtlp_warp(0.9, 1.1) for _ in range(2000)])
    assert warps.min() >= 0.9 and warps.max() <= 1.1
    assert abs(warps.mean().item() - 1.0) < 0.01 and warps.std() > 0.05
    assert vtlp_warp(1.0, 1.0) == 1.0
