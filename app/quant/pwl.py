"""Quantization-aware fitting of adaptive piecewise-linear activations (docs/methods.md section 3).

The domain is the integer input grid of the activation. Knots are placed by greedy recursive
splitting: start from one segment per half-domain and repeatedly split the segment with the
largest error at the candidate point that minimises the larger error of the two halves. Every
segment's line is a chord shifted to balance its error (near-minimax on convex/concave pieces),
then slope and intercept are rounded to fixed point, and **errors are measured after that
rounding**, on every integer input, against the exact function (in output LSB).
Sigmoid and tanh are fitted on x >= 0 and mirrored (sigmoid(-x) = 1 - sigmoid(x), tanh odd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from app.engine.fixed_point import INT16_MAX, INT16_MIN
from app.engine.pwl import PWLTable

SLOPE_FRAC_BITS = 16
SPLIT_CANDIDATES = 48

FUNCTIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "exp": torch.exp,
}


@dataclass(frozen=True)
class PWLFit:
    table: PWLTable
    max_error_lsb: float  # max |pwl(x) - f(x)| over the domain, in output LSB


def _fit_line(xs: torch.Tensor, ys: torch.Tensor) -> tuple[int, int]:
    """Near-minimax line for one segment, rounded to fixed point.

    In general: the chord through the end points, shifted by the mean of its extreme errors.
    A segment starting at x = 0 is pinned to (0, f(0)) so the mirrored table stays continuous
    there (tanh(0) = 0, sigmoid(0) = 1/2 exactly); its slope minimises the max error (ternary
    search: the max error is convex in the slope).
    """
    x0, x1 = float(xs[0]), float(xs[-1])
    slope = 0.0 if x1 == x0 else float(ys[-1] - ys[0]) / (x1 - x0)
    scale = 2.0**SLOPE_FRAC_BITS
    if x0 == 0 and x1 > 0:
        y0 = float(ys[0])
        lo, hi = sorted((slope, float(ys[1] - ys[0])))
        lo, hi = lo - abs(hi - lo), hi + abs(hi - lo)
        for _ in range(60):
            a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            if (ys - y0 - a * xs).abs().max() <= (ys - y0 - b * xs).abs().max():
                hi = b
            else:
                lo = a
        return round((lo + hi) / 2 * scale), round(y0 * scale)
    resid = ys - slope * xs
    intercept = 0.5 * (float(resid.max()) + float(resid.min()))
    return round(slope * scale), round(intercept * scale)


def _eval_line(xs: torch.Tensor, slope_q: int, intercept_q: int, out_min: int, out_max: int) -> torch.Tensor:
    half = 1 << (SLOPE_FRAC_BITS - 1)
    return ((slope_q * xs + intercept_q + half) >> SLOPE_FRAC_BITS).clamp(out_min, out_max)


def _segment_error(xs_int, ys, out_min, out_max) -> tuple[float, int, int]:
    slope_q, intercept_q = _fit_line(xs_int.double(), ys)
    err = (_eval_line(xs_int, slope_q, intercept_q, out_min, out_max).double() - ys).abs().max()
    return float(err), slope_q, intercept_q


def _greedy_knots(xs_int, ys, segments, out_min, out_max) -> list[int]:
    """Indices into xs where segments start (first is 0), chosen by greedy splitting."""
    starts = [0]
    n = xs_int.numel()

    def bounds(k):
        return starts[k], (starts[k + 1] if k + 1 < len(starts) else n)

    errors = [_segment_error(xs_int, ys, out_min, out_max)[0]]
    while len(starts) < segments:
        order = sorted(range(len(starts)), key=lambda k: -errors[k])
        for k in order:
            lo, hi = bounds(k)
            if hi - lo >= 4:
                break
        else:
            break  # every segment is already tiny: more knots cannot help
        best = None
        for cut in torch.linspace(lo + 1, hi - 2, min(SPLIT_CANDIDATES, hi - lo - 2)).round().long().unique().tolist():
            left = _segment_error(xs_int[lo:cut], ys[lo:cut], out_min, out_max)[0]
            right = _segment_error(xs_int[cut:hi], ys[cut:hi], out_min, out_max)[0]
            if best is None or max(left, right) < best[0]:
                best = (max(left, right), cut, left, right)
        _, cut, left, right = best
        starts.insert(k + 1, cut)
        errors[k : k + 1] = [left, right]
    return starts


def _build_table(xs_int, ys, starts, in_min, in_max, out_min, out_max) -> PWLTable:
    n = xs_int.numel()
    slopes, intercepts = [], []
    for k, lo in enumerate(starts):
        hi = starts[k + 1] if k + 1 < len(starts) else n
        _, s, b = _segment_error(xs_int[lo:hi], ys[lo:hi], out_min, out_max)
        slopes.append(s)
        intercepts.append(b)
    boundaries = [int(xs_int[s]) for s in starts[1:]]
    return PWLTable(
        boundaries=torch.tensor(boundaries, dtype=torch.int64),
        slopes=torch.tensor(slopes, dtype=torch.int64),
        intercepts=torch.tensor(intercepts, dtype=torch.int64),
        slope_frac_bits=SLOPE_FRAC_BITS,
        in_min=in_min,
        in_max=in_max,
        out_min=out_min,
        out_max=out_max,
    )


def _mirror(half: PWLTable, kind: str, out_frac: int) -> PWLTable:
    """Extend a table fitted on x >= 0 to negative inputs by symmetry."""
    one = (1 << out_frac) << SLOPE_FRAC_BITS  # 1.0 in output LSB, scaled like the intercepts
    neg_slopes = half.slopes.flip(0)
    neg_intercepts = -half.intercepts.flip(0) if kind == "tanh" else one - half.intercepts.flip(0)
    # a half segment [lo, hi) mirrors to (-hi, -lo], i.e. it starts at -hi + 1
    pos_ends = torch.cat([half.boundaries, torch.tensor([half.in_max + 1])])
    neg_starts = (-pos_ends + 1).flip(0)
    boundaries = torch.cat([neg_starts[1:], torch.zeros(1, dtype=torch.int64), half.boundaries])
    return PWLTable(
        boundaries=boundaries,
        slopes=torch.cat([neg_slopes, half.slopes]),
        intercepts=torch.cat([neg_intercepts, half.intercepts]),
        slope_frac_bits=SLOPE_FRAC_BITS,
        in_min=-(half.in_max + 1),
        in_max=half.in_max,
        out_min=0 if kind == "sigmoid" else -half.out_max,
        out_max=half.out_max,
    )


def _targets(kind: str, xs_int: torch.Tensor, in_frac: int, out_frac: int) -> torch.Tensor:
    return FUNCTIONS[kind](xs_int.double() / 2.0**in_frac) * 2.0**out_frac


@lru_cache(maxsize=64)
def fit_pwl(kind: str, in_frac: int, out_frac: int, segments: int, in_bits: int = 16) -> PWLFit:
    """Fit ``kind`` (sigmoid, tanh: symmetric on a signed ``in_bits`` grid; exp: on [-2^(in_bits-1), 0])
    with ``segments`` pieces; inputs at 2^-in_frac, outputs at 2^-out_frac saturated to 2^out_frac - 1."""
    if kind not in FUNCTIONS:
        raise ValueError(f"unknown PWL function {kind!r}; choose one of {sorted(FUNCTIONS)}")
    if segments < 2 or segments % 2:
        raise ValueError(f"quant.pwl_segments={segments}: use an even number >= 2 (the fit is symmetric)")
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    out_max = (1 << out_frac) - 1
    if kind == "exp":
        xs = torch.arange(lo, 1, dtype=torch.int64)
        ys = _targets(kind, xs, in_frac, out_frac)
        starts = _greedy_knots(xs, ys, segments, 0, out_max)
        table = _build_table(xs, ys, starts, lo, 0, 0, out_max)
    else:
        xs = torch.arange(0, hi + 1, dtype=torch.int64)
        ys = _targets(kind, xs, in_frac, out_frac)
        out_min = 0 if kind == "sigmoid" else -out_max
        starts = _greedy_knots(xs, ys, segments // 2, out_min, out_max)
        table = _mirror(_build_table(xs, ys, starts, 0, hi, out_min, out_max), kind, out_frac)
    return PWLFit(table=table, max_error_lsb=pwl_max_error(table, kind, in_frac, out_frac))


def pwl_max_error(table: PWLTable, kind: str, in_frac: int, out_frac: int) -> float:
    """Max |table(x) - f(x)| over every integer input of the table's domain, in output LSB."""
    xs = torch.arange(table.in_min, table.in_max + 1, dtype=torch.int64)
    return float((table(xs).double() - _targets(kind, xs, in_frac, out_frac)).abs().max())


def pwl_slopes_real(table: PWLTable, in_frac: int, out_frac: int) -> torch.Tensor:
    """Per-segment slope in real units (dy/dx), the gradient the QAT forward uses."""
    return table.slopes.double() * math.ldexp(1.0, in_frac - out_frac - table.slope_frac_bits)


__all__ = ["PWLFit", "fit_pwl", "pwl_max_error", "pwl_slopes_real", "INT16_MIN", "INT16_MAX"]
