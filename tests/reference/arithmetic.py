"""The integer arithmetic of the engine, restated one formula at a time (numpy int64 and Python ints).

Conventions (docs/methods.md section 1):
- rounding is round-half-up everywhere: ``round(a / b) = floor((2a + b) / 2b)`` for b > 0;
- a real multiplier is ``m0 * 2^-shift`` with an integer m0; requantization is
  ``saturate(round(acc * m0 / 2^shift))``;
- saturation to ``bits`` clamps to ``[-2^(bits-1), 2^(bits-1) - 1]``.
Every array here is int64; ``multiply`` refuses products that could leave int64 instead of wrapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Array = np.ndarray
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
GATE_FRAC = 12  # gate pre-activations Q3.12
ACT_FRAC = 15  # sigmoid / tanh / exp outputs Q0.15
LN_EXTRA_BITS = 8  # layer norm: fractional bits carried below the input LSB
LN_GAMMA_FRAC = 12  # layer norm gamma Q3.12
SCORE_FRAC = 10  # attention scores Q5.10
TANH_TO_Q7 = 8  # attention: tanh Q0.15 -> Q0.7


def ints(x) -> Array:
    """Any integer array-like (numpy, lists, torch CPU tensors through numpy()) as int64."""
    array = np.asarray(x)
    if array.dtype.kind not in "iub":
        raise TypeError(f"the reference takes integers only, got {array.dtype}")
    return array.astype(np.int64)


def _max_abs(x: Array) -> int:
    return int(np.abs(x).max()) if x.size else 0


def multiply(a, b) -> Array:
    """Elementwise a * b, exact (raises where int64 could overflow instead of wrapping)."""
    a, b = ints(a), ints(b)
    if _max_abs(a) * _max_abs(b) >= 2**62:
        raise OverflowError("reference product leaves int64")
    return a * b


def dot(x, w) -> Array:
    """x (M, K) @ w (N, K).T -> (M, N), exact."""
    x, w = ints(x), ints(w)
    if _max_abs(x) * _max_abs(w) * max(1, x.shape[-1]) >= 2**62:
        raise OverflowError("reference matmul leaves int64")
    return x @ w.T


def rounded_div(a, b) -> Array:
    """round-half-up(a / b) for b > 0."""
    a, b = ints(a), ints(b)
    if bool((b <= 0).any()):
        raise ValueError("rounded_div needs a positive divisor")
    return np.floor_divide(2 * a + b, 2 * b)


def round_shift(x, shift) -> Array:
    """round-half-up(x / 2^shift), shift >= 1 (scalar or per element)."""
    shift = ints(shift)
    if bool((shift < 1).any()):
        raise ValueError("round_shift needs shift >= 1")
    return rounded_div(x, np.left_shift(np.int64(1), shift))


def rescale(x, shift: int) -> Array:
    """x / 2^shift on the finer or coarser grid: rounded when shift > 0, exact (x * 2^-shift) otherwise."""
    return round_shift(x, shift) if shift > 0 else ints(x) * (1 << -shift)


def saturate(x, bits: int) -> Array:
    return np.clip(ints(x), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def requantize(acc, m0, shift, lo: int, hi: int) -> Array:
    """clamp(round(acc * m0 / 2^shift), lo, hi): docs/methods.md section 1."""
    return np.clip(round_shift(multiply(acc, m0), shift), lo, hi)


def isqrt(n) -> Array:
    """floor(sqrt(n)) of each element, by Python's exact integer square root."""
    n = ints(n)
    return np.array([math.isqrt(int(v)) for v in n.reshape(-1)], dtype=np.int64).reshape(n.shape)


# ---- PWL activations (docs/methods.md section 3; app/engine/pwl.py's docstring) ----------------------


@dataclass
class PWL:
    """Segment j covers boundaries[j-1] <= x < boundaries[j] and computes
    clamp(round((slope[j] * x + intercept[j]) / 2^frac), out_min, out_max)."""

    boundaries: Array
    slopes: Array
    intercepts: Array
    frac: int
    in_min: int
    in_max: int
    out_min: int
    out_max: int

    def __call__(self, x) -> Array:
        x = ints(x)
        if x.size and (int(x.min()) < self.in_min or int(x.max()) > self.in_max):
            raise ValueError(f"PWL input outside its domain [{self.in_min}, {self.in_max}]")
        segment = np.searchsorted(self.boundaries, x, side="right")  # how many boundaries are <= x
        y = round_shift(multiply(self.slopes[segment], x) + self.intercepts[segment], self.frac)
        return np.clip(y, self.out_min, self.out_max)


