"""LightningDataModule for speech recognition: manifests -> features + tokens, in length-bucketed batches.

Data config: `conf/data/asr_synth.yaml` (synthetic sentences + FSDD; build it with data_scripts/) or
`conf/data/asr_librispeech.yaml`. Each split is a mapping set name -> manifest (app/data/manifest.py) or
LibriSpeech-layout directory; train sets are concatenated, val and test sets stay separate, and their
loaders come as a dict name -> DataLoader in config order (`val_names`, `test_names`), so the task can
report WER per set (Lightning passes the position as `dataloader_idx`). `speech` labels each set's audio
(synthetic / real / real_non_english, app.data.manifest.SPEECH_KINDS): the task pools the real English sets
into one "real speech" WER and the synthetic ones into another.

A batch is a dict:

    feats       (B, T, F) float32   normalized features, zero after each utterance's last frame
    feat_lens   (B,) int64          frames per utterance
    feat_mask   (B, T) bool         True on real frames: feat_mask[b, t] == (t < feat_lens[b])
    tokens      (B, U) int64        token ids padded with pad_id (0); <bos> ... <eos> around them if bos_eos
    token_lens  (B,) int64          tokens per utterance (bos/eos included when added)
    texts       list[str]           normalized transcripts (the WER references)
    speakers    list[str]
    audio       list[str]           audio file paths

Under DDP the batch sampler shards the data itself, so the Trainer must not add a DistributedSampler
(`use_distributed_sampler: false` in `conf/trainer/`). Training ranks take every world_size-th batch and get
equal batch counts (DDP steps in lockstep); eval ranks take every world_size-th utterance by duration and
batch their own share, so a set of at least world_size utterances gives every rank a batch (Lightning
refuses a rank with none) while batch counts may differ: sum word errors per rank and all-reduce them at
epoch end (no per-step sync_dist in eval).
"""

import functools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from app.data.audio import (
    FeatureConfig,
    SpecAugmentConfig,
    apply_cmvn,
    compute_features,
    load_waveform,
    spec_augment,
    utterance_cmvn,
    vtlp_warp,
)
from app.data.augment import WaveAugmentConfig, augment_waveform
from app.data.manifest import SPEECH_KINDS, Utterance, read_manifest
from app.data.text import Tokenizer
from app.errors import UserInputError

CMVN_MODES = ("utterance", "global", "none")


