"""Integer additive (Bahdanau) attention with a PWL-exp softmax (docs/methods.md section 4).

    k_proj   = requant(W_k keys + b_k)                       Q3.12, once per utterance
    q_proj   = requant(W_q query)                            Q3.12, once per decoder step
    e        = tanh_pwl(sat16(k_proj + q_proj))              Q0.15 -> Q0.7 (int8)
    score    = requant(v . e)                                Q5.10 (SCORE_FRAC)
    p        = exp_pwl(score - max(score)) / sum(...)        Q0.15, integer division
    context  = round(sum_t p_t * keys_t / 2^15)              keys' grid, int8
Each probability is rounded once, so a row sums to 2^15 within T/2 LSB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.fixed_point import INT8_MAX, INT8_MIN, INT16_MAX, INT16_MIN, rounding_right_shift
from app.engine.layers import IntLinear
from app.engine.pwl import LookupActivation, PWLTable

SCORE_FRAC = 10  # Q5.10 scores: exp(-32) is below the Q0.15 step
PROB_FRAC = 15


def softmax_int(scores_q10: Tensor, mask: Tensor | None, exp_lut: LookupActivation) -> Tensor:
    """Integer softmax over the last dim: int64 Q5.10 scores -> int64 Q0.15 probabilities."""
    if mask is not None:
        scores_q10 = torch.where(mask, scores_q10, torch.full_like(scores_q10, INT16_MIN))
    peak = scores_q10.max(dim=-1, keepdim=True).values
    shifted = (scores_q10 - peak).clamp(INT16_MIN, 0)
    e_q15 = exp_lut(shifted)
    if mask is not None:
        e_q15 = torch.where(mask, e_q15, torch.zeros_like(e_q15))
    total = e_q15.sum(dim=-1, keepdim=True)
    return torch.div((e_q15 << (PROB_FRAC + 1)) + total, 2 * total, rounding_mode="floor")


@dataclass
class IntAdditiveAttention:
    key_proj: IntLinear  # keys (int8) -> Q3.12, with bias
    query_proj: IntLinear  # query (int8) -> Q3.12, no bias
    score_proj: IntLinear  # tanh output Q0.7 (int8) -> Q5.10 score, one output channel
    tanh: PWLTable  # Q3.12 -> Q0.15
    exp: PWLTable  # Q5.10 (<= 0) -> Q0.15

    def __post_init__(self):
        self.tanh_lut = LookupActivation(self.tanh)
        self.exp_lut = LookupActivation(self.exp)

    def project_keys(self, keys_q: Tensor) -> Tensor:
        return self.key_proj(keys_q)

    def __call__(
        self, query_q: Tensor, keys_q: Tensor, keys_proj_q12: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """query (B, Dq) or (B, U, Dq) int8 (U decoder steps at once), keys (B, T, Dk) int8, mask (B, T) bool
        -> (context (B, [U,] Dk) int8, probs (B, [U,] T) Q0.15)."""
        single = query_q.dim() == 2
        if single:
            query_q = query_q.unsqueeze(1)
        q_q12 = self.query_proj(query_q)  # (B, U, A)
        energy = (keys_proj_q12.unsqueeze(1) + q_q12.unsqueeze(2)).clamp(INT16_MIN, INT16_MAX)  # (B, U, T, A)
        e_q7 = rounding_right_shift(self.tanh_lut(energy), 8).clamp(INT8_MIN, INT8_MAX)
        scores = self.score_proj(e_q7.to(torch.int8)).squeeze(-1)  # (B, U, T)
        probs = softmax_int(scores, None if mask is None else mask.unsqueeze(1), self.exp_lut)
        context = torch.bmm(probs, keys_q.to(torch.int64))
        context = rounding_right_shift(context, PROB_FRAC).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
        if single:
            return context.squeeze(1), probs.squeeze(1)
        return context, probs
