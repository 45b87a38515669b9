"""ASR manifests on the real recordings in shared/data, bad-input handling, LibriSpeech layout, batches.

The real sets are shared/data's FSDD, yesno and pocketsphinx-testdata (QRNN_DATA_ROOT overrides where).
"""

import csv
import importlib.util
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate

from app.config import build
from app.data.asr import ASRDataModule, BucketBatchSampler, collate
from app.data.audio import load_waveform
from app.data.manifest import (
    fsdd_utterances,
    pocketsphinx_utterances,
    read_manifest,
    scan_librispeech,
    write_manifest,
    yesno_utterances,
)
from app.data.text import Tokenizer, normalize_text
from app.errors import UserInputError
from tests.conftest import DATA_ROOT, ROOT, compose_config, run_script

FSDD = DATA_ROOT / "fsdd" / "recordings"


def _shared_tsv(name: str) -> dict[str, dict[str, str]]:
    """shared/data's own manifest.tsv (generated independently), keyed by absolute audio path."""
    with open(DATA_ROOT / name / "manifest.tsv", newline="") as file:
        return {str((DATA_ROOT / row["path"]).resolve()): row for row in csv.DictReader(file, delimiter="\t")}


def test_fsdd_manifests_follow_the_official_split_on_the_real_files():
    splits = fsdd_utterances(DATA_ROOT / "fsdd")
    assert {split: len(rows) for split, rows in splits.items()} == {"test": 300, "valid": 300, "train": 2400}
    reference = _shared_tsv("fsdd")
    for split, rows in splits.items():
        assert len({u.speaker for u in rows}) == 6
        for utterance in rows:
            row = reference[utterance.audio]
            assert utterance.text == row["transcript"] and utterance.speaker == row["speaker"]
            assert utterance.sample_rate == 8000 and utterance.duration == pytest.approx(
                float(row["duration_s"]), abs=1e-3
            )
            assert (row["split"] == "test") == (split == "test")  # valid + train = the official train split


def test_yesno_and_pocketsphinx_manifests_on_the_real_files(tmp_path):
    yesno = yesno_utterances(DATA_ROOT / "yesno")
    reference = _shared_tsv("yesno")
    assert len(yesno) == 60 and all(len(u.text.split()) == 8 for u in yesno)
    assert all(u.text == reference[u.audio]["transcript"] for u in yesno)

    pocketsphinx = pocketsphinx_utterances(DATA_ROOT / "pocketsphinx_testdata", tmp_path / "wav")
    assert len(pocketsphinx) == 11
    texts = {u.text for u in pocketsphinx}
    assert {"he was not an ill disposed young man", "ten of clubs", "go forward ten meters"} <= texts
    goforward = next(u for u in pocketsphinx if u.speaker == "goforward")
    assert sf.info(goforward.audio).samplerate == 16000 and goforward.duration == pytest.approx(2.786, abs=1e-3)