# ---- layer norm (app/engine/layernorm.py's docstring) -------------------------------------------------


def layer_norm(x, gamma, beta, out_frac: int, eps_s: int) -> Array:
    """Integer layer norm over the last axis; gamma Q3.12, beta and the output on 2^-out_frac, int16.

    mean_s = round(sum(x) 2^P / N); d = x 2^P - mean_s; var_s = floor(sum(d^2) / N) + eps_s;
    x_hat = round(d 2^out_frac / isqrt(var_s)); y = sat16(round(gamma x_hat / 2^12) + beta)   (P = 8)
    """
    x = ints(x)
    n = x.shape[-1]
    scaled = x * (1 << LN_EXTRA_BITS)
    mean_s = rounded_div(scaled.sum(axis=-1, keepdims=True), n)
    d = scaled - mean_s
    var_s = np.floor_divide(multiply(d, d).sum(axis=-1, keepdims=True), n) + eps_s
    std_s = isqrt(var_s)
    x_hat = rounded_div(d * (1 << out_frac), np.broadcast_to(std_s, d.shape))
    y = round_shift(multiply(gamma, x_hat), LN_GAMMA_FRAC) + beta
    return np.clip(y, INT16_MIN, INT16_MAX)


# ---- layers --------------------------------------------------------------------------------------------


@dataclass
class Linear:
    """y = saturate(round((W x + b) * m0 / 2^(exp + in_frac - out_frac))): int8 x at 2^-in_frac, per-channel
    weight scales m0 * 2^-exp, bias at the accumulator scale, output at 2^-out_frac in out_bits."""

    w: Array  # (N, K)
    m0: Array  # (N,)
    exp: Array  # (N,)
    bias: Array | None  # (N,)
    in_frac: int
    out_frac: int
    out_bits: int

    def __call__(self, x) -> Array:
        x = ints(x)
        acc = dot(x.reshape(-1, x.shape[-1]), self.w)
        if self.bias is not None:
            acc = acc + self.bias
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        y = requantize(acc, self.m0, self.exp + (self.in_frac - self.out_frac), lo, hi)
        return y.reshape(*x.shape[:-1], -1)


@dataclass
class Embedding:
    """Rows int8 with per-row scales m0 * 2^-exp, each requantized to the shared grid 2^-out_frac."""

    w: Array  # (V, E)
    m0: Array  # (V,)
    exp: Array  # (V,)
    out_frac: int
    out_bits: int

    def __call__(self, tokens) -> Array:
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        table = requantize(self.w, self.m0[:, None], (self.exp - self.out_frac)[:, None], lo, hi)
        return table[ints(tokens)]


def residual_add(a, a_frac: int, b, b_frac: int, out_frac: int, out_bits: int) -> Array:
    """a + b aligned on the finer of both grids, then rounded to 2^-out_frac and saturated."""
    frac = max(a_frac, b_frac)
    total = ints(a) * (1 << (frac - a_frac)) + ints(b) * (1 << (frac - b_frac))
    return saturate(rescale(total, frac - out_frac), out_bits)


# ---- LSTM (docs/methods.md section 2; app/engine/lstm.py's docstring) -----------------------------------


@dataclass
class LayerNormParams:
    gamma: Array
    beta: Array
    out_frac: int
    eps_s: int


@dataclass
class Direction:
    w_ih: Array  # (4H, I)
    w_ih_m0: Array
    w_ih_exp: Array
    w_hh: Array  # (4H, H)
    w_hh_m0: Array
    w_hh_exp: Array
    bias_acc: Array | None  # (4H,) at the W_x x accumulator scale (no layer norm)
    bias_q12: Array | None  # (4H,) Q3.12 (layer norm)
    ln_ih: LayerNormParams | None
    ln_hh: LayerNormParams | None
    ln_cell: LayerNormParams | None


@dataclass
class LSTMFormat:
    in_frac: int
    h_frac: int
    h_bits: int
    cell_frac: int


@dataclass
class CellTables:
    sigmoid: PWL  # Q3.12 -> Q0.15
    tanh_gate: PWL  # Q3.12 -> Q0.15
    tanh_cell: PWL  # cell grid -> Q0.15


def _gate_blocks_norm(x, ln: LayerNormParams) -> Array:
    """Layer norm of each gate block (i, f, g, o) on its own: (B, 4H) -> (B, 4H)."""
    batch, gates = x.shape
    hidden = gates // 4
    y = layer_norm(
        x.reshape(batch, 4, hidden), ln.gamma.reshape(4, hidden), ln.beta.reshape(4, hidden), ln.out_frac, ln.eps_s
    )
    return y.reshape(batch, gates)


