"""What train.py and evaluate.py share: the run directory's files and checks.

A run directory holds `config.yaml` (resolved config), `checkpoints/{best,last}.ckpt` (written
atomically), `epochs.jsonl` (one line per epoch), `tensorboard/` and `metrics.json` (app/runs/metrics.py).
"""

import dataclasses
import io
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from app.config import flatten
from app.errors import UserInputError
from app.files import write_bytes_atomic, write_text_atomic
from app.quant.config import QuantConfig


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside the target and renamed over it: an interrupted save never leaves a torn file.

    (Lightning's own writer goes through an fsspec transaction whose temp file lives in the system temp
    folder, so the final move may be a copy.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getvalue())


class ElapsedTime(Callback):
    """A run's wall time across resumes: every checkpoint stores the time spent so far, and a run resumed
    from it starts counting from there (the time after that checkpoint in a stopped invocation is lost work,
    not counted). metrics.json's ``wall_time_s`` is ``total`` at the end. Only a resume restores it: the
    checkpoint that trainer.test loads after training (best, averaged) carries an earlier epoch's time."""

    def __init__(self) -> None:
        self.before, self.started, self.fitted = 0.0, time.perf_counter(), False

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.fitted = True

    @property
    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.fitted:
            self.before = float(state_dict.get("elapsed_s", 0.0))


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load a checkpoint written by train.py onto the CPU; `key` names the config key that passed it."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"{key}={path} does not exist: pass a checkpoint written by train.py (<run>/checkpoints/last.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a bad file: all mean "unreadable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(
            f"{key}={path} is not a readable checkpoint ({reason}): pass a .ckpt written by train.py"
        ) from err
    if not isinstance(checkpoint, dict) or "task" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserInputError(f"{key}={path} was not written by train.py (no task / hyper-parameters in it)")
    return checkpoint


def check_resumable(checkpoint: Mapping[str, Any], current: Mapping[str, Any], ckpt_path: str) -> None:
    """Refuse to resume when the checkpoint's model, quant or vocabulary differs from this run's.

    current: {"model": ..., "quant": ..., "vocab_sha256": ...}, compared key by key with the
    checkpoint's hyper-parameters (model_cfg, quant_cfg, vocab_sha256). A quant key one side lacks counts as
    its QuantConfig default (a checkpoint from before a key existed resumes with that key at its default).
    """
    hparams = checkpoint["hyper_parameters"]
    saved = flatten(
        {
            "model": hparams.get("model_cfg"),
            "quant": with_quant_defaults(hparams.get("quant_cfg")),
            "vocab_sha256": hparams.get("vocab_sha256"),
        }
    )
    wanted = flatten({**current, "quant": with_quant_defaults(current.get("quant"))})
    differing = sorted(key for key in saved.keys() | wanted.keys() if saved.get(key) != wanted.get(key))
    if differing:
        key = differing[0]
        raise UserInputError(
            f"cannot resume from ckpt_path={ckpt_path}: it was trained with {key}={saved.get(key)!r}, this run has "
            f"{key}={wanted.get(key)!r} ({len(differing)} differing: {', '.join(differing)}); "
            "run with the checkpoint's settings (its run's config.yaml), or drop ckpt_path to start afresh"
        )


def with_quant_defaults(quant: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint's quant config with each key it lacks (one added since) at its QuantConfig default."""
    if quant is None:
        return None
    return {**dataclasses.asdict(QuantConfig()), **quant}


def run_dir() -> Path:
    """This run's directory: the one Hydra made (`hydra.runtime.output_dir`), else `hydra.run.dir` (compose API)."""
    hydra_cfg = HydraConfig.get()
    return Path(OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None) or hydra_cfg.run.dir)


def command_line(script: str) -> str:
    """The command that started this run, as `python <script> <overrides>`."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    return shlex.join(["python", script, *overrides])


@rank_zero_only
def write_run_config(directory: Path, cfg: DictConfig) -> None:
    config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # compose API keeps `hydra`
    write_text_atomic(directory / "config.yaml", OmegaConf.to_yaml(config, resolve=True))


def evaluate_splits(
    trainer: L.Trainer, task: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None
) -> dict[str, Any]:
    """Valid and test loss/perplexity over the whole splits: the val_* / test_* fields of metrics.json."""
    # Each returns [] when its split is switched off (limit_*_batches=0): those fields are then null.
    val = (trainer.validate(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False) or [{}])[0]
    test = (trainer.test(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False) or [{}])[0]
    if hasattr(task, "exact_metrics"):  # Lightning returns float32 copies: a WER of 2/3 would read 66.6666717
        val, test = {**val, **task.exact_metrics("val")}, {**test, **task.exact_metrics("test")}
    return {
        "val_ppl": val.get("val/ppl"),
        "val_loss": val.get("val/loss"),
        "val_tokens": _int_or_none(val.get("val/tokens")),
        "test_ppl": test.get("test/ppl"),
        "test_loss": test.get("test/loss"),
        "test_tokens": _int_or_none(test.get("test/tokens")),
        "eval_tokens_per_s": test.get("test/tokens_per_s"),
        # ASR: word error rate per evaluation set ({set name: WER in %}); null for the LM
        "val_wer": _per_set(val, "val/wer/"),
        "test_wer": _per_set(test, "test/wer/"),
        # ASR: real-speech and synthetic WER, words pooled over the sets of each kind (app.decode.wer.speech_wer_summary)
        "test_wer_summary": task.wer_summary("test") if hasattr(task, "wer_summary") and test else None,
    }


def _per_set(logged: Mapping[str, Any], prefix: str) -> dict[str, float] | None:
    values = {key[len(prefix) :]: float(value) for key, value in logged.items() if key.startswith(prefix)}
    return values or None


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def machine_text(device: torch.device | str = "cpu") -> str:
    """What a run's numbers were measured on: the GPU's name, or the CPU model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (GPU), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"