def test_manifest_round_trips_through_jsonl_and_csv(tmp_path, caplog):
    utterances = fsdd_utterances(DATA_ROOT / "fsdd")["test"][:5]
    write_manifest(tmp_path / "m.jsonl", utterances)
    with open(tmp_path / "m.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["audio", "duration", "speaker", "text"])
        writer.writeheader()
        writer.writerows(
            {"audio": u.audio, "duration": u.duration, "speaker": u.speaker, "text": u.text.upper()} for u in utterances
        )
    for name in ("m.jsonl", "m.csv"):
        with caplog.at_level(logging.WARNING):
            read = read_manifest(tmp_path / name, "fsdd_sample", tmp_path / "cache", 16000, 20.0)
        assert read == utterances  # the CSV's upper-case text is normalized on reading
        assert "5 of 5 files are 8000 Hz, resampled to 16000 Hz" in caplog.text  # one line for the set
        caplog.clear()


def _write_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def test_bad_input_is_named_in_one_line_each_and_the_rest_is_kept(tmp_path, caplog):
    cards = DATA_ROOT / "pocketsphinx_testdata" / "cards"
    good = [cards / "001.wav", cards / "003.wav"]  # 16 kHz: no resampling line for them
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + os.urandom(200))
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    untranscribed = _write_wav(tmp_path / "untranscribed.wav", 0.5)
    latin1 = _write_wav(tmp_path / "latin1.wav", 0.5)
    cd_rate = _write_wav(tmp_path / "cd_rate.wav", 0.5, rate=44100)
    low_rate = _write_wav(tmp_path / "low_rate.wav", 0.5, rate=4000)
    too_long = _write_wav(tmp_path / "too_long.wav", 3.0)
    rows = [
        {"audio": str(good[0]), "duration": 1.1, "speaker": "cards", "text": "ten of clubs"},
        {"audio": str(corrupt), "duration": 1.0, "speaker": "x", "text": "corrupt"},
        {"audio": str(empty), "duration": 0.0, "speaker": "x", "text": "empty"},
        {"audio": str(tmp_path / "missing.wav"), "duration": 1.0, "speaker": "x", "text": "missing"},
        {"audio": str(untranscribed), "duration": 0.5, "speaker": "x", "text": ""},
        {"audio": str(cd_rate), "duration": 0.5, "speaker": "x", "text": "resampled"},
        {"audio": str(too_long), "duration": 3.0, "speaker": "x", "text": "too long"},
        {"audio": str(low_rate), "duration": 0.5, "speaker": "x", "text": "four kilohertz"},
        {"audio": str(good[1]), "duration": 1.5, "speaker": "cards", "text": "seven of clubs"},
    ]
    manifest = tmp_path / "bad.jsonl"
    lines = [json.dumps(row).encode() for row in rows]
    lines.insert(5, b'{"audio": "%s", "duration": 0.5, "speaker": "x", "text": "caf\xe9"}' % str(latin1).encode())
    manifest.write_bytes(b"\n".join(lines) + b"\n")

    with caplog.at_level(logging.WARNING):
        utterances = read_manifest(manifest, "bad", tmp_path / "cache", 16000, max_duration_s=2.0)

    assert [Path(u.audio).name for u in utterances] == ["001.wav", "cd_rate.wav", "003.wav"]
    assert utterances[1].sample_rate == 44100  # kept: the loader resamples it
    messages = [record.getMessage() for record in caplog.records]
    expected = {
        "corrupt.wav": "corrupt audio",
        "empty.wav": "empty audio",
        "missing.wav": "audio file not found",
        "untranscribed.wav": "missing transcript",
        "bad.jsonl:6": "non-UTF-8 transcript",
        "too_long.wav": "longer than max_duration_s=2",
        "cd_rate.wav": "44100 Hz, resampled to 16000 Hz",
        "low_rate.wav": "unsupported sample rate 4000 Hz (below 8000 Hz): use a recording made at 8 kHz or more",
    }
    for name, reason in expected.items():
        assert sum(name in message and reason in message for message in messages) == 1, (name, messages)
    assert len(messages) == len(expected)
    assert all("\n" not in message for message in messages)
    assert load_waveform(utterances[1].audio, 16000).numel() == 8000


def test_missing_manifest_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(UserInputError, match="synthesize_corpus.py"):
        read_manifest(tmp_path / "nope.jsonl", "synth", tmp_path / "cache", 16000, 20.0)