def gate_preactivations(d: Direction, fmt: LSTMFormat, x, h) -> Array:
    """gates Q3.12 (B, 4H) from x (B, I) at 2^-in_frac and h (B, H) at 2^-h_frac.

    no layer norm: sat16(requant32(W_x x + b) + requant32(W_h h))
    layer norm:    sat16(LN(requant16(W_x x)) + LN(requant16(W_h h)) + b_q12)
    """
    x_shift = d.w_ih_exp + (fmt.in_frac - GATE_FRAC)
    h_shift = d.w_hh_exp + (fmt.h_frac - GATE_FRAC)
    if d.ln_ih is None:
        x_part = requantize(dot(x, d.w_ih) + d.bias_acc, d.w_ih_m0, x_shift, -(2**31), 2**31 - 1)
        h_part = requantize(dot(h, d.w_hh), d.w_hh_m0, h_shift, -(2**31), 2**31 - 1)
        return np.clip(x_part + h_part, INT16_MIN, INT16_MAX)
    x_part = _gate_blocks_norm(requantize(dot(x, d.w_ih), d.w_ih_m0, x_shift, INT16_MIN, INT16_MAX), d.ln_ih)
    h_part = _gate_blocks_norm(requantize(dot(h, d.w_hh), d.w_hh_m0, h_shift, INT16_MIN, INT16_MAX), d.ln_hh)
    return np.clip(x_part + h_part + d.bias_q12, INT16_MIN, INT16_MAX)


def cell(gates, c, tables: CellTables, fmt: LSTMFormat, ln_cell: LayerNormParams | None) -> tuple[Array, Array]:
    """One cell update (TFLite's 8x8_16 cell): (h (B, H) at 2^-h_frac, c (B, H) int16 at 2^-cell_frac).

    i, f, o = sigmoid(gates); g = tanh(gates)                                Q0.15
    c' = sat16(round(f c / 2^15) + round(i g / 2^(30 - cell_frac)))
    h' = sat_h(round(o tanh(c' or LN(c')) / 2^(30 - h_frac)))
    """
    hidden = gates.shape[-1] // 4
    i = tables.sigmoid(gates[:, :hidden])
    f = tables.sigmoid(gates[:, hidden : 2 * hidden])
    g = tables.tanh_gate(gates[:, 2 * hidden : 3 * hidden])
    o = tables.sigmoid(gates[:, 3 * hidden :])
    c_new = np.clip(
        round_shift(multiply(f, c), ACT_FRAC) + round_shift(multiply(i, g), 2 * ACT_FRAC - fmt.cell_frac),
        INT16_MIN,
        INT16_MAX,
    )
    if ln_cell is None:
        t = tables.tanh_cell(c_new)
    else:
        t = tables.tanh_gate(layer_norm(c_new, ln_cell.gamma, ln_cell.beta, ln_cell.out_frac, ln_cell.eps_s))
    h_new = saturate(round_shift(multiply(o, t), 2 * ACT_FRAC - fmt.h_frac), fmt.h_bits)
    return h_new, c_new


def run_direction(
    d: Direction, fmt: LSTMFormat, tables: CellTables, x, h0, c0, lengths=None
) -> tuple[Array, Array, Array]:
    """x (B, T, I) in time order -> (outputs (B, T, H), h_T, c_T). A sequence's steps at t >= its length
    keep its state (its output there repeats its last h)."""
    x = ints(x)
    batch, steps, _ = x.shape
    h, c = ints(h0).copy(), ints(c0).copy()
    outputs = np.zeros((batch, steps, h.shape[-1]), dtype=np.int64)
    for t in range(steps):
        h_new, c_new = cell(gate_preactivations(d, fmt, x[:, t], h), c, tables, fmt, d.ln_cell)
        live = np.ones(batch, dtype=bool) if lengths is None else t < ints(lengths)
        h = np.where(live[:, None], h_new, h)
        c = np.where(live[:, None], c_new, c)
        outputs[:, t] = h
    return outputs, h, c


def reverse_within_lengths(x, lengths=None) -> Array:
    """Each sequence of x (B, T, ...) reversed within its length; the padding after it stays in place."""
    x = ints(x)
    if lengths is None:
        return x[:, ::-1].copy()
    out = x.copy()
    for b, n in enumerate(ints(lengths).tolist()):
        out[b, :n] = x[b, :n][::-1]
    return out


