"""Integer embedding, linear and residual layers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from app.engine.fixed_point import Requantizer, qrange, requantize, shift_round
from app.engine.packing import ShiftCodes, decode_weight_fields
from app.engine.shift import weight_matmul


@dataclass
class IntEmbedding:
    """Embedding rows are int8 with per-row scales; lookups return one shared activation grid.

    ``table`` = requant(w_q, m0, exp - out_frac) is precomputed once (integer ops), so a lookup is a gather.
    """

    w_q: Tensor | ShiftCodes  # (V, E) int8 (DenseShift codes are decoded to int8 at construction)
    m0: Tensor  # (V,) int64
    exp: Tensor  # (V,) int64
    out_frac: int
    out_bits: int

    def __post_init__(self):
        decode_weight_fields(self, "w_q")
        lo, hi = qrange(self.out_bits)
        self.table = requantize(
            self.w_q.to(torch.int64), self.m0.unsqueeze(1), (self.exp - self.out_frac).unsqueeze(1), lo, hi
        ).to(torch.int8)

    def __call__(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) int64 -> (B, T, E) int8 at 2^-out_frac."""
        return self.table.index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)


@dataclass
class IntLinear:
    """y = requant(W x + b): int8 x at 2^-in_frac, int8 per-channel weights, int32 bias at the
    accumulator scale, output at 2^-out_frac saturated to out_bits (32 for logits)."""

    w_q: Tensor | ShiftCodes  # (N, K) int8 row-major; used as w_q.t() (fast _int_mm layout); codes: decoded
    m0: Tensor  # (N,) int64
    exp: Tensor  # (N,) int64
    bias_acc: Tensor | None  # (N,) int64
    in_frac: int
    out_frac: int
    out_bits: int

    def __post_init__(self):
        decode_weight_fields(self, "w_q")

    def __call__(self, x_q: Tensor) -> Tensor:
        """x_q (..., K) int8 -> (..., N) int64."""
        shape = x_q.shape
        acc = weight_matmul(x_q.reshape(-1, shape[-1]), self, "w_q")
        return self.from_accumulator(acc).reshape(*shape[:-1], -1)

    def from_accumulator(self, acc: Tensor) -> Tensor:
        """Bias, requantization and saturation of an exact (M, N) int64 accumulator W x."""
        if self.bias_acc is not None:
            acc = acc + self.bias_acc
        return self.requantizer(acc)

    @cached_property
    def requantizer(self) -> Requantizer:
        lo, hi = qrange(self.out_bits)
        return Requantizer.build(self.m0, self.exp + (self.in_frac - self.out_frac), lo, hi)


def residual_add(a: Tensor, a_frac: int, b: Tensor, b_frac: int, out_frac: int, out_bits: int) -> Tensor:
    """Quantized residual connection: align both to the finer grid, add, round to 2^-out_frac, saturate."""
    frac = max(a_frac, b_frac)
    total = (a.to(torch.int64) << (frac - a_frac)) + (b.to(torch.int64) << (frac - b_frac))
    lo, hi = qrange(out_bits)
    return shift_round(total, frac - out_frac).clamp(lo, hi)
