"""Train a model: `python train.py task=lm quant=float model=small data=ptb` (docs/training.md).

Writes a run directory (app/runs/directory.py): config.yaml, checkpoints/{best,last}.ckpt, epochs.jsonl,
tensorboard/, metrics.json. `ckpt_path=<run>/checkpoints/last.ckpt` resumes that run in place.
"""

import dataclasses
import sys
from pathlib import Path
from typing import Any

import hydra
from lightning import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.config import build, register_resolvers
from app.errors import UserInputError
from app.export.asr import export_integer_asr, integer_wer
from app.export.lm import export_integer_lm, integer_split_metrics
from app.runs.averaging import AVERAGED_CHECKPOINT, BestEpochs, write_averaged
from app.runs.directory import (
    AtomicCheckpointIO,
    ElapsedTime,
    check_resumable,
    command_line,
    evaluate_splits,
    machine_text,
    read_checkpoint,
    run_dir,
    write_run_config,
)
from app.runs.metrics import RunMetrics, write_metrics
from app.runs.sweeps import finished_run
from app.tasks.asr import DECODED_INTEGER_DIR

register_resolvers()

# The validation metric that picks the best checkpoint (lower is better), per task.
MONITOR = {"lm": "val/ppl", "asr": "val/wer"}


def task_inputs(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """What the task's module needs from the data besides the configs."""
    inputs = {"vocab_size": datamodule.vocab_size, "vocab_sha256": datamodule.vocab_sha256}
    if cfg.task.name == "asr":
        if not getattr(datamodule, "bos_eos", False):
            raise UserInputError(
                f"task=asr needs <bos>/<eos> around transcripts: set data.bos_eos=true (data={cfg.data.name})"
            )
        inputs["feature_dim"] = datamodule.feature_dim
    elif not hasattr(datamodule, "vocab"):
        raise UserInputError(f"task={cfg.task.name} cannot train on data={cfg.data.name}: pick a dataset of that task")
    return inputs


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint on valid and test; returns (and writes) metrics.json."""
    average_best = int(cfg.task.get("average_best") or 0)  # checked before any data is read
    if average_best < 0:
        raise UserInputError(f"task.average_best={average_best}: give the number of best epochs to average (0: none)")
    if (finished := finished_run(run_dir(), cfg)) is not None:
        return finished  # a sweep run again: this point already finished with this config (app/runs/sweeps.py)
    last = run_dir() / "checkpoints" / "last.ckpt"
    if not cfg.ckpt_path and last.is_file():  # a sweep point stopped mid-training (same config: checked above)
        print(f"resuming: {run_dir()} from {last}")
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
    elapsed = ElapsedTime()  # wall time, carried through the checkpoints when the run resumes
    seed_everything(cfg.seed, workers=True, verbose=False)
    directory = run_dir()
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    quant_cfg = OmegaConf.to_container(cfg.quant, resolve=True)
    if cfg.ckpt_path:
        current = {"model": model_cfg, "quant": quant_cfg, "vocab_sha256": datamodule.vocab_sha256}
        check_resumable(read_checkpoint(cfg.ckpt_path, "ckpt_path"), current, cfg.ckpt_path)
    task = build(
        cfg.task.module, model_cfg=model_cfg, quant_cfg=quant_cfg, **task_inputs(cfg, datamodule), _convert_="all"
    )
    checkpoints = ModelCheckpoint(
        dirpath=directory / "checkpoints",
        filename="best",
        monitor=MONITOR[cfg.task.name],
        mode="min",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # last.ckpt after every epoch. Not ModelCheckpoint(save_last=True) above: Lightning writes that one only
    # when a top-k checkpoint was saved too, so after an epoch that did not improve, a resume lost epochs.
    latest = ModelCheckpoint(
        dirpath=directory / "checkpoints",
        filename="last",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    best_epochs = (
        BestEpochs(directory / "checkpoints", MONITOR[cfg.task.name], average_best) if average_best > 1 else None
    )
    trainer = build(
        cfg.trainer,
        default_root_dir=directory,
        # latest last: last.ckpt holds the other callbacks' states as updated by this epoch
        callbacks=[elapsed, *([best_epochs] if best_epochs else []), checkpoints, latest],
        logger=TensorBoardLogger(directory, name="tensorboard", version=""),
        plugins=[AtomicCheckpointIO()],
    )
    write_run_config(directory, cfg)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    train_tokens_per_s = trainer.callback_metrics.get("train/tokens_per_s")
    best = checkpoints.best_model_path or None  # None when nothing was saved (fast_dev_run): use the weights in memory
    averaged_epochs = None
    if best and best_epochs and len(best_epochs.best_k_models) > 1:
        best, averaged_epochs = average_best_epochs(trainer, best_epochs, Path(best))
    metrics = RunMetrics(
        command=command_line("train.py"),
        task=cfg.task.name,
        quant=cfg.quant.name,
        model=cfg.model.name,
        data=cfg.data.name,
        checkpoint=best,
        averaged_epochs=averaged_epochs,
        **evaluate_splits(trainer, task, datamodule, best),
        params=sum(parameter.numel() for parameter in task.parameters()),
        epochs=trainer.current_epoch,
        wall_time_s=elapsed.total,
        train_tokens_per_s=None if train_tokens_per_s is None else float(train_tokens_per_s),
        quant_metrics=task.quant_epoch_metrics(),
        engine="qat" if task.model.quant.quantized else "float",
        integer=None,
        hardware=machine_text(trainer.strategy.root_device),
    )
    if trainer.is_global_zero and task.model.quant.integer_activations:
        integer = export_and_check_integer(task, datamodule, directory, metrics, cfg, trainer)
        metrics = dataclasses.replace(metrics, integer=integer)
    if trainer.is_global_zero:
        write_metrics(directory, metrics)
    return metrics.to_dict()


def average_best_epochs(trainer, best_epochs: BestEpochs, best: Path) -> tuple[str, list[int]]:
    """Write checkpoints/averaged.ckpt (the mean of the kept epochs' weights); the run tests and exports it."""
    averaged = best.parent / AVERAGED_CHECKPOINT
    epochs = None
    if trainer.is_global_zero:
        epochs = write_averaged(best, best_epochs.best_first(), averaged)
        print(
            f"averaged the weights of the {len(epochs)} best epochs by {best_epochs.monitor} "
            f"(epochs {', '.join(str(e) for e in epochs)}, from 0): {averaged}"
        )
    trainer.strategy.barrier()  # the other ranks test the file rank 0 wrote
    epochs = trainer.strategy.broadcast(epochs)
    return str(averaged), epochs


def export_and_check_integer(
    task, datamodule, directory, metrics: RunMetrics, cfg: DictConfig, trainer
) -> dict[str, Any]:
    """Write the integer checkpoint of the best weights and evaluate it with the integer-only engine on the
    batches the QAT evaluation saw (the trainer's batch limits)."""
    info = {
        "quant": OmegaConf.to_container(cfg.quant, resolve=True),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "source_checkpoint": metrics.checkpoint,
        "averaged_epochs": metrics.averaged_epochs,
        "vocab_sha256": datamodule.vocab_sha256,
    }
    if cfg.task.name == "asr":
        return export_and_check_integer_asr(task, datamodule, directory, metrics, info, trainer.limit_test_batches)
    sizes, engine = export_integer_lm(task.model, datamodule.vocab, directory, info)
    result = dict(sizes)
    limits = {"valid": trainer.num_val_batches[0], "test": trainer.num_test_batches[0]}  # LM: one loader each
    for split, prefix in (("valid", "val"), ("test", "test")):
        qat_ppl = getattr(metrics, f"{prefix}_ppl")
        if qat_ppl is None:
            continue
        split_metrics = integer_split_metrics(engine, datamodule, split, limits[split])
        result[f"{prefix}_ppl"] = split_metrics["ppl"]
        result[f"{prefix}_ppl_rel_diff_vs_qat"] = split_metrics["ppl"] / qat_ppl - 1
        result["eval_tokens_per_s"] = split_metrics["tokens_per_s"]
    print(
        f"integer checkpoint {sizes['integer_checkpoint']}: {sizes['integer_param_bytes']:,} bytes "
        f"({100 * sizes['integer_size_ratio']:.1f}% of {sizes['float_param_bytes']:,} float bytes)"
        + (f" | integer-engine test ppl {result['test_ppl']:.2f}" if "test_ppl" in result else "")
    )
    return result


def export_and_check_integer_asr(task, datamodule, directory, metrics: RunMetrics, info, limit) -> dict[str, Any]:
    """ASR: the integer checkpoint, and the WER of each test set decoded by the integer engine (same search)."""
    info["decoding"] = task.decoding.to_info()
    info["validation_decoding"] = task.validation_decoding.to_info()  # evaluate.py validates the engine the same way
    sizes, engine = export_integer_asr(task.model, directory, info)
    result = dict(sizes)
    if metrics.test_wer is not None:
        decoded = integer_wer(
            engine, datamodule, "test", task.decoding, limit, decoded_dir=directory / DECODED_INTEGER_DIR
        )
        result["test_wer"] = decoded["wer"]
        result["test_wer_abs_diff_vs_qat"] = {k: v - metrics.test_wer[k] for k, v in decoded["wer"].items()}
        result["eval_utterances_per_s"] = decoded["utterances_per_s"]
    print(
        f"integer checkpoint {sizes['integer_checkpoint']}: {sizes['integer_param_bytes']:,} bytes "
        f"({100 * sizes['integer_size_ratio']:.1f}% of {sizes['float_param_bytes']:,} float bytes)"
        + (
            " | integer-engine test WER " + ", ".join(f"{k} {v:.2f}" for k, v in result["test_wer"].items())
            if "test_wer" in result
            else ""
        )
    )
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
