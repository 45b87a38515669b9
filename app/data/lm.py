"""LightningDataModule for word-level language modelling with truncated BPTT (Zaremba et al. 2014).

Each split is one token stream (<eos> after every line). It is cut into `batch_size` contiguous rows
per rank ("batchify"), and a batch is the next `bptt` columns of those rows, so the LSTM state at the
end of one batch is the right starting state for the next (the task carries it across batches).
"""

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The datasets library reads these when it is imported: it must never try the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from app.data.lm_corpus import EOS, SPLITS, UNK, prepare_lm_corpus, read_meta, read_vocab  # noqa: E402

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: padded targets add no loss and no token


def batchify(ids: Tensor, num_rows: int, eos_id: int, pad_remainder: bool) -> tuple[Tensor, Tensor]:
    """Cut a token stream into `num_rows` contiguous rows of (inputs, targets), each (num_rows, L) int64.

    ids: (N,) int64. A leading <eos> gives the first token a context (the previous line ended there), so
    the targets are exactly the N tokens of the split. The target at (r, t) is the token after input (r, t).
    pad_remainder: keep all N targets, padding the last row with IGNORE_INDEX (evaluation: every token
    counts); otherwise drop the last N mod num_rows targets (training).
    """
    stream = torch.cat([ids.new_tensor([eos_id]), ids])
    inputs, targets = stream[:-1], stream[1:]
    if pad_remainder:
        length = math.ceil(targets.numel() / num_rows)
        padding = length * num_rows - targets.numel()
        inputs = torch.cat([inputs, inputs.new_full((padding,), eos_id)])
        targets = torch.cat([targets, targets.new_full((padding,), IGNORE_INDEX)])
    else:
        length = targets.numel() // num_rows
        inputs, targets = inputs[: length * num_rows], targets[: length * num_rows]
    return inputs.view(num_rows, length), targets.view(num_rows, length)


class BpttWindows(Dataset):
    """Consecutive `bptt`-column windows of batchified rows; item i is (inputs, targets), each (B, <=bptt)."""

    def __init__(self, inputs: Tensor, targets: Tensor, bptt: int) -> None:
        self.inputs, self.targets, self.bptt = inputs, targets, bptt

    def __len__(self) -> int:
        return math.ceil(self.inputs.size(1) / self.bptt)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        columns = slice(index * self.bptt, (index + 1) * self.bptt)
        return self.inputs[:, columns], self.targets[:, columns]


class LMDataModule(L.LightningDataModule):
    """PTB / WikiText-2 for the LM task. Data config: `conf/data/{ptb,wikitext2}.yaml`.

    Under DDP each rank takes its own `batch_size` rows of the stream (contiguous text per rank), so the
    Trainer must not add a DistributedSampler (`use_distributed_sampler: false` in `conf/trainer/`).
    """

    def __init__(
        self,
        name: str,
        source: str,
        files: Mapping[str, str],
        cache_dir: str,
        batch_size: int,
        eval_batch_size: int,
        bptt: int,
        sha256: Mapping[str, str] | None = None,
        archive_sha256: str | None = None,
        expected_tokens: Mapping[str, int] | None = None,
        expected_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.source = source
        self.files = files
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.bptt = bptt
        self.sha256 = sha256
        self.archive_sha256 = archive_sha256
        self.expected_tokens = expected_tokens
        self.expected_vocab_size = expected_vocab_size
        self.corpus_dir: Path | None = None
        self.vocab: list[str] = []
        self.vocab_sha256 = ""  # identifies the vocabulary: a checkpoint only fits data with the same one
        self.token_ids: dict[str, Tensor] = {}
        self.windows: dict[str, BpttWindows] = {}  # this rank's rows (DDP)
        self.all_rank_windows: dict[str, BpttWindows] = {}  # every rank's rows: the integer engine's evaluation

    def prepare_data(self) -> None:
        """Prepare the corpus (download / verify / vocabulary) and load every split's token ids.

        Idempotent and cheap the second time: the corpus and the tokenized Arrow tables are cached under
        `cache_dir`. Call it before building the model: it sets `vocab_size`.
        """
        if self.token_ids:
            return
        self.corpus_dir = prepare_lm_corpus(
            self.name,
            self.source,
            self.files,
            self.cache_dir,
            sha256=self.sha256,
            archive_sha256=self.archive_sha256,
            expected_tokens=self.expected_tokens,
            expected_vocab_size=self.expected_vocab_size,
        )
        self.vocab = read_vocab(self.corpus_dir)
        meta = read_meta(self.corpus_dir)
        self.vocab_sha256 = meta["vocab_sha256"]
        self.token_ids = {split: self._tokenize(split, meta["fingerprints"][split]) for split in SPLITS}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def num_tokens(self, split: str) -> int:
        return self.token_ids[split].numel()

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        eos_id = self.vocab.index(EOS)
        for split in SPLITS:
            rows = self.batch_size if split == "train" else self.eval_batch_size
            inputs, targets = batchify(self.token_ids[split], rows * world_size, eos_id, pad_remainder=split != "train")
            mine = slice(rank * rows, (rank + 1) * rows)
            self.windows[split] = BpttWindows(inputs[mine], targets[mine], self.bptt)
            self.all_rank_windows[split] = BpttWindows(inputs, targets, self.bptt)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def eval_loader(self, split: str) -> DataLoader:
        """The windows of ``split`` with every DDP rank's rows in one batch: rows are independent, so one
        process evaluating them sees exactly what the ranks' evaluation saw together (no DDP: the loader)."""
        return DataLoader(self.all_rank_windows[split], batch_size=None, shuffle=False)

    def _loader(self, split: str) -> DataLoader:
        # Windows are already batches and must stay in order: the hidden state flows from one to the next.
        return DataLoader(self.windows[split], batch_size=None, shuffle=False)

    def _tokenize(self, split: str, fingerprint: str) -> Tensor:
        """Token ids of one split, (N,) int64, through the datasets `text` builder (cached as Arrow)."""
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        hf_cache = str(self.cache_dir / "hf")
        split_file = str(self.corpus_dir / f"{split}.txt")
        lines = datasets.load_dataset("text", data_files={split: split_file}, split=split, cache_dir=hf_cache)
        token_to_id = {token: index for index, token in enumerate(self.vocab)}
        encoded = lines.map(
            _encode_lines,
            batched=True,
            remove_columns=["text"],
            fn_kwargs={"token_to_id": token_to_id, "eos_id": token_to_id[EOS], "unk_id": token_to_id.get(UNK)},
            new_fingerprint=f"{self.name}-{split}-{fingerprint}",
        )
        flat = encoded.data.column("ids").combine_chunks().flatten()
        return torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype("int64"))


def _encode_lines(
    batch: dict[str, list[str]], token_to_id: dict[str, int], eos_id: int, unk_id: int | None
) -> dict[str, Any]:
    """Token ids of a batch of lines, each line followed by <eos>; unseen words become <unk>."""
    return {"ids": [[token_to_id.get(token, unk_id) for token in line.split()] + [eos_id] for line in batch["text"]]}