@dataclass
class LSTM:
    """Stacked, optionally bidirectional; directions share formats so their outputs concatenate as integers."""

    layers: list[list[Direction]]
    formats: list[LSTMFormat]
    tables: CellTables

    def __call__(self, x, state=None, lengths=None) -> tuple[Array, tuple[Array, Array]]:
        """x (B, T, I) -> (outputs (B, T, D*H), (h_n, c_n) (L*D, B, H))."""
        x = ints(x)
        dirs = len(self.layers[0])
        hidden = self.layers[0][0].w_hh.shape[1]
        if state is None:
            zeros = np.zeros((len(self.layers) * dirs, x.shape[0], hidden), dtype=np.int64)
            state = (zeros, zeros)
        h_n, c_n = [], []
        for li, (directions, fmt) in enumerate(zip(self.layers, self.formats)):
            outs = []
            for di, d in enumerate(directions):
                k = li * dirs + di
                xs = x if di == 0 else reverse_within_lengths(x, lengths)
                y, h, c = run_direction(d, fmt, self.tables, xs, ints(state[0][k]), ints(state[1][k]), lengths)
                outs.append(y if di == 0 else reverse_within_lengths(y, lengths))
                h_n.append(h)
                c_n.append(c)
            x = np.concatenate(outs, axis=-1)
        return x, (np.stack(h_n), np.stack(c_n))


# ---- integer softmax and additive attention (docs/methods.md section 4; app/engine/attention.py) --------


def softmax(scores, mask, exp_table: PWL) -> Array:
    """Q5.10 scores (..., T) -> Q0.15 probabilities: exp_pwl(score - max) / sum, each rounded once.

    Masked scores count as -2^15 for the maximum and contribute nothing to the sum."""
    scores = ints(scores)
    if mask is not None:
        scores = np.where(mask, scores, INT16_MIN)
    peak = scores.max(axis=-1, keepdims=True)
    e = exp_table(np.clip(scores - peak, INT16_MIN, 0))
    if mask is not None:
        e = np.where(mask, e, 0)
    total = e.sum(axis=-1, keepdims=True)
    return rounded_div(e * (1 << ACT_FRAC), np.broadcast_to(total, e.shape))


@dataclass
class Attention:
    key_proj: Linear  # keys -> Q3.12
    query_proj: Linear  # query -> Q3.12
    score_proj: Linear  # Q0.7 -> Q5.10
    tanh: PWL  # Q3.12 -> Q0.15
    exp: PWL  # Q5.10 -> Q0.15

    def __call__(self, query, keys, keys_proj, mask) -> tuple[Array, Array]:
        """query (B, Dq), keys (B, T, Dk), keys_proj (B, T, A), mask (B, T) -> (context (B, Dk), probs (B, T)).

        e = tanh(sat16(k_proj + q_proj)) -> Q0.7; score = v . e; p = softmax; context = round(sum p k / 2^15)."""
        q = self.query_proj(query)  # (B, A)
        energy = np.clip(ints(keys_proj) + q[:, None, :], INT16_MIN, INT16_MAX)
        e_q7 = saturate(round_shift(self.tanh(energy), TANH_TO_Q7), 8)
        scores = self.score_proj(e_q7)[..., 0]  # (B, T)
        probs = softmax(scores, mask, self.exp)
        context = np.einsum("bt,btd->bd", probs, ints(keys))
        return saturate(round_shift(context, ACT_FRAC), 8), probs


# ---- DenseShift codes (docs/methods.md section 5.7; app/engine/packing.py's docstring) ------------------


def unpack_denseshift(packed: bytes, bits: int, shape: list[int]) -> Array:
    """Packed N-bit codes -> weights s * 2^p of ``shape``.

    The bytes are one little-endian bit stream; code i is stream bits [i*N, (i+1)*N);
    code = sign << (N-1) | p with sign 1 for s = -1. Padding after the last code must be zero."""
    count = math.prod(shape)
    stream = np.unpackbits(np.frombuffer(bytes(packed), dtype=np.uint8), bitorder="little").astype(np.int64)
    if stream[count * bits :].any():
        raise ValueError("non-zero padding after the last DenseShift code")
    code = stream[: count * bits].reshape(count, bits) @ (1 << np.arange(bits))  # bit j of a code: stream bit i*N + j
    sign, p = code >> (bits - 1), code & ((1 << (bits - 1)) - 1)
    return np.where(sign == 1, -(1 << p), 1 << p).reshape(shape)
