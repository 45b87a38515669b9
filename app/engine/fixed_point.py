"""Fixed-point primitives shared bit-for-bit by the integer engine and the QAT simulation.

Conventions (docs/methods.md section 1):
- every integer tensor is int64 inside these helpers (int8/int16/int32 are storage formats);
- a real scale is either a power of two ``2^-frac_bits`` (activations) or a 16-bit fixed-point
  number ``m0 * 2^-exp`` with ``m0`` in [2^14, 2^15) (per-channel weight scales);
- rounding is round-half-up: ``(x + 2^(s-1)) >> s`` with an arithmetic shift, everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -32768, 32767
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MULTIPLIER_BITS = 15  # m0 in [2^14, 2^15): 16-bit signed storage


def qrange(bits: int) -> tuple[int, int]:
    """Signed range of a ``bits``-wide integer: (-2^(bits-1), 2^(bits-1) - 1)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def rounding_right_shift(x: Tensor, shift: Tensor | int) -> Tensor:
    """Round-half-up arithmetic right shift, ``floor((x + 2^(shift-1)) / 2^shift)``; shift >= 1."""
    if isinstance(shift, int):
        if shift < 1:
            raise ValueError(f"rounding_right_shift needs shift >= 1, got {shift}")
        return (x + (1 << (shift - 1))) >> shift
    half = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)
    return (x + half) >> shift


@dataclass(frozen=True)
class Requantizer:
    """``clamp(round(acc * m0 * 2^-shift))`` with the per-channel constants prepared once.

    m0: (C,) int64 multiplier in [2^14, 2^15); shift: (C,) int64 >= 1; acc: (..., C) int64.
    acc * m0 stays below 2^63 for any int32 accumulator.
    """

    m0: Tensor
    shift: Tensor
    half: Tensor  # 2^(shift - 1): round half up
    lo: int
    hi: int

    @classmethod
    def build(cls, m0: Tensor, shift: Tensor, lo: int, hi: int) -> Requantizer:
        if bool((shift < 1).any()):
            raise ValueError("requantize needs right shifts >= 1: the output grid is too coarse for this scale")
        return cls(m0, shift, torch.bitwise_left_shift(torch.ones_like(shift), shift - 1), lo, hi)

    def __call__(self, acc: Tensor) -> Tensor:
        return ((acc * self.m0 + self.half) >> self.shift).clamp(self.lo, self.hi)


def requantize(acc: Tensor, m0: Tensor, shift: Tensor, lo: int, hi: int) -> Tensor:
    """``clamp(round(acc * m0 * 2^-shift))``: the one requantization used everywhere (see Requantizer)."""
    return Requantizer.build(m0, shift, lo, hi)(acc)


def shift_round(x: Tensor, shift: int) -> Tensor:
    """Rescale by a power of two: right shift with rounding for shift > 0, exact left shift otherwise."""
    if shift > 0:
        return rounding_right_shift(x, shift)
    return x << (-shift)


def int_matmul(x_q: Tensor, w_q_t: Tensor) -> Tensor:
    """int8 (M, K) x int8 (K, N) -> int64 (M, N), exact.

    ``w_q_t`` is the transposed view of a row-major (N, K) int8 weight. The compiled integer GEMM
    of ``app.engine.kernels`` runs it where available (on a GPU: its exact float64 form); ``torch._int_mm``
    otherwise (same integers).
    """
    from app.engine import kernels

    if x_q.is_cuda or kernels.c_kernels_available():
        return kernels.int8_gemm_nt(x_q, w_q_t.t()).to(torch.int64)
    return torch._int_mm(x_q, w_q_t).to(torch.int64)


def isqrt(n: Tensor) -> Tensor:
    """Exact ``floor(sqrt(n))`` for int64 ``n`` in [0, 2^62), by integer Newton iteration.

    Start from a power of two above sqrt(n) (from the bit length, found by a 6-step binary
    search), then iterate ``x <- (x + n // x) // 2`` while it decreases (I-BERT's i-sqrt,
    without the float fallback of its reference code).
    """
    n = n.to(torch.int64)
    if bool((n < 0).any()):
        raise ValueError("isqrt of a negative number")
    bit_length = torch.zeros_like(n)
    rest = n.clone()
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (1 << step)
        bit_length = bit_length + big.to(torch.int64) * step
        rest = torch.where(big, rest >> step, rest)
    bit_length = bit_length + (rest > 0).to(torch.int64)
    x = torch.bitwise_left_shift(torch.ones_like(n), (bit_length + 1) // 2)  # >= sqrt(n)
    m = n.clamp_min(1)  # n = 0 is answered at the end; iterating on 1 keeps x >= 1
    while True:
        y = (x + torch.div(m, x, rounding_mode="floor")) >> 1
        if not bool((y < x).any()):
            break
        x = torch.minimum(x, y)
    return torch.where(n == 0, torch.zeros_like(n), x)