def _librispeech_subset(root: Path, takes: range, with_problems: bool = False) -> Path:
    """A LibriSpeech-layout subset built from real FSDD recordings: speaker/chapter/<id>.flac + trans.txt."""
    for speaker_number, speaker in enumerate(("jackson", "theo"), start=100):
        chapter = root / str(speaker_number) / "7"
        chapter.mkdir(parents=True)
        lines = []
        for utterance_number, take in enumerate(takes):
            digit = (take + speaker_number) % 10
            utterance_id = f"{speaker_number}-7-{utterance_number:04d}"
            wave = load_waveform(FSDD / f"{digit}_{speaker}_{take}.wav", 16000).numpy()
            sf.write(str(chapter / f"{utterance_id}.flac"), wave, 16000, format="FLAC", subtype="PCM_16")
            lines.append(f"{utterance_id} {normalize_text(str(digit)).upper()}".encode())
        if with_problems and speaker_number == 100:
            lines[1] = lines[1][:-1] + b"\xff\xfe"  # not UTF-8
            lines.pop(2)  # its flac has no transcript line
        (chapter / f"{speaker_number}-7.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    return root


def test_librispeech_layout_tree_is_scanned_with_bad_lines_named(tmp_path):
    subset = _librispeech_subset(tmp_path / "LibriSpeech" / "dev-clean", range(0, 4), with_problems=True)
    utterances, rejected = scan_librispeech(subset)
    assert len(utterances) == 6 and {u.speaker for u in utterances} == {"100", "101"}
    assert all(
        u.text in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for u in utterances
    )
    assert sorted(reason for _, reason in rejected) == ["missing transcript", "non-UTF-8 transcript"]
    assert any("100-7.trans.txt:2 (100-7-0001)" in item for item, _ in rejected)
    assert any(item.endswith("100-7-0002.flac") for item, _ in rejected)


def test_prepare_librispeech_writes_a_manifest_per_subset(tmp_path):
    _librispeech_subset(tmp_path / "LibriSpeech" / "dev-clean", range(0, 3), with_problems=True)
    script = "data_scripts/prepare_librispeech.py"
    result = run_script(script, str(tmp_path / "LibriSpeech"), "--out", str(tmp_path / "out"), "--vocab-size", "0")
    assert result.returncode == 0, result.stderr
    assert "dev-clean: 4 utterances" in result.stdout and "2 skipped" in result.stdout
    assert "non-UTF-8 transcript" in result.stderr and "missing transcript" in result.stderr
    assert len((tmp_path / "out" / "dev-clean.jsonl").read_text().splitlines()) == 4


def _compose(data: str, overrides: list[str]):
    return compose_config("train", [f"data={data}", "seed=7", *overrides])


def _check_batch(batch, tokenizer: Tokenizer, bos_eos: bool = False, augmented: bool = False) -> None:
    feats, feat_lens, mask, tokens, token_lens = (
        batch[k] for k in ("feats", "feat_lens", "feat_mask", "tokens", "token_lens")
    )
    size = len(batch["texts"])
    assert feats.dtype == torch.float32 and feats.shape[0] == size and feats.shape[2] == 80
    assert feat_lens.dtype == torch.int64 and feat_lens.max() == feats.shape[1]
    assert torch.equal(mask, torch.arange(feats.shape[1]) < feat_lens[:, None])
    assert (feats[~mask] == 0).all()
    assert augmented or (feats[mask].abs().sum(-1) > 0).all()  # SpecAugment may zero whole real frames
    assert tokens.dtype == torch.int64 and token_lens.max() == tokens.shape[1]
    for row, length, text in zip(tokens, token_lens, batch["texts"]):
        assert (row[length:] == tokenizer.pad_id).all() and (row[:length] != tokenizer.pad_id).all()
        ids = tokenizer.encode(text)
        assert row[:length].tolist() == ([tokenizer.bos_id, *ids, tokenizer.eos_id] if bos_eos else ids)
        assert tokenizer.decode(row.tolist()) == text


def test_asr_synth_config_builds_train_val_and_test_loaders(asr_root):
    cfg = _compose(
        "asr_synth",
        [
            f"+paths.asr_root={asr_root}",
            f"paths.cache_dir={asr_root / 'cache'}",
            "data.num_workers=0",
            "data.bos_eos=false",
        ],
    )
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ASRDataModule)
    datamodule.setup("fit")
    assert datamodule.vocab_size == 40 and datamodule.feature_dim == 80
    assert datamodule.val_names == ["synth", "fsdd"] and datamodule.test_names == [
        "synth",
        "fsdd",
        "yesno",
        "pocketsphinx",
    ]
    train_batches = list(datamodule.train_dataloader())
    assert sum(len(batch["texts"]) for batch in train_batches) == 120  # synth + fsdd train, each utterance once
    for batch in train_batches:
        _check_batch(batch, datamodule.tokenizer, augmented=True)
    tests = datamodule.test_dataloader()
    assert list(tests) == datamodule.test_names
    for name, loader in tests.items():
        batches = list(loader)
        assert sum(len(b["texts"]) for b in batches) == len(datamodule.utterances["test"][name])
        for batch in batches:
            _check_batch(batch, datamodule.tokenizer)
    first = next(iter(tests["fsdd"]))["feats"]
    assert torch.equal(first, next(iter(tests["fsdd"]))["feats"])  # evaluation features are reproducible
    assert datamodule.datasets["train"]["synth"].vtlp == (0.9, 1.1)  # the config's default: training only
    assert all(dataset.vtlp is None for split in ("val", "test") for dataset in datamodule.datasets[split].values())


