"""Greedy and beam search for attention decoders, shared by the QAT model and the integer engine.

A ``Decoder`` wraps a model's one-step function: ``step(tokens (N,), state, memory) -> (log-probs (N, V),
state)`` and ``select(state, memory, index)`` (reorder / repeat hypotheses). Both models give the same
logits (the integer engine's int32 logits at 2^-logit_frac are the QAT model's eval logits), and the
search is this one code, so both decode the same words. Log-softmax is host post-processing, like the
LM's softmax: greedy search is an argmax, which the integer logits decide alone.

Beam search can add the encoder's CTC layer (joint CTC/attention decoding, Watanabe et al. 2017): each
extension c of a hypothesis g is scored (1 - w) log p_att(c | g) + w (log p_ctc(g+c...) - log p_ctc(g...)),
where p_ctc(h...) is the CTC probability that the output starts with h (``CTCPrefixScorer``), and for
<eos> the probability that it is exactly g. CTC scores only the ``pre_beam`` best attention candidates.
With ``ctc_weight`` 1 the CTC layer decodes alone, without the decoder (``ctc_greedy_search``, best-path
decoding: the argmax of each frame's logits, repeats merged, blanks dropped). It cannot loop, costs one
layer per frame, and the integer logits decide it alone, as they decide greedy search; the native runtime
runs it too (``qrnn-run asr --ctc``).
A language model can be fused too (shallow fusion): + lm_weight log p_lm(c | g), from an integer LM whose
words are the ASR tokenizer's pieces (``LanguageModelFusion``; ``data=asr_lm``, ``experiment=asr_lm``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from app.decode.options import DecodingOptions


@dataclass
class Decoder:
    step: Callable[[Tensor, Any, Any], tuple[Tensor, Any]]
    select_state: Callable[[Any, Tensor], Any]
    select_memory: Callable[[Any, Tensor], Any]
    init_state: Callable[[int], Any]
    # memory -> (CTC log-probs (B, T, V), frames per utterance (B,)); None: the model has no CTC layer
    ctc_log_probs: Callable[[Any], tuple[Tensor, Tensor]] | None = None


def qat_decoder(model) -> Decoder:
    """Decoder over ``app.models.asr.AttentionASR`` (float or QAT; call in eval mode)."""
    from app.models.asr import select_memory

    def step(tokens, state, memory):
        logits, state = model.decode_step(tokens, state, memory)
        return F.log_softmax(logits.float(), dim=-1), state

    def ctc_log_probs(memory):
        integer = model.quant.integer_activations
        logits = model.ctc(memory.keys, in_frac=memory.key_frac) if integer else model.ctc(memory.keys)
        return F.log_softmax(logits.float(), dim=-1), memory.mask.sum(-1)

    ctc = None if model.ctc is None else ctc_log_probs
    return Decoder(step, model.select_state, select_memory, model.init_state, ctc)


def integer_decoder(engine) -> Decoder:
    """Decoder over ``app.engine.asr.IntegerASRModel``: the engine computes int32 logits, softmax is here."""

    def step(tokens, state, memory):
        logits, state = engine.decode_step(tokens, state, memory)
        return F.log_softmax(logits.to(torch.float32) * 2.0**-engine.logit_frac, dim=-1), state

    def ctc_log_probs(memory):
        logits = engine.ctc_logits(memory)
        return F.log_softmax(logits.to(torch.float32) * 2.0**-engine.ctc.out_frac, dim=-1), memory.lengths

    ctc = None if engine.ctc is None else ctc_log_probs
    return Decoder(step, engine.select_state, lambda memory, index: memory.select(index), engine.init_state, ctc)


@dataclass
class LanguageModelFusion:
    """An integer LM (``app.engine.lm.IntegerLanguageModel``) scoring ASR tokens for shallow fusion.

    The LM runs on the integer engine for both ASR engines (its int32 logits are its QAT model's, bit for bit),
    so fused decoding stays the same words on both. ``to_lm[t]``: the LM word of ASR token t (its piece;
    <bos> and <eos> are the LM's <eos>, a line boundary; other specials and unknown pieces its <unk>).
    """

    engine: Any
    to_lm: Tensor  # (V_asr,) int64
    weight: float

    @classmethod
    def build(cls, engine, pieces: list[str], bos: int, eos: int, weight: float) -> LanguageModelFusion:
        """pieces: the ASR tokenizer's piece of each token id. Raises ValueError when the LM's words are not
        those pieces (an LM trained on other text)."""
        from app.data.lm_corpus import EOS, UNK

        index = {word: i for i, word in enumerate(engine.vocab)}
        if EOS not in index:
            raise ValueError(f"the LM's vocabulary has no {EOS}: it is not an app LM")
        unknown = index.get(UNK, index[EOS])  # a corpus whose every word is in the vocabulary has no <unk>
        specials = {bos, eos}
        missing = [piece for token, piece in enumerate(pieces) if token not in specials and piece not in index]
        if len(missing) > len(pieces) // 2:
            raise ValueError(
                f"{len(missing)} of the ASR tokenizer's {len(pieces)} pieces are not words of the LM (e.g. {missing[0]!r}): "
                "train the LM on this tokenizer's pieces (data_scripts/prepare_asr_lm.py, experiment=asr_lm)"
            )
        to_lm = [index[EOS] if token in specials else index.get(piece, unknown) for token, piece in enumerate(pieces)]
        return cls(engine, torch.tensor(to_lm, dtype=torch.int64), weight)

    def init_state(self, size: int):
        return self.engine.init_state(size)

    def step(self, tokens: Tensor, state) -> tuple[Tensor, Any]:
        """Previous ASR tokens (N,) -> (LM log-probs of every ASR token (N, V_asr) float64, new state)."""
        logits, state = self.engine(self.to_lm[tokens].unsqueeze(1), state)
        log_probs = F.log_softmax(logits[:, 0].to(torch.float64) * 2.0**-self.engine.logit_frac, dim=-1)
        return log_probs[:, self.to_lm], state

    @staticmethod
    def select_state(state, index: Tensor):
        return tuple(t.index_select(1, index) for t in state)


class CTCPrefixScorer:
    """CTC prefix probabilities of one utterance (Watanabe et al. 2017, Algorithm 2), in log space.

    log_probs: (T, V) CTC log-probabilities. A hypothesis' state is ``r`` (T, 2): the log-probabilities
    that frames 0..t emit the hypothesis with the last frame a label (r[:, 0]) or a blank (r[:, 1]).
    """

    def __init__(self, log_probs: Tensor, blank: int, eos: int) -> None:
        self.x = log_probs.double()
        self.blank, self.eos = blank, eos

    def initial_state(self) -> Tensor:
        """r of the empty hypothesis: only blanks so far."""
        r = torch.full((self.x.shape[0], 2), -math.inf, dtype=torch.float64)
        r[:, 1] = torch.cumsum(self.x[:, self.blank], dim=0)
        return r

    def extend(self, r: Tensor, last: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Hypotheses g (N of them: states r (N, T, 2), last tokens ``last`` (N,), -1 when empty) extended
        by ``candidates`` (N, K) -> (log p_ctc(g+c...) (N, K), states (N, K, T, 2)); for c = eos the first is
        log p_ctc(g), the probability of exactly g; c = blank scores -inf."""
        n, k = candidates.shape
        steps = self.x.shape[0]
        x_c = self.x[:, candidates]  # (T, N, K)
        r_g = r.permute(1, 0, 2).unsqueeze(2)  # (T, N, 1, 2)
        same = (candidates == last.unsqueeze(1)).unsqueeze(0)  # repeating the last label needs a blank between
        phi = torch.logaddexp(r_g[..., 1], torch.where(same, -math.inf, r_g[..., 0]))  # (T, N, K)
        new = torch.full((steps, n, k, 2), -math.inf, dtype=torch.float64)
        new[0, ..., 0] = torch.where((last < 0).unsqueeze(1), x_c[0], torch.tensor(-math.inf, dtype=torch.float64))
        blank = self.x[:, self.blank]
        for t in range(1, steps):
            new[t, ..., 0] = torch.logaddexp(new[t - 1, ..., 0], phi[t - 1]) + x_c[t]
            new[t, ..., 1] = torch.logaddexp(new[t - 1, ..., 0], new[t - 1, ..., 1]) + blank[t]
        psi = torch.logsumexp(torch.cat([new[:1, ..., 0], phi[:-1] + x_c[1:]], dim=0), dim=0)  # (N, K)
        ended = torch.logaddexp(r[:, -1, 0], r[:, -1, 1]).unsqueeze(1).expand(n, k)
        psi = torch.where(candidates == self.eos, ended, psi)
        psi = psi.masked_fill(candidates == self.blank, -math.inf)
        return psi, new.permute(1, 2, 0, 3)


def max_decode_length(encoder_lengths: Tensor, ratio: float, minimum: int = 5) -> list[int]:
    """Longest hypothesis per utterance: ``ratio`` tokens per encoder frame, at least ``minimum``."""
    return [max(minimum, int(math.ceil(ratio * int(n)))) for n in encoder_lengths]


@torch.no_grad()
def ctc_greedy_search(logits: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Best-path CTC decoding of a batch: logits (B, T, V) of the CTC layer (the integer engine's int32 or the
    QAT model's float ones, the same values), lengths (B,) its frames per utterance -> each utterance's tokens:
    the argmax of every frame (the first of equal maxima), repeats merged, then ``blank`` dropped."""
    hyps = []
    for frames, count in zip(logits.argmax(dim=-1).tolist(), lengths.tolist()):
        previous, tokens = blank, []
        for token in frames[: int(count)]:
            if token != previous and token != blank:
                tokens.append(token)
            previous = token
        hyps.append(tokens)
    return hyps


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
    options: DecodingOptions,
    blank: int = 0,
) -> list[list[int]]:
    """Beam search per utterance; finished hypotheses are ranked by score / length^options.length_norm.

    options.ctc_weight > 0: joint CTC/attention scores (module docstring; the decoder needs ``ctc_log_probs``),
    with CTC label ``blank``. options.lm: shallow fusion with that LM at ``lm.weight``. (options.max_len_ratio
    gave ``max_lengths``.)"""
    ctc_weight = options.ctc_weight
    if ctc_weight > 0 and decoder.ctc_log_probs is None:
        raise ValueError(f"ctc_weight={ctc_weight} needs a model with a CTC layer (model.asr.ctc=true)")
    ctc = decoder.ctc_log_probs(memory) if ctc_weight > 0 else None
    results = []
    for i in range(batch_size):
        scorer = None if ctc is None else CTCPrefixScorer(ctc[0][i, : int(ctc[1][i])], blank, eos)
        results.append(
            _beam_one(
                decoder,
                memory,
                i,
                max_lengths[i],
                bos,
                eos,
                options.beam_size,
                options.length_norm,
                scorer,
                ctc_weight,
                options.lm,
            )
        )
    return results


def _beam_one(
    decoder: Decoder,
    memory: Any,
    utterance: int,
    max_length: int,
    bos: int,
    eos: int,
    beam_size: int,
    length_norm: float,
    scorer: CTCPrefixScorer | None,
    ctc_weight: float,
    lm: LanguageModelFusion | None,
) -> list[int]:
    state, memory = decoder.init_state(1), decoder.select_memory(memory, torch.tensor([utterance]))
    hyps: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)
    tokens = torch.tensor([bos])
    finished: list[tuple[float, list[int]]] = []
    memory_rows = 1  # every hypothesis attends to the same utterance: memory rows are copies of one
    if scorer is not None:
        ctc_r, ctc_psi = scorer.initial_state().unsqueeze(0), torch.zeros(1, dtype=torch.float64)
        pre_beam = int(math.ceil(1.5 * beam_size))  # ESPnet's pre-beam: CTC scores 1.5x the beam's candidates
    if lm is not None:
        lm_state = lm.init_state(1)
    for t in range(max_length + 1):
        log_probs, state = decoder.step(tokens, state, memory)
        step_scores = log_probs.double()  # (N, V): attention, + the LM's when fused
        if lm is not None:
            lm_log_probs, lm_state = lm.step(tokens, lm_state)
            step_scores = step_scores + lm.weight * lm_log_probs
        if scorer is None:
            candidates = None  # every token
            total = scores.unsqueeze(1) + step_scores  # (N, V)
        else:  # CTC rescores the pre_beam best (attention [+ LM]) candidates of each hypothesis; the rest are out
            candidates = torch.topk(step_scores, min(pre_beam, step_scores.shape[1]), dim=1).indices  # (N, K)
            last = torch.tensor([h[-1] if h else -1 for h in hyps])
            psi, new_r = scorer.extend(ctc_r, last, candidates)
            joint = (1 - ctc_weight) * log_probs.double().gather(1, candidates) + ctc_weight * (
                psi - ctc_psi.unsqueeze(1)
            )
            if lm is not None:
                joint = joint + lm.weight * lm_log_probs.gather(1, candidates)
            total = scores.unsqueeze(1) + joint  # (N, K)
        # The best beam_size extensions: those ending in <eos> (or at the length limit) are finished, the
        # others go on (ESPnet's rule: a beam of one is greedy search).
        width = total.shape[1]
        best = torch.topk(total.flatten(), min(beam_size, total.numel()))
        keep_rows, keep_cols, keep_tokens, keep_scores = [], [], [], []
        for score, flat in zip(best.values.tolist(), best.indices.tolist()):
            if score == -math.inf:  # CTC cannot emit it (e.g. more labels than frames)
                break
            row, col = divmod(flat, width)
            token = col if candidates is None else int(candidates[row, col])
            if token == eos or t == max_length:
                hyp = hyps[row]  # at the length limit the hypothesis ends as it is
                finished.append((score / max(len(hyp) + 1, 1) ** length_norm, hyp))
            else:
                keep_rows.append(row)
                keep_cols.append(col)
                keep_tokens.append(token)
                keep_scores.append(score)
        if len(finished) >= beam_size or not keep_rows:
            break
        index = torch.tensor(keep_rows)
        if scorer is not None:
            ctc_r, ctc_psi = new_r[index, keep_cols], psi[index, keep_cols]
        hyps = [hyps[row] + [token] for row, token in zip(keep_rows, keep_tokens)]
        scores = torch.tensor(keep_scores, dtype=torch.float64)
        tokens = torch.tensor(keep_tokens)
        state = decoder.select_state(state, index)
        if lm is not None:
            lm_state = lm.select_state(lm_state, index)
        if len(keep_rows) != memory_rows:
            memory, memory_rows = (
                decoder.select_memory(memory, torch.zeros(len(keep_rows), dtype=torch.int64)),
                len(keep_rows),
            )
    if not finished:
        return []
    return max(finished, key=lambda item: item[0])[1]
