"""Export a QAT speech recognizer to the integer engine and decode test sets with it.

The engine takes int8 features on the model's input grid (``quantize_features``: the front end's last
step, host side) and returns int32 logits; the search (``app.decode.search``) is the same code the QAT
model decodes with, so both give the same words when their logits agree (they do, bit for bit).

Host float code around the engine: the features and their rounding to int8, and in beam search the
log-softmax of the logits, the CTC prefix scores and the LM-fusion term. Greedy search is integer: an argmax
of the int32 logits. ``transcribe_integer(..., guard=IntegerOnlyGuard())`` proves it: everything from the int8
features on runs under the guard (greedy: the whole search; beam: every engine call, the fused LM's too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.data.text import BOS_ID, EOS_ID, PAD_ID
from app.decode.options import DecodingOptions
from app.decode.search import (
    Decoder,
    LanguageModelFusion,
    beam_search,
    ctc_greedy_search,
    greedy_search,
    integer_decoder,
    max_decode_length,
)
from app.decode.wer import add_batch, corpus_wer, new_record, write_test_record
from app.engine.asr import IntegerASRModel
from app.engine.checkpoint import IntegerCheckpointError, load_integer_checkpoint, save_integer_checkpoint
from app.engine.guard import IntegerOnlyGuard
from app.errors import UserInputError
from app.export.lm import INTEGER_CHECKPOINT, size_fields
from app.quant.monitor import float_model_bytes


def quantize_features(feats: Tensor, feat_frac: int) -> Tensor:
    """Float features -> int8 on the 2^-feat_frac grid (round half up, saturate): the QAT model's input rounding."""
    return torch.floor(feats * 2.0**feat_frac + 0.5).clamp(-128, 127).to(torch.int8)


def export_integer_asr(model: Any, directory: Path, info: dict[str, Any]) -> tuple[dict[str, Any], IntegerASRModel]:
    """Write <directory>/model.int.safetensors from a QAT model; returns metrics.json size fields and the engine."""
    model.eval()
    engine = model.export_integer()
    path = directory / INTEGER_CHECKPOINT
    integer_bytes = save_integer_checkpoint(path, engine, kind="asr", vocab=None, info=info)
    # both sides hold the CTC layer: the integer engine runs it for joint CTC/attention decoding
    return size_fields(path, integer_bytes, float_model_bytes(model)), engine


def load_integer_asr(
    path: str,
    vocab_sha256: str,
    *,
    named: str | None = None,
    tokenizer_fix: str = "evaluate it on the data it was trained on",
) -> tuple[IntegerASRModel, dict[str, Any]]:
    """The integer ASR engine in `path` and its metadata, refused in one line if it is not one for this tokenizer.

    named: how the refusals name the file (default `ckpt=<path>`, evaluate.py's key); tokenizer_fix: what
    they tell the user to do about a checkpoint trained with another tokenizer.
    """
    named = f"ckpt={path}" if named is None else named
    try:
        engine, meta = load_integer_checkpoint(path)
    except IntegerCheckpointError as err:
        raise UserInputError(str(err)) from None
    if meta.get("kind") != "asr" or not isinstance(engine, IntegerASRModel):
        raise UserInputError(f"{named} holds an integer {meta.get('kind')!r} model, not a speech recognizer")
    if meta.get("info", {}).get("vocab_sha256") not in (None, vocab_sha256):
        raise UserInputError(f"{named} was trained with another tokenizer: {tokenizer_fix}")
    return engine, meta


def load_lm_fusion(path: str, tokenizer, weight: float) -> LanguageModelFusion:
    """The integer LM at ``path`` (a ``task=lm data=asr_lm`` run's model.int.safetensors) for shallow fusion
    with an ASR model that uses ``tokenizer``, at ``weight``."""
    if not str(path).endswith(".safetensors"):
        raise UserInputError(
            f"lm={path}: LM fusion takes an integer LM checkpoint, <run>/model.int.safetensors of a quant=irnn LM "
            "run (python train.py experiment=asr_lm)"
        )
    if weight <= 0:
        raise UserInputError(f"lm_weight={weight}: must be above 0 (drop lm= to decode without the LM)")
    try:
        engine, meta = load_integer_checkpoint(path)
    except IntegerCheckpointError as err:
        raise UserInputError(str(err)) from None
    if meta.get("kind") != "lm":
        raise UserInputError(f"lm={path} holds an integer {meta.get('kind')!r} model, not a language model")
    pieces = [tokenizer.processor.id_to_piece(token) for token in range(tokenizer.vocab_size)]
    try:
        return LanguageModelFusion.build(engine, pieces, BOS_ID, EOS_ID, weight)
    except ValueError as err:
        raise UserInputError(f"lm={path}: {err}") from None