class UtteranceDataset(Dataset):
    """Item i: features (T, F) of utterance i (VTLP and SpecAugment when augmenting, CMVN) and its token ids."""

    def __init__(
        self,
        utterances: Sequence[Utterance],
        token_ids: Sequence[list[int]],
        features: FeatureConfig,
        cmvn: str,
        cmvn_stats: tuple[Tensor, Tensor] | None,
        spec_augment: SpecAugmentConfig | None,
        seed: int,
        vtlp: tuple[float, float] | None = None,
        wave_augment: WaveAugmentConfig | None = None,
    ) -> None:
        """spec_augment: None for evaluation; then the dither is seeded per item, so features are reproducible.
        vtlp: (low, high) range of a random vocal tract length warp per item (training only), None: none.
        wave_augment: speed / coloration / reverb / noise / telephone effects on the waveform (training only)."""
        self.utterances, self.token_ids = utterances, token_ids
        self.features, self.cmvn, self.cmvn_stats = features, cmvn, cmvn_stats
        self.spec_augment, self.seed, self.vtlp = spec_augment, seed, vtlp
        self.wave_augment = wave_augment

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utterance = self.utterances[index]
        wave = load_waveform(utterance.audio, self.features.sample_rate)
        if self.wave_augment is not None:
            wave = augment_waveform(wave, self.features.sample_rate, self.wave_augment)
        generator = None if self.spec_augment else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        warp = vtlp_warp(*self.vtlp) if self.vtlp else 1.0
        feats = compute_features(wave, self.features, generator, warp)
        if self.cmvn == "utterance":
            feats = utterance_cmvn(feats)
        elif self.cmvn == "global":
            feats = apply_cmvn(feats, *self.cmvn_stats)
        if self.spec_augment:
            feats = spec_augment(feats, self.spec_augment)
        return {
            "feats": feats,
            "tokens": torch.tensor(self.token_ids[index], dtype=torch.int64),
            "text": utterance.text,
            "speaker": utterance.speaker,
            "audio": utterance.audio,
        }


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad a list of dataset items into a batch (module docstring)."""
    feat_lens = torch.tensor([item["feats"].size(0) for item in items], dtype=torch.int64)
    token_lens = torch.tensor([item["tokens"].numel() for item in items], dtype=torch.int64)
    feats = torch.nn.utils.rnn.pad_sequence([item["feats"] for item in items], batch_first=True)
    tokens = torch.nn.utils.rnn.pad_sequence([item["tokens"] for item in items], batch_first=True, padding_value=pad_id)
    return {
        "feats": feats,
        "feat_lens": feat_lens,
        "feat_mask": torch.arange(feats.size(1)) < feat_lens.unsqueeze(1),
        "tokens": tokens,
        "token_lens": token_lens,
        "texts": [item["text"] for item in items],
        "speakers": [item["speaker"] for item in items],
        "audio": [item["audio"] for item in items],
    }


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded duration (size x longest) is at most batch_duration_s.

    Sorting by duration keeps padding small; with shuffle, durations get +-10 % noise before sorting (so
    batches differ between epochs) and the batch order is shuffled, both seeded by (seed, epoch).
    Training (drop_uneven): rank r of world_size takes batches r, r + world_size, ... of the whole set, and
    every rank gets the same number of batches, so DDP steps stay in lockstep. Evaluation: rank r takes
    utterances r, r + world_size, ... in duration order and batches them alone, so every rank of a set
    with at least world_size utterances has a batch, however few batches the set makes.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_duration_s: float,
        max_batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = False,
    ) -> None:
        self.durations, self.batch_duration_s, self.max_batch_size = durations, batch_duration_s, max_batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size, self.drop_uneven = rank, world_size, drop_uneven

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch: a new bucketing and batch order."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All ranks' batches in this epoch's order (with world_size 1: this rank's)."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches = self._bucket(self._order(rng))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _order(self, rng: random.Random) -> list[int]:
        """Utterance indices by duration; with shuffle, by duration with +-10 % noise drawn from ``rng``."""
        noise = [rng.uniform(0.9, 1.1) if self.shuffle else 1.0 for _ in self.durations]
        return sorted(range(len(self.durations)), key=lambda i: self.durations[i] * noise[i])

    def _bucket(self, order: Sequence[int]) -> list[list[int]]:
        """Consecutive runs of ``order`` (utterances sorted by duration) cut at the size and duration limits."""
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for index in order:
            longest_if_added = max(longest, self.durations[index])
            if current and (
                len(current) == self.max_batch_size or longest_if_added * (len(current) + 1) > self.batch_duration_s
            ):
                batches.append(current)
                current, longest_if_added = [], self.durations[index]
            current.append(index)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    def _mine(self) -> list[list[int]]:
        if self.world_size == 1:
            return self.batches()
        if self.drop_uneven:
            batches = self.batches()
            batches = batches[: len(batches) // self.world_size * self.world_size]
            return batches[self.rank :: self.world_size]
        return self._bucket(self._order(random.Random(0))[self.rank :: self.world_size])  # eval: no shuffle

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


class ASRDataModule(L.LightningDataModule):
    """Speech recognition data: train / val / test manifests, a sentencepiece tokenizer, features on the fly."""

    def __init__(
        self,
        name: str,
        root: str,
        train: Mapping[str, str],
        val: Mapping[str, str],
        test: Mapping[str, str],
        tokenizer: str,
        cache_dir: str,
        speech: Mapping[str, str] | None = None,
        features: Mapping[str, Any] | None = None,
        cmvn: str = "utterance",
        spec_augment: Mapping[str, Any] | None = None,
        vtlp: Sequence[float] | None = None,
        wave_augment: Mapping[str, Any] | None = None,
        max_duration_s: float = 20.0,
        batch_duration_s: float = 200.0,
        max_batch_size: int = 64,
        eval_batch_duration_s: float = 400.0,
        bos_eos: bool = False,
        num_workers: int = 0,
        cmvn_utterances: int = 500,
        seed: int = 0,
        eval_seed: int = 1234,
    ) -> None:
        """
        root: relative paths in train / val / test / tokenizer are relative to it (paths.asr_root).
        train / val / test: set name -> manifest (.jsonl/.csv) or LibriSpeech-layout directory.
        tokenizer: sentencepiece .model (data_scripts/prepare_asr.py trains it).
        cache_dir: scanned LibriSpeech manifests and the datasets Arrow cache.
        speech: set name -> what its audio is (SPEECH_KINDS: synthetic, real, real_non_english), for the
            real-speech and synthetic WERs of the task's summary; an unlabelled set is in neither.
        features: FeatureConfig fields (app/data/audio.py). cmvn: utterance | global | none (global: mean
            and std of `cmvn_utterances` train utterances, see `cmvn_stats`).
        spec_augment: SpecAugmentConfig fields, applied to training batches only; None turns it off.
        vtlp: [low, high] warp factors of vocal tract length perturbation (training only; fbank features),
            e.g. [0.9, 1.1]; None turns it off.
        wave_augment: WaveAugmentConfig fields (app/data/augment.py): on-the-fly speed, microphone coloration,
            reverberation, noise and telephone effects on training waveforms; None turns them off.
        max_duration_s: longer utterances are skipped with a warning.
        batch_duration_s / eval_batch_duration_s: padded seconds of audio per train / eval batch, at most
            max_batch_size utterances (an utterance longer than the budget is a batch of its own).
        bos_eos: wrap every token sequence in <bos> ... <eos> (attention decoders); off for CTC / RNN-T.
        num_workers: DataLoader workers of the train loader (feature extraction); eval loaders use none.
        seed: shuffling, bucketing and the CMVN sample of training. eval_seed: the per-item dither of the val
            and test features, apart from `seed` so that runs of every seed are evaluated on the same inputs.
        """
        super().__init__()
        if cmvn not in CMVN_MODES:
            raise UserInputError(f"data.cmvn={cmvn!r} is unknown: choose one of {', '.join(CMVN_MODES)}")
        if not train:
            raise UserInputError("data.train is empty: give at least one set name -> manifest")
        self.name = name
        self.root = Path(root)
        self.sources = {"train": dict(train), "val": dict(val), "test": dict(test)}
        self.speech = _speech_kinds(speech or {})
        self.tokenizer_path = self._resolve(tokenizer)
        self.cache_dir = Path(cache_dir)
        self.features = _config(FeatureConfig, features or {}, "data.features")
        self.cmvn = cmvn
        self.spec_augment = (
            None if spec_augment is None else _config(SpecAugmentConfig, spec_augment, "data.spec_augment")
        )
        self.vtlp = _vtlp_range(vtlp, self.features.kind)
        self.wave_augment = None if wave_augment is None else WaveAugmentConfig.from_mapping(wave_augment)
        self.max_duration_s = max_duration_s
        self.batch_duration_s, self.eval_batch_duration_s = batch_duration_s, eval_batch_duration_s
        self.max_batch_size = max_batch_size
        self.bos_eos = bos_eos
        self.num_workers = num_workers
        self.cmvn_utterances = cmvn_utterances
        self.seed, self.eval_seed = seed, eval_seed
        self.tokenizer: Tokenizer | None = None
        self.utterances: dict[str, dict[str, list[Utterance]]] = {}
        self.datasets: dict[str, dict[str, UtteranceDataset]] = {}
        self.cmvn_stats: tuple[Tensor, Tensor] | None = None

    @property
    def val_names(self) -> list[str]:
        return list(self.sources["val"])

    @property
    def test_names(self) -> list[str]:
        return list(self.sources["test"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def feature_dim(self) -> int:
        return self.features.num_mel_bins

    @property
    def vocab_sha256(self) -> str:
        """Identifies the tokenizer (same role as the LM datamodule's vocab_sha256)."""
        return self.tokenizer.sha256

    def prepare_data(self) -> None:
        """Load the tokenizer and read every manifest (each bad row is named and skipped); cheap the second time.

        Call it before building the model: it sets `vocab_size`.
        """
        if self.utterances:
            return
        self.tokenizer = Tokenizer(self.tokenizer_path)
        for split, sets in self.sources.items():
            self.utterances[split] = {
                set_name: read_manifest(
                    self._resolve(source), set_name, self.cache_dir, self.features.sample_rate, self.max_duration_s
                )
                for set_name, source in sets.items()
            }

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        if self.datasets:
            return
        if self.cmvn == "global":
            self.cmvn_stats = self._global_cmvn_stats()
        for split, sets in self.utterances.items():
            train = split == "train"
            augment, vtlp = (self.spec_augment, self.vtlp) if train else (None, None)
            self.datasets[split] = {
                set_name: UtteranceDataset(
                    utterances,
                    [self._token_ids(utterance.text) for utterance in utterances],
                    self.features,
                    self.cmvn,
                    self.cmvn_stats,
                    augment,
                    self.seed if train else self.eval_seed,
                    vtlp,
                    self.wave_augment if train else None,
                )
                for set_name, utterances in sets.items()
            }

    def train_dataloader(self) -> DataLoader:
        dataset = torch.utils.data.ConcatDataset(list(self.datasets["train"].values()))
        durations = [u.duration for utterances in self.utterances["train"].values() for u in utterances]
        return self._loader(dataset, durations, self.batch_duration_s, shuffle=True)

    def val_dataloader(self) -> dict[str, DataLoader]:
        return self.eval_loaders("val")

    def test_dataloader(self) -> dict[str, DataLoader]:
        return self.eval_loaders("test")

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world_size) of this process: (0, 1) without a trainer or DDP."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def eval_loaders(self, split: str, shard: tuple[int, int] | None = None) -> dict[str, DataLoader]:
        """One loader per set of ``split`` ("val" / "test"), in config order: this rank's share of each set, or
        rank r's share for ``shard=(r, world_size)`` (the integer engine, on one process, decodes every
        rank's share in turn, so it sees exactly the utterances the QAT model's DDP evaluation saw)."""
        shard = shard or self.shard
        world_size = shard[1]
        for set_name, utterances in self.utterances[split].items():
            if len(utterances) < world_size:
                raise UserInputError(
                    f"{split} set {set_name!r} has {len(utterances)} utterance(s), fewer than the {world_size} DDP "
                    "ranks that each decode a share of it: run it with fewer devices or leave it out of data."
                    f"{split}"
                )
        return {
            set_name: self._loader(
                dataset,
                [u.duration for u in self.utterances[split][set_name]],
                self.eval_batch_duration_s,
                shuffle=False,
                shard=shard,
            )
            for set_name, dataset in self.datasets[split].items()
        }

    def _loader(
        self,
        dataset: Dataset,
        durations: list[float],
        batch_duration_s: float,
        shuffle: bool,
        shard: tuple[int, int] | None = None,
    ) -> DataLoader:
        rank, world_size = shard or self.shard
        sampler = BucketBatchSampler(
            durations, batch_duration_s, self.max_batch_size, shuffle, self.seed, rank, world_size, drop_uneven=shuffle
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=functools.partial(collate, pad_id=self.tokenizer.pad_id),
            # Eval sets are small: their features are computed in the main process, so the few CPU cores
            # are not held by idle persistent workers of up to six eval loaders.
            num_workers=self.num_workers if shuffle else 0,
            persistent_workers=shuffle and self.num_workers > 0,
        )

    def _token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        return [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id] if self.bos_eos else ids

    def _global_cmvn_stats(self) -> tuple[Tensor, Tensor]:
        """Per-feature mean and std (F,) over the frames of up to cmvn_utterances train utterances (seeded sample)."""
        pool = [utterance for utterances in self.utterances["train"].values() for utterance in utterances]
        sample = random.Random(self.seed).sample(pool, min(self.cmvn_utterances, len(pool)))
        raw = UtteranceDataset(sample, [[] for _ in sample], self.features, "none", None, None, self.seed)
        total = torch.zeros(self.feature_dim, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        frames = 0
        for index in range(len(raw)):
            feats = raw[index]["feats"].double()
            total += feats.sum(0)
            total_sq += feats.pow(2).sum(0)
            frames += feats.size(0)
        mean = total / frames
        std = (total_sq / frames - mean.pow(2)).clamp_min(1e-10).sqrt()
        return mean.float(), std.float()

    def _resolve(self, path: str) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path


def _config(cls: type, values: Mapping[str, Any], key: str) -> Any:
    names = {field.name for field in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise UserInputError(f"{key} has unknown keys {sorted(unknown)}: the keys are {sorted(names)}")
    try:
        return cls(**values)
    except ValueError as err:
        raise UserInputError(str(err)) from err


def _speech_kinds(speech: Mapping[str, str]) -> dict[str, str]:
    """data.speech checked: every label one of SPEECH_KINDS (labels of sets the config does not use are kept)."""
    for set_name, kind in speech.items():
        if kind not in SPEECH_KINDS:
            raise UserInputError(f"data.speech.{set_name}={kind!r} is unknown: choose one of {', '.join(SPEECH_KINDS)}")
    return dict(speech)


def _vtlp_range(vtlp: Sequence[float] | None, feature_kind: str) -> tuple[float, float] | None:
    """data.vtlp checked: None, or (low, high) with 0 < low <= high, on fbank features."""
    if vtlp is None:
        return None
    values = tuple(float(v) for v in vtlp)
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise UserInputError(
            f"data.vtlp={list(vtlp)} must be [low, high] warp factors, 0 < low <= high, e.g. [0.9, 1.1]"
        )
    if feature_kind != "fbank":
        raise UserInputError(f"data.vtlp needs data.features.kind=fbank (not {feature_kind!r}), or data.vtlp=null")
    return values