def test_evaluation_features_do_not_depend_on_the_training_seed(asr_root):
    """The dither of val/test features is seeded by data.eval_seed, not the run's seed: two runs of different
    seeds are tested on the same inputs, and only a different eval_seed changes them."""

    def first_test_batch(*overrides: str) -> torch.Tensor:
        cfg = compose_config(
            "train",
            ["data=asr_synth", f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}", *overrides],
        )
        datamodule = instantiate(cfg.data)
        datamodule.setup("test")
        return next(iter(datamodule.test_dataloader()["fsdd"]))["feats"]

    reference = first_test_batch("seed=1")
    assert torch.equal(reference, first_test_batch("seed=2"))
    assert not torch.equal(reference, first_test_batch("seed=1", "data.eval_seed=2"))


@pytest.mark.parametrize("choice", ["data=asr_voices", "experiment=asr_voices_small", "experiment=asr_voices_finetune"])
def test_the_real_voice_data_adds_piper_asterisk_and_waveform_effects_to_training_only(asr_root, choice):
    overrides = [f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}"]
    cfg = compose_config("train", ["task=asr", choice, *overrides])
    assert cfg.data.name == "asr_voices"
    if choice == "experiment=asr_voices_finetune":  # half a pass, the QAT fine-tune's settings otherwise
        assert (cfg.quant.name, cfg.trainer.limit_train_batches, cfg.task.max_epochs) == ("irnn", 0.5, 1)
    if choice != "data=asr_voices":
        return
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert list(datamodule.sources["train"]) == ["synth", "fsdd", "piper", "asterisk"]
    assert datamodule.val_names == ["synth", "fsdd", "asterisk"] and datamodule.speech["asterisk"] == "real"
    assert datamodule.test_names == ["synth", "fsdd", "yesno", "pocketsphinx", "asterisk"]
    effects = {name: dataset.wave_augment for name, dataset in datamodule.datasets["train"].items()}
    assert all(config is not None and config.telephone_prob == 0.15 for config in effects.values())
    assert all(d.wave_augment is None for split in ("val", "test") for d in datamodule.datasets[split].values())
    augmented = datamodule.datasets["train"]["piper"]
    torch.manual_seed(0)
    first = augmented[0]["feats"]
    torch.manual_seed(1)
    assert not torch.equal(first, augmented[0]["feats"])  # a new draw every time the item is read


