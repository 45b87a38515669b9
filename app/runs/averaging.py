"""Checkpoint averaging: the element-wise mean of the weights of a run's N best epochs (ESPnet's
``average_checkpoints``; Vaswani et al. 2017 average the last ones).

``task.average_best=N`` keeps the N best epochs' weights by the validation metric in
``checkpoints/top/`` while training (a second ModelCheckpoint, resumed with the run), and after the
last epoch writes ``checkpoints/averaged.ckpt``: ``best.ckpt`` with its weights replaced by their mean.
That is the checkpoint the run is then tested with and exports to the integer engine.

``python -m app.average --out OUT A.ckpt B.ckpt ...`` averages whole checkpoints of different runs the same way
(the rounds of a staged recipe, each continued from the one before): the first one is the base, the others must
hold the same model, quant format and vocabulary.
"""

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from app.errors import UserInputError
from app.runs.directory import AtomicCheckpointIO, read_checkpoint, with_quant_defaults

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


# The quant keys that fix a checkpoint's format; the others (init_from, observer settings) only steer training.
QUANT_FORMAT_KEYS = ("mode", "weight_bits", "act_bits", "pwl_segments", "layer_norm", "cell_int_bits", "decomposition")


def _identity(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What two checkpoints must share to be averaged: task, model, quant format, vocabulary."""
    hparams = checkpoint["hyper_parameters"]
    quant = with_quant_defaults(hparams.get("quant_cfg") or {})  # a key added later counts as its default
    return {
        "task": checkpoint["task"],
        "model": hparams.get("model_cfg"),
        **{f"quant.{key}": quant.get(key) for key in QUANT_FORMAT_KEYS},
        "vocab_sha256": hparams.get("vocab_sha256"),
    }


def average_checkpoints(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """The mean of the weights of whole checkpoints (of different runs), on the first one's other state, written
    atomically to ``out``. Refuses checkpoints whose task, model, quant format or vocabulary differ, in one line."""
    if len(paths) < 2:
        raise UserInputError(f"{len(paths)} checkpoint given: pass two or more to average")
    resolved = [path.resolve() for path in paths]
    if len(set(resolved)) < len(resolved):
        raise UserInputError("a checkpoint is given twice: pass each once (give one more weight by other means)")
    if out.resolve() in resolved:
        raise UserInputError(f"--out {out} is one of the inputs: write the average to a new file")
    checkpoints = [read_checkpoint(path, "checkpoint") for path in paths]
    base = _identity(checkpoints[0])
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        other = _identity(checkpoint)
        differing = [key for key in base if base[key] != other[key]]
        if differing:
            key = differing[0]
            raise UserInputError(
                f"{path} has {key}={other[key]!r}, {paths[0]} has {key}={base[key]!r}: "
                "average checkpoints of one model, quant format and vocabulary only"
            )
    try:
        weights = average_state_dicts([checkpoint["state_dict"] for checkpoint in checkpoints])
    except ValueError as err:
        raise UserInputError(f"{err}: average checkpoints of one model only") from err
    averaged = checkpoints[0]
    averaged["state_dict"] = weights
    averaged["averaged_epochs"] = None  # the members are of different runs: their epoch numbers mean nothing here
    averaged["averaged_from"] = [str(path) for path in paths]
    out.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(averaged, out)
    return averaged


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.average",
        description="Average the weights of whole checkpoints of one model (e.g. the averaged.ckpt of each round "
        "of a staged recipe) into a new checkpoint that evaluate.py, train.py quant.init_from and the export take.",
    )
    parser.add_argument(
        "checkpoints", nargs="+", type=Path, help="checkpoints written by train.py; the first is the base"
    )
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint to write (a new file)")
    args = parser.parse_args(argv)
    try:
        average_checkpoints(args.checkpoints, args.out)
    except UserInputError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints' weights")
