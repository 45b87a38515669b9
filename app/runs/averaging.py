"""Checkpoint averaging: the element-wise mean of the weights of a run's N best epochs (ESPnet's
``average_checkpoints``; Vaswani et al. 2017 average the last ones).

``task.average_best=N`` keeps the N best epochs' weights by the validation metric in
``checkpoints/top/`` while training (a second ModelCheckpoint, resumed with the run), and after the
last epoch writes ``checkpoints/averaged.ckpt``: ``best.ckpt`` with its weights replaced by their mean.
That is the checkpoint the run is then tested with and exports to the integer engine.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from app.runs.directory import AtomicCheckpointIO, read_checkpoint

AVERAGED_CHECKPOINT = "averaged.ckpt"  # in <run>/checkpoints/


def tested_checkpoint(run: Path) -> Path:
    """The checkpoint train.py tested: checkpoints/averaged.ckpt for a task.average_best run, else best.ckpt."""
    averaged = run / "checkpoints" / AVERAGED_CHECKPOINT
    return averaged if averaged.is_file() else run / "checkpoints" / "best.ckpt"


class BestEpochs(ModelCheckpoint):
    """The weights of the N best epochs by the monitored metric, in ``<run>/checkpoints/top/epochNNN.ckpt``.

    Its own class so that Lightning keeps its state (which files, their scores) apart from the
    ModelCheckpoint that writes best.ckpt / last.ckpt: both are restored when a run resumes.
    """

    def __init__(self, checkpoint_dir: Path, monitor: str, count: int) -> None:
        super().__init__(
            dirpath=checkpoint_dir / "top",
            filename="epoch{epoch:03d}",
            monitor=monitor,
            mode="min",
            save_top_k=count,
            save_weights_only=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's restore, then the kept set cut to this run's count: a run resumed with a smaller
        task.average_best keeps its best `count` files (Lightning alone kept them all and had no k-th best to
        compare a new epoch with, a KeyError at the next epoch's end)."""
        super().load_state_dict(state_dict)
        if self.save_top_k > 0 and len(self.best_k_models) >= self.save_top_k:
            kept = sorted(self.best_k_models.items(), key=lambda item: float(item[1]))[: self.save_top_k]
            self.best_k_models = dict(kept)
            self.kth_best_model_path, self.kth_value = kept[-1]

    def best_first(self) -> list[Path]:
        """The kept files, best score first."""
        return [Path(path) for path, _ in sorted(self.best_k_models.items(), key=lambda item: float(item[1]))]


def average_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Mean of each floating-point tensor (accumulated in float64); any other tensor (integer formats,
    counters, flags) is taken from the first state dict, the best one."""
    if not state_dicts:
        raise ValueError("nothing to average: no state dicts")
    first = state_dicts[0]
    for other in state_dicts[1:]:
        if other.keys() != first.keys():
            raise ValueError(f"checkpoints hold different tensors: {sorted(other.keys() ^ first.keys())[:3]}")
    averaged = {}
    for key, value in first.items():
        if torch.is_floating_point(value):
            total = sum(state[key].to(torch.float64) for state in state_dicts)
            averaged[key] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def write_averaged(best: Path, members: Sequence[Path], out: Path) -> list[int]:
    """``best`` (a full checkpoint) with the mean of ``members``' weights, written atomically to ``out``.

    Returns the members' epochs (numbered from 0, best first); the checkpoint records them as
    ``averaged_epochs``.
    """
    checkpoint: dict[str, Any] = read_checkpoint(best, "best checkpoint")
    loaded = [torch.load(path, map_location="cpu", weights_only=False) for path in members]
    checkpoint["state_dict"] = average_state_dicts([member["state_dict"] for member in loaded])
    checkpoint["averaged_epochs"] = [int(member["epoch"]) for member in loaded]
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return checkpoint["averaged_epochs"]
