"""LightningModule for word-level language modelling: truncated BPTT, token-weighted perplexity.

Truncated BPTT by hand (Lightning 2 has no `truncated_bptt_steps`): the datamodule serves contiguous
`bptt`-column windows in order, and the LSTM state left by one window, detached, starts the next.
Perplexity is exp(sum of token NLL / number of tokens) over the whole split, with the sums all-reduced
across DDP ranks, not a mean of per-batch perplexities.
"""

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from app.errors import UserInputError
from app.models.lm import LSTMState, build_lm
from app.runs.metrics import format_number
from app.tasks.optim import check_optimization, configure_optimization
from app.tasks.qat import QuantizationAwareTask


class LanguageModelTask(QuantizationAwareTask, L.LightningModule):
    """Trains and evaluates `LSTMLanguageModel` (built by `build_lm`). Config: `conf/task/lm.yaml`."""

    name = "lm"

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        quant_cfg: Mapping[str, Any],
        vocab_size: int,
        optimizer: Mapping[str, Any],
        lr_scheduler: Mapping[str, Any],
        grad_clip_norm: float | None,
        vocab_sha256: str | None = None,
    ) -> None:
        """model_cfg / quant_cfg: the `model` and `quant` configs; vocab_sha256 identifies the vocabulary.

        optimizer: `name` (sgd, adam, adamw) plus that optimizer's keyword arguments.
        lr_scheduler: `name: none`; `name: exponential, hold_epochs, gamma` (Zaremba: keep the LR for
        `hold_epochs` epochs, then multiply it by gamma each epoch); `name: plateau, factor, patience`
        (multiply by `factor` when val loss has not improved for `patience` epochs).
        """
        super().__init__()
        check_optimization(optimizer, lr_scheduler)
        self.save_hyperparameters()
        try:
            self.model = build_lm(model_cfg, quant_cfg, vocab_size)
            self.init_quantization()  # quant.init_from, DenseShift freezing (app/tasks/qat.py)
        except (ValueError, FileNotFoundError) as err:
            raise UserInputError(str(err)) from None
        self._train_state: LSTMState | None = None
        self._eval_state: LSTMState | None = None
        # Per stage (train, val, test) of the current epoch: float64 [sum of token NLL, token count],
        # when the epoch started, and seconds spent in its batches (so validation time is not training time).
        self._totals: dict[str, Tensor] = {}
        self._started_at: dict[str, float] = {}
        self._seconds: dict[str, float] = {}
        self._last_metrics: dict[str, dict[str, float]] = {}
        self._epoch_lr = 0.0

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        return self.model(tokens, state)

    # ---- steps -------------------------------------------------------------------------------------

    def _nll(
        self, stage: str, batch: tuple[Tensor, Tensor], state: LSTMState | None
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """Sum of token NLL and number of real tokens over one window (added to the stage's totals), new state."""
        inputs, targets = batch
        logits, new_state = self.model(inputs, state)
        # Padded targets hold IGNORE_INDEX = -100, cross_entropy's default ignore_index. Evaluation sums in
        # float64 (MPS has none): a float32 sum over a window drifts by several ULPs with the kernel's order,
        # so the QAT perplexity would differ from the integer engine's float64 one on identical logits.
        precise = stage != "train" and logits.device.type != "mps"
        scored = logits.flatten(0, 1).to(torch.float64 if precise else torch.float32)
        nll_sum = F.cross_entropy(scored, targets.flatten(), reduction="sum")
        tokens = (targets != -100).sum()
        self._totals[stage] += torch.stack([nll_sum.detach().double(), tokens.double()])
        return nll_sum, tokens, new_state

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        nll_sum, tokens, state = self._nll("train", batch, self._train_state)
        self._train_state = (state[0].detach(), state[1].detach())  # truncate backprop at the window edge
        loss = nll_sum / tokens
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, _, self._eval_state = self._nll("val", batch, self._eval_state)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, _, self._eval_state = self._nll("test", batch, self._eval_state)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # The clip norm is part of the task recipe (task.module.grad_clip_norm), not a Trainer setting.
        if self.hparams.grad_clip_norm:
            self.clip_gradients(optimizer, self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        return configure_optimization(self.model, self.hparams.optimizer, self.hparams.lr_scheduler, "val/loss")

    # ---- loop bookkeeping: state resets, whole-split sums, throughput ------------------------------

    def _start_loop(self, stage: str) -> None:
        self._totals[stage] = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._started_at[stage] = time.perf_counter()
        self._seconds[stage] = 0.0

    def _batch_done(self, stage: str) -> None:
        self._seconds[stage] = time.perf_counter() - self._started_at[stage]

    def _finish_loop(self, stage: str) -> dict[str, float]:
        """Log `<stage>/loss, ppl, tokens, tokens_per_s` over the whole split (all ranks) and return them."""
        nll_sum, tokens = self.trainer.strategy.reduce(self._totals[stage], reduce_op="sum").tolist()
        if tokens == 0:
            return {}
        seconds = torch.tensor(self._seconds[stage], device=self.device)
        seconds = self.trainer.strategy.reduce(seconds, reduce_op="max").item()
        loss = nll_sum / tokens
        metrics = {
            f"{stage}/loss": loss,
            f"{stage}/ppl": math.exp(loss),
            f"{stage}/tokens": tokens,
            f"{stage}/tokens_per_s": tokens / max(seconds, 1e-9),
        }
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/ppl")
        self._last_metrics[stage] = metrics
        return metrics

    def exact_metrics(self, stage: str) -> dict[str, float]:
        """The last `stage` loop's logged metrics as the Python floats they were computed as (Lightning hands
        back float32 copies: a perplexity off by up to 6e-8 relative, beyond the engine check's exactness)."""
        return dict(self._last_metrics.get(stage, {}))

    def on_train_epoch_start(self) -> None:
        self._train_state = None
        self.freeze_observers_when_due()
        # Epoch-interval schedulers step right after the last batch, before on_train_epoch_end: read the LR now.
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self._start_loop("train")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_done("train")

    def on_validation_epoch_start(self) -> None:
        self._eval_state = None
        self._start_loop("val")

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_done("val")

    def on_validation_epoch_end(self) -> None:
        self._finish_loop("val")

    def on_test_epoch_start(self) -> None:
        self._eval_state = None
        self._start_loop("test")

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_done("test")

    def on_test_epoch_end(self) -> None:
        self._finish_loop("test")

    def on_train_epoch_end(self) -> None:
        train = self._finish_loop("train")
        quant = self.log_quant_epoch_metrics()
        val_ppl = self.trainer.callback_metrics.get("val/ppl")
        record = {
            "epoch": self.current_epoch,
            "train_ppl": train.get("train/ppl"),
            "val_ppl": None if val_ppl is None else float(val_ppl),
            "lr": self._epoch_lr,
            "train_tokens_per_s": train.get("train/tokens_per_s"),
            "train_seconds": self._seconds["train"],
            "quant": quant,
        }
        self.log("lr", record["lr"])
        if self.trainer.is_global_zero:
            self.print(
                f"epoch {record['epoch']}: train ppl {format_number(record['train_ppl'], missing='n/a')}"
                f" | val ppl {format_number(record['val_ppl'], missing='n/a')}"
                f" | lr {record['lr']:.4g} | {format_number(record['train_tokens_per_s'], '.0f', 'n/a')} tokens/s"
                f" | {record['train_seconds']:.0f} s" + "".join(f" | {k} {v}" for k, v in quant.items())
            )
            self.write_epoch_record(record)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["task"] = self.name  # evaluate.py picks the task class by this key
