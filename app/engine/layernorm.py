"""Integer layer normalization (mean, variance and square root in integer arithmetic).

    P      = STD_EXTRA_BITS fractional bits carried below the input LSB
    mean_s = round(sum(x) * 2^P / N)                 mean * 2^P
    d      = x * 2^P - mean_s                        (x - mean) * 2^P
    var_s  = floor(sum(d^2) / N) + eps_s             var * 2^2P
    std_s  = isqrt(var_s)                            std * 2^P
    x_hat  = round(d * 2^out_frac / std_s)           Q.out_frac
    y      = clamp(round(gamma_q * x_hat / 2^GAMMA_FRAC) + beta_q)   Q.out_frac, int16

The P extra bits keep the mean and the square root precise when the spread is only a few LSB.
``eps_s`` is the float epsilon on this grid: round(eps * 2^(2*in_frac + 2P)).
Intermediates stay below 2^63 for int16 inputs and N < 2^14.
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.engine.fixed_point import INT16_MAX, INT16_MIN, isqrt, rounding_right_shift

STD_EXTRA_BITS = 8
GAMMA_FRAC_BITS = 12  # gamma stored Q3.12 (int16): |gamma| < 8


def rounded_div(num: Tensor, den: Tensor) -> Tensor:
    """round-half-up(num / den) for int64 num and positive int64 den."""
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def layer_norm_int(x: Tensor, gamma_q: Tensor, beta_q: Tensor, in_frac: int, out_frac: int, eps_s: int) -> Tensor:
    """Normalise int64 ``x`` (..., N) over its last dim; gamma_q (N,) Q3.12, beta_q (N,) at out_frac."""
    n = x.shape[-1]
    total = x.sum(dim=-1, keepdim=True)
    mean_s = rounded_div(total << STD_EXTRA_BITS, torch.full_like(total, n))
    centered = (x << STD_EXTRA_BITS) - mean_s
    var_s = torch.div((centered * centered).sum(dim=-1, keepdim=True), n, rounding_mode="floor") + eps_s
    x_hat = rounded_div(centered << out_frac, isqrt(var_s))
    y = rounding_right_shift(gamma_q * x_hat, GAMMA_FRAC_BITS) + beta_q
    return y.clamp(INT16_MIN, INT16_MAX)
