"""Quantizable additive (Bahdanau) attention for the ASR decoder.

float: ``e = v . tanh(W_k k + b + W_q q)``, masked softmax, context = sum p k.
irnn: the forward values (probabilities and context) are the integer engine's
(``app.engine.attention``); gradients flow through the float computation (STE).
Usage per utterance: ``memory = attn.precompute(keys, key_frac, mask)``, then per decoder step
``context, probs = attn(query, memory, query_frac)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.attention import PROB_FRAC, SCORE_FRAC, IntAdditiveAttention
from app.engine.lstm import GATE_FRAC
from app.quant.activations import attention_activations
from app.quant.config import QuantConfig
from app.quant.layers import QuantLinear, float_weight, weight_quant
from app.quant.quantizers import ste, to_grid

PWL_TANH_OUT_FRAC_Q7 = 7  # the tanh output enters the score projection as int8 Q0.7 (>> 8 of Q0.15)


@dataclass
class AttentionMemory:
    keys: Tensor  # (B, T, Dk) float
    key_frac: int | None
    mask: Tensor | None  # (B, T) bool, True = real frame
    keys_proj: Tensor  # (B, T, A) float (surrogate)
    engine: IntAdditiveAttention | None = None
    keys_int: Tensor | None = None  # (B, T, Dk) int8
    keys_proj_int: Tensor | None = None  # (B, T, A) int64 Q3.12


class QuantAdditiveAttention(nn.Module):
    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, quant: QuantConfig | None = None):
        super().__init__()
        self.quant = quant or QuantConfig()
        proj = dict(quant=self.quant, out_frac=GATE_FRAC, out_bits=16)
        self.key_proj = QuantLinear(key_dim, attn_dim, bias=True, **proj)
        self.query_proj = QuantLinear(query_dim, attn_dim, bias=False, **proj)
        self.score_proj = QuantLinear(attn_dim, 1, bias=False, quant=self.quant, out_frac=SCORE_FRAC, out_bits=32)

    def export(self, query_frac: int, key_frac: int) -> IntAdditiveAttention:
        tanh, exp, _ = attention_activations(self.quant.pwl_segments)
        return IntAdditiveAttention(
            key_proj=self.key_proj.export(key_frac),
            query_proj=self.query_proj.export(query_frac),
            score_proj=self.score_proj.export(PWL_TANH_OUT_FRAC_Q7),
            tanh=tanh,
            exp=exp,
        )

    def _float_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        layers = (self.key_proj, self.query_proj, self.score_proj)
        if not self.quant.integer_activations:
            return tuple(float_weight(m) for m in layers)
        return tuple(weight_quant(m).fake for m in layers)

    def precompute(self, keys: Tensor, key_frac: int | None = None, mask: Tensor | None = None) -> AttentionMemory:
        w_k, _, _ = self._float_weights()
        memory = AttentionMemory(
            keys=keys, key_frac=key_frac, mask=mask, keys_proj=F.linear(keys, w_k, self.key_proj.bias)
        )
        if self.quant.integer_activations:
            if key_frac is None:
                raise ValueError("attention in irnn mode needs the keys' grid: precompute(keys, key_frac=...)")
            memory.keys_int = to_grid(keys, key_frac).clamp(-128, 127).to(torch.int8)
            memory.keys_proj_int = None  # filled on the first step, when the query grid is known
        return memory

    def forward(self, query: Tensor, memory: AttentionMemory, query_frac: int | None = None) -> tuple[Tensor, Tensor]:
        """query (B, Dq) or (B, U, Dq) (U decoder steps at once) -> (context (B, [U,] Dk), probs (B, [U,] T))."""
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)
        _, w_q, w_v = self._float_weights()
        energy = torch.tanh(memory.keys_proj.unsqueeze(1) + F.linear(query, w_q).unsqueeze(2))  # (B, U, T, A)
        scores = F.linear(energy, w_v).squeeze(-1)
        if memory.mask is not None:
            scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        context = torch.bmm(probs, memory.keys)
        if self.quant.integer_activations:
            if query_frac is None:
                raise ValueError(
                    "attention in irnn mode needs the query's grid: forward(query, memory, query_frac=...)"
                )
            with torch.no_grad():
                if memory.engine is None:
                    memory.engine = self.export(query_frac, memory.key_frac)
                    memory.keys_proj_int = memory.engine.project_keys(memory.keys_int)
                query_int = to_grid(query, query_frac).clamp(-128, 127).to(torch.int8)
                context_int, probs_int = memory.engine(query_int, memory.keys_int, memory.keys_proj_int, memory.mask)
            probs = ste(probs, probs_int.to(probs.dtype) * 2.0**-PROB_FRAC)
            context = ste(context, context_int.to(context.dtype) * 2.0**-memory.key_frac)
        if single:
            return context.squeeze(1), probs.squeeze(1)
        return context, probs
