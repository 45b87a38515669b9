"""LightningModule for attention encoder-decoder speech recognition (``task=asr``).

Loss: label-smoothed cross entropy of the teacher-forced decoder, plus ``ctc_weight`` x CTC on the
encoder output when the model has a CTC layer (joint CTC-attention, Kim et al. 2017). Optional
scheduled sampling (``sampling_prob``) feeds the decoder some of its own predictions instead of the
reference tokens, in two parallel passes (Duckworth et al. 2019): a teacher-forced pass without gradient
predicts every position, and the loss is taken on a second pass whose inputs mix those predictions in.
Validation: loss and WER per validation set, decoded greedily (or by the joint search of ``val_beam_size`` /
``val_decode_ctc_weight``); test: WER by beam search per test set,
each utterance's reference and hypothesis in ``<run>/decoded/<set>.jsonl`` and the WER per speaker. WER is
jiwer's corpus WER on normalized text (``app.data.text.normalize_text``: the same normalization as the
training targets), logged as ``<stage>/wer/<set>`` in percent; ``val/wer`` (all validation words
together) picks the best checkpoint. Each set's ``data.speech`` label (real / synthetic / real_non_english)
gives ``<stage>/real_speech_wer`` and ``<stage>/synthetic_wer``: the words of the real English sets, and of
the synthetic ones, pooled (speech_wer_summary; metrics.json's ``test_wer_summary``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from app.data.text import BOS_ID, EOS_ID, PAD_ID, normalize_text
from app.decode.options import DecodingOptions, DecodingRefused
from app.decode.search import beam_search, ctc_greedy_search, greedy_search, max_decode_length, qat_decoder
from app.decode.wer import add_batch, corpus_wer, new_record, speech_wer_summary, write_test_record
from app.errors import UserInputError
from app.models.asr import build_asr
from app.runs.metrics import wer_summary_text
from app.tasks.optim import check_optimization, configure_optimization
from app.tasks.qat import QuantizationAwareTask

EXAMPLES_PER_VALIDATION = 3
DECODED_DIR = "decoded"  # <run>/decoded/<test set>.jsonl: every test utterance's reference and hypothesis
DECODED_INTEGER_DIR = "decoded_integer"  # the same from the integer engine, in a quant=irnn train.py run


def check_ctc_weight(key: str, weight: float, has_ctc: bool, decoding: bool = False) -> None:
    """A CTC weight must be in [0, 1) for the loss, [0, 1] for decoding (1: the CTC layer alone), and above 0
    only for a model with a CTC layer."""
    if not (0.0 <= weight <= 1.0 if decoding else 0.0 <= weight < 1.0):
        raise UserInputError(
            f"{key}={weight}: must be in [0, 1] (1: decode with the CTC layer alone)"
            if decoding
            else f"{key}={weight}: must be in [0, 1)"
        )
    if weight > 0 and not has_ctc:
        raise UserInputError(f"{key}={weight} needs a CTC layer: set model.asr.ctc=true or {key}=0")


class SpeechRecognitionTask(QuantizationAwareTask, L.LightningModule):
    """Trains and evaluates ``AttentionASR`` (``build_asr``). Config: ``conf/task/asr.yaml``."""

    name = "asr"

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        quant_cfg: Mapping[str, Any],
        vocab_size: int,
        feature_dim: int,
        optimizer: Mapping[str, Any],
        lr_scheduler: Mapping[str, Any],
        grad_clip_norm: float | None,
        label_smoothing: float = 0.1,
        ctc_weight: float = 0.3,
        beam_size: int = 5,
        length_norm: float = 1.0,
        max_len_ratio: float = 1.0,
        vocab_sha256: str | None = None,
        decode_ctc_weight: float = 0.0,
        sampling_prob: float = 0.0,
        sampling_start_epoch: int = 0,
        val_beam_size: int = 1,
        val_decode_ctc_weight: float = 0.0,
    ) -> None:
        """model_cfg / quant_cfg: the ``model`` (its ``asr:`` section) and ``quant`` configs.

        ctc_weight: weight of the CTC loss (needs model.asr.ctc=true; 0 turns it off).
        beam_size / length_norm: test-time beam search; hypotheses ranked by log-prob / length^length_norm.
        decode_ctc_weight: weight of the CTC prefix score in the beam search (joint CTC/attention decoding;
            needs the CTC layer); 0: attention scores only. Greedy validation decoding never uses it.
        max_len_ratio: longest hypothesis in tokens per encoder frame (40 ms a frame with 2 conv layers, 80 ms with 3).
        optimizer / lr_scheduler: as the LM task (``conf/task/lm.yaml``).
        sampling_prob: scheduled sampling: the probability that a decoder input token (after <bos>) is the
            model's own greedy prediction of it instead of the reference, from epoch ``sampling_start_epoch``
            on (numbered from 0); 0 turns it off. Validation and test are unaffected.
        val_beam_size / val_decode_ctc_weight: the validation search, which ranks the epochs (best.ckpt,
            average_best); 1 and 0 (the default): greedy attention-only decoding, batched. The test's values
            (e.g. 10 and 0.3) validate with the test's joint CTC/attention search, without the LM.
        """
        super().__init__()
        check_optimization(optimizer, lr_scheduler)
        for prefix, beam, ctc in (("", beam_size, decode_ctc_weight), ("val_", val_beam_size, val_decode_ctc_weight)):
            try:  # checked now; `decoding` builds them at each use (evaluate.py may change the hyper-parameters)
                DecodingOptions(beam, length_norm, max_len_ratio, ctc)
            except DecodingRefused as refused:  # named by the config keys of this search
                keys = {
                    "beam_size": f"{prefix}beam_size",
                    "ctc_weight": f"{prefix}decode_ctc_weight",
                    "length_norm": "length_norm",
                    "max_len_ratio": "max_len_ratio",
                }
                raise UserInputError(
                    refused.under({field: f"task.module.{key}" for field, key in keys.items()})
                ) from None
        if not 0.0 <= sampling_prob <= 1.0:
            raise UserInputError(f"task.module.sampling_prob={sampling_prob}: must be in [0, 1] (0 turns it off)")
        self.save_hyperparameters()
        try:
            self.model = build_asr(model_cfg, quant_cfg, feature_dim, vocab_size)
            self.init_quantization()  # quant.init_from, DenseShift freezing (app/tasks/qat.py)
        except (ValueError, FileNotFoundError) as err:
            raise UserInputError(str(err)) from None
        for key, weight in (
            ("ctc_weight", ctc_weight),
            ("decode_ctc_weight", decode_ctc_weight),
            ("val_decode_ctc_weight", val_decode_ctc_weight),
        ):
            check_ctc_weight(f"task.module.{key}", weight, self.model.ctc is not None, decoding=key != "ctc_weight")
        self.lm_fusion = None  # an app.decode.search.LanguageModelFusion for the test beam search (evaluate.py lm=...)
        self._stage: dict[str, Any] = {}
        self._epoch_lr = 0.0

    # ---- loss ------------------------------------------------------------------------------------

    def _losses(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Any]:
        """(total loss, attention CE, encoder output) of one batch; tokens are <bos> y <eos>."""
        tokens = batch["tokens"]
        encoded = self.model.encode(batch["feats"], batch["feat_lens"])
        tokens_in = tokens[:, :-1]
        if self.training and self.hparams.sampling_prob > 0 and self.current_epoch >= self.hparams.sampling_start_epoch:
            tokens_in = self._sampled_inputs(tokens_in, encoded)
        logits = self.model.decode_sequence(tokens_in, encoded)
        targets = tokens[:, 1:]
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=PAD_ID,
            label_smoothing=self.hparams.label_smoothing,
        )
        loss = ce
        if self.hparams.ctc_weight > 0:
            log_probs = F.log_softmax(self.model.ctc_logits(encoded).float(), dim=-1).transpose(0, 1)
            inner = batch["token_lens"] - 2  # without <bos>/<eos>
            ctc_targets = tokens[:, 1:-1]
            ctc = F.ctc_loss(log_probs, ctc_targets, encoded.lengths, inner, blank=PAD_ID, zero_infinity=True)
            loss = (1 - self.hparams.ctc_weight) * ce + self.hparams.ctc_weight * ctc
        return loss, ce, encoded

    def _sampled_inputs(self, tokens_in: Tensor, encoded: Any) -> Tensor:
        """tokens_in (B, U) with each token after <bos> replaced, with probability sampling_prob, by the
        teacher-forced decoder's greedy prediction of it; padding stays padding."""
        with torch.no_grad():
            predicted = self.model.decode_sequence(tokens_in, encoded).argmax(-1)  # position t predicts input t + 1
        replace = torch.rand(tokens_in[:, 1:].shape, device=tokens_in.device) < self.hparams.sampling_prob
        replace &= tokens_in[:, 1:] != PAD_ID
        mixed = tokens_in.clone()
        mixed[:, 1:] = torch.where(replace, predicted[:, :-1], tokens_in[:, 1:])
        return mixed

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, ce, _ = self._losses(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["texts"]))
        stage = self._stage["train"]
        stage["loss"] += float(loss.detach()) * len(batch["texts"])
        stage["utterances"] += len(batch["texts"])
        stage["audio_s"] += float(batch["feat_lens"].sum()) / 100.0
        return loss

    # ---- decoding --------------------------------------------------------------------------------

    @property
    def decoding(self) -> DecodingOptions:
        """The test search: beam_size, length_norm, max_len_ratio, decode_ctc_weight and the fused LM."""
        hp = self.hparams
        return DecodingOptions(hp.beam_size, hp.length_norm, hp.max_len_ratio, hp.decode_ctc_weight, self.lm_fusion)

    @property
    def validation_decoding(self) -> DecodingOptions:
        """The validation search: val_beam_size and val_decode_ctc_weight with the test's length settings, no LM
        (a checkpoint saved before these keys existed loads their defaults: greedy, as it was trained)."""
        hp = self.hparams
        return DecodingOptions(hp.val_beam_size, hp.length_norm, hp.max_len_ratio, hp.val_decode_ctc_weight)

    def transcribe(
        self, batch: Mapping[str, Any], options: DecodingOptions, encoded: Any = None, tokenizer: Any = None
    ) -> list[str]:
        """Decoded text of a batch: greedy search (options.greedy), the CTC layer's best path (options.ctc_only) or
        beam search, with the model in eval mode. tokenizer: the trainer's data's unless given (app.transcribe)."""
        if encoded is None:
            encoded = self.model.encode(batch["feats"], batch["feat_lens"])
        tokenizer = tokenizer or self.trainer.datamodule.tokenizer
        if options.ctc_only:  # no decoder, no length limit: one token per frame at most
            hyps = ctc_greedy_search(self.model.ctc_logits(encoded), encoded.lengths, PAD_ID)
            return [tokenizer.decode(h) for h in hyps]
        max_lengths = max_decode_length(encoded.lengths, options.max_len_ratio)
        decoder = qat_decoder(self.model)
        batch_size = len(batch["texts"])
        if options.greedy:
            hyps = greedy_search(decoder, encoded.memory, batch_size, max_lengths, BOS_ID, EOS_ID)
        else:
            hyps = beam_search(decoder, encoded.memory, batch_size, max_lengths, BOS_ID, EOS_ID, options, blank=PAD_ID)
        return [tokenizer.decode(h) for h in hyps]

    def _eval_step(self, stage: str, batch: Mapping[str, Any], dataloader_idx: int) -> None:
        names = self.trainer.datamodule.val_names if stage == "val" else self.trainer.datamodule.test_names
        set_name = names[dataloader_idx]
        loss, _, encoded = self._losses(batch)
        hyps = self.transcribe(batch, self.validation_decoding if stage == "val" else self.decoding, encoded)
        record = self._stage[stage].setdefault(set_name, new_record())
        add_batch(record, batch, hyps)
        record["loss"] += float(loss) * len(batch["texts"])
        record["utterances"] += len(batch["texts"])

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _finish_eval(self, stage: str) -> dict[str, float]:
        """WER per set (and over all sets), loss; logged as <stage>/wer/<set>, <stage>/wer, <stage>/loss."""
        sets = {k: v for k, v in self._stage[stage].items() if isinstance(v, dict)}
        if not sets:
            return {}
        sets = self._gather(sets)
        metrics: dict[str, float] = {}
        counts: dict[str, tuple[int, int]] = {}
        loss = utterances = 0.0
        for set_name, record in sets.items():
            rate, set_errors, set_words = corpus_wer(record["refs"], record["hyps"])
            counts[set_name] = (set_errors, set_words)
            metrics[f"{stage}/wer/{set_name}"] = rate
            loss, utterances = loss + record["loss"], utterances + record["utterances"]
        errors, words = (sum(count[i] for count in counts.values()) for i in (0, 1))
        metrics[f"{stage}/wer"] = 100.0 * errors / max(words, 1)
        summary = speech_wer_summary(counts, self.trainer.datamodule.speech)
        for key in ("real_speech", "synthetic"):
            if summary[key] is not None:
                metrics[f"{stage}/{key}_wer"] = summary[key]["wer"]
        metrics[f"{stage}/loss"] = loss / max(utterances, 1)
        metrics[f"{stage}/utterances_per_s"] = utterances / max(
            time.perf_counter() - self._stage[stage]["started"], 1e-9
        )
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == f"{stage}/wer", add_dataloader_idx=False)
        if self.trainer.is_global_zero:
            lines = [
                f"{stage} WER " + " | ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in metrics.items() if "/wer/" in k),
                f"{stage} WER {wer_summary_text(summary)}",
            ]
            for set_name, record in list(sets.items())[:2]:
                for ref, hyp in list(zip(record["refs"], record["hyps"]))[:EXAMPLES_PER_VALIDATION]:
                    lines.append(
                        f"  [{set_name}] ref: {normalize_text(ref)}\n  [{set_name}] hyp: {normalize_text(hyp)}"
                    )
            self.print("\n".join(lines))
            if stage == "test":
                for set_name, record in sets.items():
                    speakers = write_test_record(Path(self.trainer.default_root_dir) / DECODED_DIR, set_name, record)
                    self.print(f"  [{set_name}] WER by speaker: {speakers}")
        self._stage[stage]["last"], self._stage[stage]["summary"] = metrics, summary
        return metrics

    def exact_metrics(self, stage: str) -> dict[str, float]:
        """The last `stage` evaluation's logged metrics as the Python floats they were computed as."""
        return dict(self._stage.get(stage, {}).get("last", {}))

    def wer_summary(self, stage: str) -> dict[str, Any] | None:
        """The last `stage` evaluation's speech_wer_summary (real-speech and synthetic WER); None before one."""
        return self._stage.get(stage, {}).get("summary")

    def _gather(self, sets: dict[str, dict]) -> dict[str, dict]:
        """Every rank's references and hypotheses (DDP), merged per set."""
        if self.trainer.world_size == 1:
            return sets
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, sets)
        merged: dict[str, dict] = {}
        for part in gathered:
            for name, record in part.items():
                target = merged.setdefault(name, new_record())
                for key in target:
                    target[key] += record[key]
        return merged

    # ---- optimisation ----------------------------------------------------------------------------

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.hparams.grad_clip_norm:
            self.clip_gradients(optimizer, self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        return configure_optimization(self.model, self.hparams.optimizer, self.hparams.lr_scheduler, "val/wer")

    # ---- loop bookkeeping ------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self.freeze_observers_when_due()
        self._epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self._stage["train"] = {"loss": 0.0, "utterances": 0, "audio_s": 0.0, "started": time.perf_counter()}

    def on_validation_epoch_start(self) -> None:
        self._stage["val"] = {"started": time.perf_counter()}

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        self._stage["test"] = {"started": time.perf_counter()}

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def on_train_epoch_end(self) -> None:
        train = self._stage["train"]
        seconds = time.perf_counter() - train["started"]
        quant = self.log_quant_epoch_metrics()
        val = self._stage.get("val", {}).get("last", {})
        record = {
            "epoch": self.current_epoch,
            "train_loss": train["loss"] / max(train["utterances"], 1),
            "val_loss": val.get("val/loss"),
            "val_wer": val.get("val/wer"),
            "val_wer_sets": {k.split("/")[-1]: v for k, v in val.items() if "/wer/" in k},
            "val_real_speech_wer": val.get("val/real_speech_wer"),
            "lr": self._epoch_lr,
            "train_audio_s_per_s": train["audio_s"] / max(seconds, 1e-9),
            "train_seconds": seconds,
            "quant": quant,
        }
        self.log("lr", record["lr"])
        if self.trainer.is_global_zero:
            wer = "n/a" if record["val_wer"] is None else f"{record['val_wer']:.2f}"
            self.print(
                f"epoch {record['epoch']}: train loss {record['train_loss']:.3f} | val WER {wer} | lr {record['lr']:.4g}"
                f" | {record['train_audio_s_per_s']:.1f} s audio/s | {seconds:.0f} s"
            )
            self.write_epoch_record(record)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["task"] = self.name