def integer_greedy_decoder(engine: IntegerASRModel) -> Decoder:
    """Greedy search's decoder on the int32 logits themselves: an argmax needs no softmax. (Log-softmax of the
    float32 logits picks the same token: it keeps distinct int32 logits apart and in order below 2^24.)"""
    return Decoder(
        engine.decode_step, engine.select_state, lambda memory, index: memory.select(index), engine.init_state
    )


class GuardedEngine:
    """An integer engine model whose method calls (and calls of the model itself) run under ``guard``; the host
    code around the calls does not."""

    def __init__(self, engine: Any, guard: IntegerOnlyGuard):
        self._engine, self._guard = engine, guard

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if not inspect.ismethod(value):  # fields (layers such as ``ctc``, formats) pass as they are
            return value

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self._guard:
                return value(*args, **kwargs)

        return guarded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._guard:
            return self._engine(*args, **kwargs)


@torch.inference_mode()
def transcribe_integer(
    engine: IntegerASRModel,
    batch: dict[str, Any],
    tokenizer,
    options: DecodingOptions,
    guard: IntegerOnlyGuard | None = None,
) -> list[str]:
    """The words of ``batch`` (its float features rounded to int8 here) decoded by ``engine`` with ``options``.

    guard: run everything from the int8 features on under it (a FloatOperationError on any float there):
    greedy search and the CTC best path whole, beam search's engine calls (encoder, decoder steps, CTC layer,
    the fused LM)."""
    feats_q = quantize_features(batch["feats"], engine.feat_frac)
    size = len(batch["texts"])
    if options.ctc_only:
        with guard or contextlib.nullcontext():
            memory = engine.encode(feats_q, batch["feat_lens"])
            hyps = ctc_greedy_search(engine.ctc_logits(memory), memory.lengths, PAD_ID)
    elif options.greedy:
        with guard or contextlib.nullcontext():
            memory = engine.encode(feats_q, batch["feat_lens"])
            max_lengths = max_decode_length(memory.lengths, options.max_len_ratio)
            hyps = greedy_search(integer_greedy_decoder(engine), memory, size, max_lengths, BOS_ID, EOS_ID)
    else:
        if guard is not None:
            engine = GuardedEngine(engine, guard)
            if options.lm is not None:
                lm = dataclasses.replace(options.lm, engine=GuardedEngine(options.lm.engine, guard))
                options = dataclasses.replace(options, lm=lm)
        memory = engine.encode(feats_q, batch["feat_lens"])
        max_lengths = max_decode_length(memory.lengths, options.max_len_ratio)
        hyps = beam_search(integer_decoder(engine), memory, size, max_lengths, BOS_ID, EOS_ID, options, blank=PAD_ID)
    return [tokenizer.decode([int(token) for token in h]) for h in hyps]


def limited_batches(limit: int | float | None, batches: int) -> int:
    """How many of a loader's ``batches`` Lightning evaluates under ``trainer.limit_*_batches=limit``."""
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def integer_wer(
    engine: IntegerASRModel,
    datamodule: Any,
    split: str,
    options: DecodingOptions,
    limit: int | float | None = None,
    decoded_dir: Path | None = None,
) -> dict[str, Any]:
    """WER (%) per set of ``split`` ("val" / "test") decoded by the integer engine with ``options``.
    limit: the trainer's ``limit_{val,test}_batches`` as Lightning applies it to each loader (a number of
    batches, or a fraction of them; None: all). decoded_dir: where each set's utterances, references and
    hypotheses go (``<set>.jsonl``, write_test_record).

    Under DDP (called on rank 0) it decodes every rank's share of each set in rank order, the limit applied
    to each share, which are the utterances the ranks' QAT evaluation decoded and gathered in that order."""
    result: dict[str, Any] = {}
    records: dict[str, dict] = {}
    utterances, started = 0, time.perf_counter()
    world_size = datamodule.shard[1]
    for rank in range(world_size):
        for set_name, loader in datamodule.eval_loaders(split, (rank, world_size)).items():
            record = records.setdefault(set_name, new_record())
            for batch in itertools.islice(loader, limited_batches(limit, len(loader))):
                hyps = transcribe_integer(engine, batch, datamodule.tokenizer, options)
                add_batch(record, batch, hyps)
    for set_name, record in records.items():
        if record["refs"]:
            result[set_name] = corpus_wer(record["refs"], record["hyps"])[0]
            utterances += len(record["refs"])
            if decoded_dir is not None:
                write_test_record(decoded_dir, set_name, record)
    return {"wer": result, "utterances_per_s": utterances / max(time.perf_counter() - started, 1e-9)}
