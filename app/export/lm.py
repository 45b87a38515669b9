"""Perplexity of an integer-only LM: the engine returns int32 logits, softmax happens out here.

As in the iRNN paper, the integer model ends at the logits; log-softmax and the NLL are
post-processing (float) outside the engine.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.engine.checkpoint import IntegerCheckpointError, load_integer_checkpoint, save_integer_checkpoint
from app.engine.lm import IntegerLanguageModel
from app.errors import UserInputError
from app.quant.monitor import float_model_bytes

INTEGER_CHECKPOINT = "model.int.safetensors"


def nll_from_int_logits(logits_int32: torch.Tensor, logit_frac: int, targets: torch.Tensor) -> tuple[float, int]:
    """Sum of token NLL and token count from int32 logits at 2^-logit_frac; targets -100 are padding."""
    logits = logits_int32.double() * 2.0**-logit_frac
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum", ignore_index=-100)
    return float(nll), int((targets != -100).sum())


@torch.inference_mode()
def integer_split_metrics(
    engine: IntegerLanguageModel, datamodule: Any, split: str, max_batches: int | float = math.inf
) -> dict[str, float]:
    """Whole-split perplexity with the LSTM state carried across windows, exactly like the task's eval loop.

    ``max_batches`` mirrors the trainer's ``limit_*_batches`` so both evaluate the same windows; under DDP
    (on rank 0) every rank's rows are evaluated at once, so the perplexity is the one the ranks reduced.
    """
    loader = datamodule.eval_loader(split)
    nll_sum, tokens, state = 0.0, 0, None
    started = time.perf_counter()
    for index, (inputs, targets) in enumerate(loader):
        if index >= max_batches:
            break
        logits, state = engine(inputs, state)
        nll, count = nll_from_int_logits(logits, engine.logit_frac, targets)
        nll_sum += nll
        tokens += count
    seconds = time.perf_counter() - started
    if tokens == 0:
        raise UserInputError(
            f"the {split} split gave the integer engine no tokens to score (max_batches={max_batches}): "
            f"give the corpus a non-empty {split} split, or a batch limit above 0"
        )
    loss = nll_sum / tokens
    return {"loss": loss, "ppl": math.exp(loss), "tokens": tokens, "tokens_per_s": tokens / seconds}


def export_integer_lm(
    model: Any, vocab: list[str], directory: Path, info: dict[str, Any]
) -> tuple[dict[str, Any], IntegerLanguageModel]:
    """Write <directory>/model.int.safetensors from a QAT model (eval mode).

    Returns the size fields of metrics.json and the engine model.
    """
    model.eval()
    engine = model.export_integer(vocab)
    path = directory / INTEGER_CHECKPOINT
    integer_bytes = save_integer_checkpoint(path, engine, kind="lm", vocab=list(vocab), info=info)
    float_bytes = float_model_bytes(model)  # tied weights count once; DenseShift latents as float weights
    return size_fields(path, integer_bytes, float_bytes), engine


def size_fields(path: Path, integer_bytes: int, float_bytes: int) -> dict[str, Any]:
    """The size fields of metrics.json's ``integer`` entry for the integer checkpoint at ``path``."""
    return {
        "integer_checkpoint": str(path),
        "integer_param_bytes": integer_bytes,
        "integer_file_bytes": path.stat().st_size,
        "float_param_bytes": float_bytes,
        "integer_size_ratio": integer_bytes / float_bytes,
    }


def load_integer_lm(path: str, vocab: list[str]) -> tuple[IntegerLanguageModel, dict[str, Any]]:
    """Load an integer LM checkpoint and check it was trained on this vocabulary."""
    try:
        engine, meta = load_integer_checkpoint(path)
    except IntegerCheckpointError as err:
        raise UserInputError(str(err)) from None
    if meta.get("kind") != "lm" or not isinstance(engine, IntegerLanguageModel):
        raise UserInputError(f"ckpt={path} holds an integer {meta.get('kind')!r} model, not a language model")
    if meta.get("vocab") != list(vocab):
        raise UserInputError(
            f"ckpt={path} was trained with another vocabulary: evaluate it on the data it was trained on"
        )
    return engine, meta
