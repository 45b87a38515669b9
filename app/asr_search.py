"""Greedy and beam search for attention decoders, shared by the QAT model and the integer engine.

A ``Decoder`` wraps a model's one-step function: ``step(tokens (N,), state, memory) -> (log-probs (N, V),
state)`` and ``select(state, memory, index)`` (reorder / repeat hypotheses). Both models give the same
logits (the integer engine's int32 logits at 2^-logit_frac are the QAT model's eval logits), and the
search is this one code, so both decode the same words. Log-softmax is host post-processing, like the
LM's softmax: greedy search is an argmax, which the integer logits decide alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Decoder:
    step: Callable[[Tensor, Any, Any], tuple[Tensor, Any]]
    select_state: Callable[[Any, Tensor], Any]
    select_memory: Callable[[Any, Tensor], Any]
    init_state: Callable[[int], Any]


def qat_decoder(model) -> Decoder:
    """Decoder over ``app.models.asr.AttentionASR`` (float or QAT; call in eval mode)."""
    from app.models.asr import select_memory

    def step(tokens, state, memory):
        logits, state = model.decode_step(tokens, state, memory)
        return F.log_softmax(logits.float(), dim=-1), state

    return Decoder(step, model.select_state, select_memory, model.init_state)


def integer_decoder(engine) -> Decoder:
    """Decoder over ``app.engine.asr.IntegerASRModel``: the engine computes int32 logits, softmax is here."""

    def step(tokens, state, memory):
        logits, state = engine.decode_step(tokens, state, memory)
        return F.log_softmax(logits.to(torch.float32) * 2.0**-engine.logit_frac, dim=-1), state

    return Decoder(step, engine.select_state, lambda memory, index: memory.select(index), engine.init_state)


def max_decode_length(encoder_lengths: Tensor, ratio: float, minimum: int = 5) -> list[int]:
    """Longest hypothesis per utterance: ``ratio`` tokens per encoder frame, at least ``minimum``."""
    return [max(minimum, int(math.ceil(ratio * int(n)))) for n in encoder_lengths]


@torch.no_grad()
def greedy_search(
    decoder: Decoder, memory: Any, batch_size: int, max_lengths: list[int], bos: int, eos: int
) -> list[list[int]]:
    """Batched argmax decoding; returns each utterance's tokens without <bos>/<eos>."""
    tokens = torch.full((batch_size,), bos, dtype=torch.int64)
    state = decoder.init_state(batch_size)
    hyps: list[list[int]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    for t in range(max(max_lengths)):
        log_probs, state = decoder.step(tokens, state, memory)
        tokens = log_probs.argmax(dim=-1)
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if token == eos or t >= max_lengths[i]:
                done[i] = True
            else:
                hyps[i].append(token)
        if all(done):
            break
    return hyps


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    memory: Any,
    batch_size: int,
    max_lengths: list[int],
    bos: int,
    eos: int,
    beam_size: int,
    length_norm: float = 1.0,
) -> list[list[int]]:
    """Beam search per utterance; finished hypotheses are ranked by log-prob / length^length_norm."""
    results = []
    for i in range(batch_size):
        results.append(_beam_one(decoder, memory, i, max_lengths[i], bos, eos, beam_size, length_norm))
    return results


def _beam_one(decoder: Decoder, memory: Any, utterance: int, max_length: int, bos: int, eos: int,
              beam_size: int, length_norm: float) -> list[int]:  # fmt: skip
    state, memory = decoder.init_state(1), decoder.select_memory(memory, torch.tensor([utterance]))
    hyps: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)
    tokens = torch.tensor([bos])
    finished: list[tuple[float, list[int]]] = []
    memory_rows = 1  # every hypothesis attends to the same utterance: memory rows are copies of one
    for t in range(max_length + 1):
        log_probs, state = decoder.step(tokens, state, memory)
        total = (scores.unsqueeze(1) + log_probs.double()).flatten()
        vocab = log_probs.shape[1]
        # The best beam_size extensions: those ending in <eos> (or at the length limit) are finished, the
        # others go on (ESPnet's rule: a beam of one is greedy search).
        best = torch.topk(total, min(beam_size, total.numel()))
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, flat in zip(best.values.tolist(), best.indices.tolist()):
            row, token = divmod(flat, vocab)
            if token == eos or t == max_length:
                hyp = hyps[row]  # at the length limit the hypothesis ends as it is
                finished.append((score / max(len(hyp) + 1, 1) ** length_norm, hyp))
            else:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
        if len(finished) >= beam_size or not keep_rows:
            break
        index = torch.tensor(keep_rows)
        hyps = [hyps[row] + [token] for row, token in zip(keep_rows, keep_tokens)]
        scores = torch.tensor(keep_scores, dtype=torch.float64)
        tokens = torch.tensor(keep_tokens)
        state = decoder.select_state(state, index)
        if len(keep_rows) != memory_rows:
            memory, memory_rows = decoder.select_memory(memory, torch.zeros(len(keep_rows), dtype=torch.int64)), len(keep_rows)
    if not finished:
        return []
    return max(finished, key=lambda item: item[0])[1]
