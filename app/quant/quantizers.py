"""Quantizers for QAT. Every quantizer here produces the exact integers the engine uses.

- weights: symmetric per-output-channel; the scale itself is a 16-bit fixed-point number
  ``m0 * 2^-exp`` (m0 in [2^14, 2^15)), so requantization multipliers are integers;
- activations: per-tensor power-of-two scales ``2^-frac`` picked from an EMA of |max| (can be frozen);
- gradients: straight-through (``ste``), the forward value is the exact integer result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from app.engine.fixed_point import MULTIPLIER_BITS


def ste(surrogate: Tensor, exact: Tensor) -> Tensor:
    """Forward value ``exact``, gradient of ``surrogate`` (straight-through estimator).

    Written as ``exact + (surrogate - surrogate)`` rather than ``surrogate + (exact - surrogate)``:
    the latter can be off by one float ulp from ``exact``; ``s - s.detach()`` is exactly zero.
    """
    return exact.detach() + (surrogate - surrogate.detach())


def round_half_up(x: Tensor) -> Tensor:
    """floor(x + 1/2): the engine's rounding, for float values that are exact in their dtype."""
    return torch.floor(x + 0.5)


def fixed_point_scale(scale: Tensor) -> tuple[Tensor, Tensor]:
    """Positive float scales -> (m0, exp) int64 with scale ~= m0 * 2^-exp, m0 in [2^14, 2^15)."""
    mantissa, exponent = torch.frexp(scale.double())  # scale = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * (1 << MULTIPLIER_BITS)).long()
    exp = (MULTIPLIER_BITS - exponent).long()
    carry = m0 == (1 << MULTIPLIER_BITS)  # rounding reached 2^15: renormalise
    m0 = torch.where(carry, m0 >> 1, m0)
    exp = torch.where(carry, exp - 1, exp)
    return m0, exp


def fixed_point_value(m0: Tensor, exp: Tensor) -> Tensor:
    """The float32 value of m0 * 2^-exp (exact)."""
    return torch.ldexp(m0.float(), -exp.float())


class WeightQuant:
    """Per-output-channel symmetric quantization of a (C, ...) weight to ``bits``."""

    def __init__(self, weight: Tensor, bits: int):
        qmax = (1 << (bits - 1)) - 1
        w = weight.detach()
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-8)
        self.m0, self.exp = fixed_point_scale(absmax / qmax)
        self.scale = fixed_point_value(self.m0, self.exp).to(w.dtype)  # (C,)
        scale = self.scale.reshape(-1, *([1] * (w.dim() - 1)))
        self.q = round_half_up(w / scale).clamp(-qmax, qmax)  # float tensor holding integers
        self.fake = ste(weight, self.q * scale)  # gradient: straight through

    @property
    def q_int8(self) -> Tensor:
        return self.q.to(torch.int8)

    def engine_weight(self) -> Tensor:
        """What the integer checkpoint stores: the int8 weight."""
        return self.q_int8


def bias_to_acc(bias: Tensor, in_frac: int, weight_scale: Tensor) -> Tensor:
    """Float bias -> int64 at the accumulator scale 2^-in_frac * s_w (per channel), int32-saturated."""
    acc_scale = weight_scale.double() * 2.0**-in_frac
    return round_half_up(bias.detach().double() / acc_scale).clamp(-(2**31), 2**31 - 1).long()


def to_grid(value: Tensor, frac: int) -> Tensor:
    """Float value on the 2^-frac grid -> int64 (exact for values on the grid, rounds otherwise)."""
    return round_half_up(value.detach() * 2.0**frac).long()


def snap(x: Tensor, frac: int, bits: int | None = None) -> Tensor:
    """Fake-quantize to the 2^-frac grid (optionally saturating to ``bits``) with a straight-through gradient."""
    q = round_half_up(x.detach() * 2.0**frac)
    if bits is not None:
        q = q.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return ste(x, q * 2.0**-frac)


class PowerOfTwoObserver(nn.Module):
    """EMA of an activation's |max| -> the largest power-of-two scale 2^-frac that keeps it in ``bits``.

    ``quantile`` < 1 tracks that quantile of |x| per batch instead of its max: a few outliers then no
    longer coarsen the grid of every other value (a ReLU conv front end's largest outputs are ~30x its
    median), and the values above the range saturate, in the QAT simulation and the engine alike (the
    engine only sees the resulting ``frac``). Buffers (saved in checkpoints): ``running_max`` and
    ``frozen``. Tracks the saturation rate.
    """

    def __init__(self, bits: int, momentum: float, quantile: float = 1.0):
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.quantile = quantile
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("frozen", torch.tensor(False))
        self.saturated = 0
        self.seen = 0

    def _peak(self, x: Tensor) -> Tensor:
        """|x|'s max, or its ``quantile`` (the k-th smallest |x|, k = ceil(quantile * n))."""
        magnitude = x.detach().abs().flatten()
        if self.quantile >= 1.0:
            return magnitude.max().float()
        return magnitude.kthvalue(max(1, math.ceil(self.quantile * magnitude.numel()))).values.float()

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """EMA update in training; an observer that never saw data takes its first batch's range in
        any mode (e.g. Lightning's sanity validation runs before the first training step)."""
        current = self._peak(x)
        if float(self.running_max) == 0.0:
            self.running_max.copy_(current)
            return
        if not self.training or bool(self.frozen):
            return
        self.running_max.lerp_(current, self.momentum)

    @property
    def frac(self) -> int:
        qmax = (1 << (self.bits - 1)) - 1
        peak = max(float(self.running_max), 1e-8)
        return int(math.floor(math.log2(qmax / peak)))

    def count_saturation(self, q: Tensor) -> None:
        qmax = (1 << (self.bits - 1)) - 1
        self.saturated += int((q.abs() >= qmax).sum())
        self.seen += q.numel()

    def pop_saturation_rate(self) -> float:
        rate = self.saturated / self.seen if self.seen else 0.0
        self.saturated = self.seen = 0
        return rate
