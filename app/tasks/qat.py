"""What the LM and ASR tasks share around quantization-aware training, as a mix-in for their LightningModules.

- ``quant.init_from``: the float (or QAT) checkpoint a QAT run starts from (``init_quantization``);
- per-epoch quantization statistics: activation ranges and grids, saturation, PWL error, and DenseShift weight
  freezing against the codes the epoch started from (``quant_epoch_metrics``);
- ``quant.freeze_observers_epoch``: the activation observers stop moving from that epoch on;
- ``epochs.jsonl``: one JSON line per training epoch in the run directory (``write_epoch_record``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.quant import monitor
from app.quant.denseshift import FreezingTracker

EPOCHS_FILE = "epochs.jsonl"  # one JSON line per training epoch, in the run directory


class QuantizationAwareTask:
    """Mix-in before ``L.LightningModule`` (``class Task(QuantizationAwareTask, L.LightningModule)``) for a task
    whose ``self.model`` carries its QuantConfig as ``self.model.quant``."""

    def init_quantization(self) -> None:
        """Call right after building ``self.model``: loads ``quant.init_from`` (ValueError, FileNotFoundError)."""
        # DenseShift weight freezing: codes at the last epoch end (or training start) and the last epoch's metrics
        self._freezing = FreezingTracker()
        self._freezing_metrics: dict[str, float] = {}
        if self.model.quant.init_from:
            monitor.load_init_weights(self.model, self.model.quant.init_from, init=self.model.quant.init)

    def quant_epoch_metrics(self, epoch_end: bool = False) -> dict[str, Any]:
        """Per-epoch quantization statistics (logged and written to epochs.jsonl); none for a float model.

        Activation ranges and grids, saturation rate per quantizer since the last call, PWL max error;
        DenseShift weight freezing (unchanged codes, sign flips) over the last training epoch, measured
        when ``epoch_end`` (the training loop), repeated otherwise (train.py's and evaluate.py's metrics.json).
        """
        if not epoch_end:
            return {**monitor.epoch_metrics(self.model, self.model.quant), **self._freezing_metrics}
        metrics = monitor.epoch_metrics(self.model, self.model.quant, self._freezing)
        self._freezing_metrics = {k: v for k, v in metrics.items() if k.startswith(("freeze/", "sign_flip/"))}
        return metrics

    def on_train_start(self) -> None:
        # the codes training (or a resumed run) starts from: the first epoch's freezing is measured against them
        self._freezing = FreezingTracker()
        monitor.freezing_metrics(self.model, self._freezing)

    def freeze_observers_when_due(self) -> None:
        """From epoch ``quant.freeze_observers_epoch`` on (>= 0), integer-activation observers keep their ranges."""
        freeze_at = self.model.quant.freeze_observers_epoch
        if self.model.quant.integer_activations and 0 <= freeze_at <= self.current_epoch:
            monitor.freeze_observers(self.model)

    def log_quant_epoch_metrics(self) -> dict[str, Any]:
        """The epoch's quantization statistics, logged as ``quant/<name>`` (the numeric ones) and returned."""
        quant = self.quant_epoch_metrics(epoch_end=True)
        self.log_dict({f"quant/{key}": value for key, value in quant.items() if isinstance(value, (int, float))})
        return quant

    def write_epoch_record(self, record: dict[str, Any]) -> None:
        """Append one epoch's line to ``<run>/epochs.jsonl`` (call on rank 0)."""
        with open(Path(self.trainer.default_root_dir) / EPOCHS_FILE, "a") as epochs_file:
            epochs_file.write(json.dumps(record, default=str) + "\n")