@pytest.mark.parametrize("data", ["asr_synth", "asr_librispeech", "asr_voices"])
def test_every_asr_eval_set_is_labelled_real_or_synthetic_and_yesno_is_not_english(asr_root, data):
    cfg = _compose(data, [f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}"])
    datamodule = instantiate(cfg.data)
    assert set(datamodule.val_names + datamodule.test_names) <= set(datamodule.speech)
    assert {name: datamodule.speech[name] for name in ("fsdd", "pocketsphinx", "yesno")} == {
        "fsdd": "real",
        "pocketsphinx": "real",
        "yesno": "real_non_english",  # Kaldi yesno is Hebrew "ken" / "lo"
    }
    assert datamodule.speech.get("synth", "synthetic") == "synthetic"
    with pytest.raises(UserInputError, match="data.speech.fsdd='recorded' is unknown: choose one of synthetic, real"):
        build(_compose(data, [f"+paths.asr_root={asr_root}", "data.speech.fsdd=recorded"]).data)


def test_ddp_eval_loaders_give_every_rank_a_share_or_name_the_set_too_small(asr_root):
    cfg = _compose(
        "asr_synth", [f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}", "data.num_workers=0"]
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    sizes = {name: len(utterances) for name, utterances in datamodule.utterances["test"].items()}
    decoded = {name: [] for name in sizes}
    for rank in range(2):
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        for name, loader in datamodule.test_dataloader().items():
            assert len(loader) >= 1, name  # Lightning stops a DDP test when any rank has no batch
            decoded[name] += [audio for batch in loader for audio in batch["audio"]]
    assert {name: len(set(audio)) for name, audio in decoded.items()} == sizes
    assert {name: len(audio) for name, audio in decoded.items()} == sizes  # each utterance on one rank
    smallest = min(sizes, key=sizes.get)
    datamodule.trainer = SimpleNamespace(world_size=sizes[smallest] + 1, global_rank=0)
    message = f"test set '{smallest}' has {sizes[smallest]} utterance.*fewer than the {sizes[smallest] + 1} DDP ranks"
    with pytest.raises(UserInputError, match=message):
        datamodule.test_dataloader()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.vtlp=[1.1,0.9]"], r"data.vtlp=\[1.1, 0.9\] must be \[low, high\]"),
        (["data.vtlp=[0.9]"], "must be \\[low, high\\]"),
        (["data.features.kind=logmel"], "data.vtlp needs data.features.kind=fbank"),
    ],
)
def test_bad_vtlp_settings_are_named_in_one_line(asr_root, overrides, message):
    cfg = _compose("asr_synth", [f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}", *overrides])
    with pytest.raises(UserInputError, match=message):
        build(cfg.data)  # as train.py builds it: the error itself, not Hydra's wrapper


def test_bos_eos_and_global_cmvn(asr_root):
    cfg = _compose(
        "asr_synth",
        [
            f"+paths.asr_root={asr_root}",
            f"paths.cache_dir={asr_root / 'cache'}",
            "data.num_workers=0",
            "data.cmvn=global",
            "data.spec_augment=null",
        ],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    mean, std = datamodule.cmvn_stats
    assert mean.shape == std.shape == (80,) and (std > 0).all()
    batch = next(iter(datamodule.val_dataloader()["synth"]))
    _check_batch(batch, datamodule.tokenizer, bos_eos=True)


def test_asr_librispeech_config_reads_librispeech_layout_directories(asr_root, tmp_path):
    librispeech = tmp_path / "LibriSpeech"
    for subset, takes in (("train-clean-100", range(10, 16)), ("dev-clean", range(5, 7)), ("test-clean", range(0, 3))):
        _librispeech_subset(librispeech / subset, takes)
    cfg = _compose(
        "asr_librispeech",
        [
            f"+paths.asr_root={asr_root}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.data_root={tmp_path}",
            "data.num_workers=0",
        ],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert len(datamodule.utterances["train"]["train_clean_100"]) == 12
    assert datamodule.test_names == ["test_clean", "fsdd", "yesno", "pocketsphinx"]
    batch = next(iter(datamodule.train_dataloader()))
    _check_batch(batch, datamodule.tokenizer, bos_eos=True, augmented=True)
    assert next(iter(datamodule.test_dataloader()["test_clean"]))["speakers"][0] in {"100", "101"}


def test_collate_pads_features_and_tokens_and_returns_lengths_and_masks():
    items = [
        {"feats": torch.ones(5, 80), "tokens": torch.tensor([7, 8, 9]), "text": "a", "speaker": "s", "audio": "x"},
        {"feats": torch.full((2, 80), 2.0), "tokens": torch.tensor([4]), "text": "b", "speaker": "s", "audio": "y"},
    ]
    batch = collate(items, pad_id=0)
    assert batch["feats"].shape == (2, 5, 80) and batch["feat_lens"].tolist() == [5, 2]
    assert batch["feat_mask"].tolist() == [[True] * 5, [True, True, False, False, False]]
    assert (batch["feats"][1, 2:] == 0).all() and (batch["feats"][1, :2] == 2).all()
    assert batch["tokens"].tolist() == [[7, 8, 9], [4, 0, 0]] and batch["token_lens"].tolist() == [3, 1]


def test_bucket_sampler_covers_every_utterance_within_the_duration_budget():
    durations = [0.3 + (i * 37 % 100) / 10 for i in range(200)]
    sampler = BucketBatchSampler(durations, batch_duration_s=30.0, max_batch_size=16, shuffle=True, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(200))
        assert all(len(b) <= 16 and (len(b) == 1 or max(durations[i] for i in b) * len(b) <= 30.0) for b in batches)
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    ranks = [
        BucketBatchSampler(durations, 30.0, 16, True, seed=1, rank=r, world_size=3, drop_uneven=True) for r in range(3)
    ]
    shards = [list(rank) for rank in ranks]
    assert len({len(shard) for shard in shards}) == 1  # DDP ranks step in lockstep
    indices = [i for shard in shards for batch in shard for i in batch]
    assert len(indices) == len(set(indices))


def test_eval_sampler_gives_every_ddp_rank_a_share_of_a_one_batch_set():
    """An eval set that makes one batch (pocketsphinx: 11 utterances) still gives each rank a batch: Lightning
    stops a DDP test when any rank has none. Together the ranks decode every utterance exactly once."""
    durations = [1.0 + i / 10 for i in range(11)]
    assert len(list(BucketBatchSampler(durations, 400.0, 48, shuffle=False))) == 1
    for world_size in (2, 3):
        shards = [list(BucketBatchSampler(durations, 400.0, 48, False, 0, r, world_size)) for r in range(world_size)]
        assert all(len(shard) >= 1 for shard in shards)
        assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(11))
    small_batches = [list(BucketBatchSampler(durations, 3.0, 48, False, 0, r, 2)) for r in range(2)]
    assert all(max(durations[i] for i in b) * len(b) <= 3.0 or len(b) == 1 for s in small_batches for b in s)
    assert sorted(i for shard in small_batches for batch in shard for i in batch) == list(range(11))


class _MeanFeatureModel(L.LightningModule):
    """The smallest task: records which set each eval batch came from (Lightning's dataloader_idx)."""

    def __init__(self, test_names: list[str]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(80, 1)
        self.test_names = test_names
        self.seen: dict[str, int] = {}

    def training_step(self, batch, batch_idx):
        return self.layer(batch["feats"].sum(1) / batch["feat_lens"][:, None]).pow(2).mean()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        pass

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        name = self.test_names[dataloader_idx]
        self.seen[name] = self.seen.get(name, 0) + len(batch["texts"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trains_and_tests_every_named_set(asr_root):
    cfg = _compose("asr_synth", [f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = _MeanFeatureModel(datamodule.test_names)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert model.seen == {name: len(datamodule.utterances["test"][name]) for name in datamodule.test_names}


def test_asterisk_prompt_transcripts_keep_the_spoken_words_only():
    spec = importlib.util.spec_from_file_location("prepare_asterisk", ROOT / "data_scripts" / "prepare_asterisk.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lines = [
        "; Core Asterisk Sounds in English",
        "",
        "digits/7: seven",
        "beep: [this is a simple beep tone]",
        "silence/1: (1 second of silence)",
        "letters/at: at [@]",
        'spy-iax2: IAX (note: does not say "2")',
        "dictate/forhelp: press * to toggle pause, press # to enter a new dictation filename",
    ]
    spoken = {name: script.spoken_text(text) for name, text in script.read_transcripts(lines).items()}
    assert spoken == {
        "digits/7": "seven",
        "beep": "",
        "silence/1": "",
        "letters/at": "at",
        "spy-iax2": "iax",
        "dictate/forhelp": "press star to toggle pause press pound to enter a new dictation filename",
    }


def test_asterisk_voices_in_other_languages_leave_out_words_read_in_english():
    spec = importlib.util.spec_from_file_location("prepare_asterisk", ROOT / "data_scripts" / "prepare_asterisk.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.VOICES["en"].folder == "asterisk"  # conf/data/asr_voices.yaml's manifests keep their place
    assert len({voice.folder for voice in script.VOICES.values()}) == len(script.VOICES)
    assert len({voice.speaker for voice in script.VOICES.values()}) == len(script.VOICES)
    assert all(len(voice.packages) == 2 for voice in script.VOICES.values())
    assert script.PACKAGES.keys() == {package for voice in script.VOICES.values() for package in voice.packages}
    assert script.read_in_english("Composez le 1 suivi du dièse.")
    assert script.read_in_english("Premere * per annullare")
    assert not script.read_in_english("Vous êtes maintenant en ligne. [tono 2]")
    assert script.spoken_text("Échec à l'ouverture de session.") == "echec a l'ouverture de session"
    transcripts = script.read_transcripts(["", "attivato: Attivato.", "; commento"])
    assert transcripts == {"attivato": "Attivato."}


def test_asterisk_recordings_that_are_silent_corrupt_or_too_short_for_their_text_are_named(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_asterisk", ROOT / "data_scripts" / "prepare_asterisk.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    real = sorted(FSDD.glob("*.wav"))[0]  # a real one-word recording, about 0.4 s
    silent, corrupt = tmp_path / "silent.wav", tmp_path / "corrupt.wav"
    sf.write(silent, np.zeros(8000, dtype=np.int16), 8000)
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    assert script.check_recording(real, "seven") is None
    assert script.check_recording(silent, "seven") == "silent"
    assert script.check_recording(corrupt, "seven").startswith("unreadable (corrupt audio")
    long_text = " ".join(["word"] * 40)  # 40 words cannot fit in under half a second
    assert script.check_recording(real, long_text) == "length does not fit the transcript"
    assert {script.split_of(f"digits/{n}", 0.15) for n in range(100)} == {"train", "dev"}
    assert script.split_of("digits/7", 0.15) == script.split_of("digits/7", 0.15)
