"""Integer LSTM (uni/bidirectional, optional layer norm), following TFLite's 8x8_16 cell.

Fixed-point formats (the names carry them through the code):
- input x: int8 at 2^-in_frac; hidden h: int8 Q0.7 (``h_frac`` = act_bits - 1)
- gate pre-activations: int16 Q3.12 (``GATE_FRAC``), sigmoid/tanh outputs Q0.15
- cell state c: int16 at 2^-cell_frac (Q(cell_int_bits).(15 - cell_int_bits))

One step (PyTorch gate order i, f, g, o):
    gates_q12 = sat16(requant(W_x x + b) + requant(W_h h))            (no layer norm)
    gates_q12 = sat16(LN_x(requant(W_x x)) + LN_h(requant(W_h h)) + b_q12)   (layer norm)
    i, f, o   = sigmoid_pwl(gates)     g = tanh_pwl(gates)             Q0.15
    c'        = sat16(round(f * c / 2^15) + round(i * g / 2^(30 - cell_frac)))
    h'        = sat(round(o * tanh_pwl(c' or LN(c')) / 2^(30 - h_frac)))
The QAT simulation (app/quant/lstm.py) calls these same functions, so the two agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.engine import kernels
from app.engine.fixed_point import (
    INT16_MAX,
    INT16_MIN,
    INT32_MAX,
    INT32_MIN,
    Requantizer,
    qrange,
    requantize,
    rounding_right_shift,
)
from app.engine.layernorm import layer_norm_int
from app.engine.packing import ShiftCodes, decode_weight_fields
from app.engine.pwl import LookupActivation, PWLTable
from app.engine.shift import weight_matmul

GATE_FRAC = 12  # Q3.12 gate pre-activations
PWL_OUT_FRAC = 15  # Q0.15 sigmoid / tanh outputs


@dataclass
class CellActivations:
    """The three PWL activations of a cell, expanded to lookup tables (identical results)."""

    sigmoid: PWLTable  # Q3.12 -> Q0.15
    tanh_gate: PWLTable  # Q3.12 -> Q0.15
    tanh_cell: PWLTable  # Q(cell) -> Q0.15 (the Q3.12 table when the cell is layer-normed)
    luts: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.luts = {name: LookupActivation(getattr(self, name)) for name in ("sigmoid", "tanh_gate", "tanh_cell")}


@dataclass
class IntLayerNormParams:
    gamma_q: Tensor  # (N,) int64 Q3.12
    beta_q: Tensor  # (N,) int64 at out_frac
    in_frac: int
    out_frac: int
    eps_s: int

    def __call__(self, x: Tensor) -> Tensor:
        return layer_norm_int(x, self.gamma_q, self.beta_q, self.in_frac, self.out_frac, self.eps_s)


@dataclass
class IntLSTMDirection:
    """Integer weights of one direction of one layer. Weights int8 (4H, I) / (4H, H), row-major
    (given as DenseShift ``ShiftCodes``: decoded to int8 at construction, the codes kept for storage)."""

    w_ih: Tensor | ShiftCodes
    w_ih_m0: Tensor  # (4H,) int64 per-channel multiplier: scale = m0 * 2^-exp
    w_ih_exp: Tensor
    w_hh: Tensor | ShiftCodes
    w_hh_m0: Tensor
    w_hh_exp: Tensor
    bias_acc: Tensor | None  # (4H,) int64 at the W_x x accumulator scale (no layer norm)
    bias_q12: Tensor | None  # (4H,) int64 Q3.12 (layer norm)
    ln_ih: IntLayerNormParams | None = None  # per gate block, over H
    ln_hh: IntLayerNormParams | None = None
    ln_cell: IntLayerNormParams | None = None

    def __post_init__(self):
        decode_weight_fields(self, "w_ih", "w_hh")

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]


@dataclass
class LSTMFormat:
    in_frac: int
    h_frac: int
    h_bits: int
    cell_frac: int


def _gate_layer_norm(x_q12: Tensor, ln: IntLayerNormParams) -> Tensor:
    """Layer norm of each gate block (i, f, g, o) separately: (..., 4H) -> (..., 4H)."""
    shape = x_q12.shape
    blocks = x_q12.reshape(*shape[:-1], 4, shape[-1] // 4)
    gamma = ln.gamma_q.reshape(4, -1)
    beta = ln.beta_q.reshape(4, -1)
    return layer_norm_int(blocks, gamma, beta, ln.in_frac, ln.out_frac, ln.eps_s).reshape(shape)


def input_projection(d: IntLSTMDirection, fmt: LSTMFormat, x_q: Tensor) -> Tensor:
    """W_x x for all time steps at once: x_q (N, I) int8 -> (N, 4H) int64 (Q3.12, or int32-range pre-sum)."""
    return input_projection_from_acc(d, fmt, weight_matmul(x_q, d, "w_ih"))


def input_projection_from_acc(d: IntLSTMDirection, fmt: LSTMFormat, acc: Tensor) -> Tensor:
    """Bias, requantization (and layer norm) of the exact accumulator W_x x (N, 4H) int64."""
    shift = d.w_ih_exp + (fmt.in_frac - GATE_FRAC)
    if d.ln_ih is None:
        return requantize(acc + d.bias_acc, d.w_ih_m0, shift, INT32_MIN, INT32_MAX)
    return _gate_layer_norm(requantize(acc, d.w_ih_m0, shift, INT16_MIN, INT16_MAX), d.ln_ih)


def recurrent_requantizer(d: IntLSTMDirection, fmt: LSTMFormat) -> Requantizer:
    """W_h h accumulator -> Q3.12 (int32 range before the sum, int16 before a layer norm)."""
    lo, hi = (INT16_MIN, INT16_MAX) if d.ln_hh is not None else (INT32_MIN, INT32_MAX)
    return Requantizer.build(d.w_hh_m0, d.w_hh_exp + (fmt.h_frac - GATE_FRAC), lo, hi)


def recurrent_gates(d: IntLSTMDirection, requant_h: Requantizer, x_proj: Tensor, h_q: Tensor) -> Tensor:
    """gates_q12 (B, 4H) from the step's input projection and h (B, H) int8."""
    h_proj = requant_h(weight_matmul(h_q, d, "w_hh"))
    if d.ln_hh is None:
        return (x_proj + h_proj).clamp(INT16_MIN, INT16_MAX)
    return (x_proj + _gate_layer_norm(h_proj, d.ln_hh) + d.bias_q12).clamp(INT16_MIN, INT16_MAX)


def cell_step(
    gates_q12: Tensor, c_q: Tensor, acts: CellActivations, fmt: LSTMFormat, ln_cell: IntLayerNormParams | None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One integer LSTM cell update. Returns (h (B,H) int64, c (B,H) int64, intermediates)."""
    hidden = gates_q12.shape[-1] // 4
    sig = acts.luts["sigmoid"](gates_q12)  # Q0.15, all four blocks (g's is unused)
    i_q15, f_q15, o_q15 = sig[:, :hidden], sig[:, hidden : 2 * hidden], sig[:, 3 * hidden :]
    g_q15 = acts.luts["tanh_gate"](gates_q12[:, 2 * hidden : 3 * hidden])
    fc = rounding_right_shift(f_q15 * c_q, PWL_OUT_FRAC)
    ig = rounding_right_shift(i_q15 * g_q15, 2 * PWL_OUT_FRAC - fmt.cell_frac)
    c_new = (fc + ig).clamp(INT16_MIN, INT16_MAX)
    if ln_cell is None:
        tanh_in = c_new
        t_q15 = acts.luts["tanh_cell"](c_new)
    else:
        tanh_in = ln_cell(c_new)
        t_q15 = acts.luts["tanh_gate"](tanh_in)
    h_lo, h_hi = qrange(fmt.h_bits)
    h_new = rounding_right_shift(o_q15 * t_q15, 2 * PWL_OUT_FRAC - fmt.h_frac).clamp(h_lo, h_hi)
    return h_new, c_new, {"gates": gates_q12, "sig": sig, "g": g_q15, "tanh_in": tanh_in, "t": t_q15}


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (B, T, ...) within its length; padding stays in place."""
    if lengths is None:
        return x.flip(1)
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device).unsqueeze(0)
    idx = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    idx = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


def _compiled_direction_applies(d: IntLSTMDirection, fmt: LSTMFormat, acts: CellActivations, x_q: Tensor) -> bool:
    """Whether ``csrc/int_lstm.c`` computes this direction: CPU tensors, no layer norm, int8 recurrent weights
    (not the DenseShift shift kernel), tables over the whole int16 range and an int8 hidden state."""
    if x_q.is_cuda or not kernels.c_kernels_available():
        return False
    if d.ln_ih is not None or d.ln_hh is not None or d.ln_cell is not None:
        return False
    if getattr(d, "shift_kernel", False) and d.shift_codes.get("w_hh") is not None:
        return False
    int16_tables = all(
        acts.luts[name].offset == INT16_MIN and acts.luts[name].lut.numel() == INT16_MAX - INT16_MIN + 1
        for name in ("sigmoid", "tanh_gate", "tanh_cell")
    )
    shifts_ok = 2 * PWL_OUT_FRAC - fmt.cell_frac >= 1 and 2 * PWL_OUT_FRAC - fmt.h_frac >= 1
    return int16_tables and shifts_ok and fmt.h_bits <= 8 and d.w_hh.dtype == torch.int8


def run_direction(
    d: IntLSTMDirection,
    fmt: LSTMFormat,
    acts: CellActivations,
    x_q: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one direction over x_q (B, T, I) int8 (already reversed for the backward direction).

    Returns outputs (B, T, H) int64, h_T, c_T. Padded steps (t >= length) keep the state.
    """
    batch, steps, _ = x_q.shape
    x_proj = input_projection(d, fmt, x_q.reshape(batch * steps, -1)).reshape(batch, steps, -1)
    requant_h = recurrent_requantizer(d, fmt)
    if _compiled_direction_applies(d, fmt, acts, x_q):
        hidden = h0.shape[-1]
        lut_min = acts.luts["sigmoid"].offset
        return kernels.lstm_direction(
            x_proj,
            kernels.tiled_weight(d, "w_hh"),
            requant_h.m0.expand(4 * hidden),
            requant_h.shift.expand(4 * hidden),
            (requant_h.lo, requant_h.hi),
            tuple(acts.luts[name].lut for name in ("sigmoid", "tanh_gate", "tanh_cell")),
            lut_min,
            2 * PWL_OUT_FRAC - fmt.cell_frac,
            2 * PWL_OUT_FRAC - fmt.h_frac,
            qrange(fmt.h_bits),
            h0,
            c0,
            lengths,
        )
    h, c = h0, c0
    outputs = []
    for t in range(steps):
        gates = recurrent_gates(d, requant_h, x_proj[:, t], h.to(torch.int8))
        h_new, c_new, _ = cell_step(gates, c, acts, fmt, d.ln_cell)
        if lengths is not None:
            live = (t < lengths).unsqueeze(1)
            h_new = torch.where(live, h_new, h)
            c_new = torch.where(live, c_new, c)
        h, c = h_new, c_new
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


@dataclass
class IntLSTM:
    """Multi-layer, optionally bidirectional integer LSTM. Directions share every format, so the
    forward and backward outputs concatenate as integers (iRNN's shared quantization parameters)."""

    layers: list[list[IntLSTMDirection]]
    formats: list[LSTMFormat]
    acts: CellActivations

    @property
    def bidirectional(self) -> bool:
        return len(self.layers[0]) == 2

    def __call__(
        self, x_q: Tensor, state: tuple[Tensor, Tensor] | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x_q (B, T, I) int8 -> (outputs (B, T, D*H) int8, (h_n, c_n) each (L*D, B, H) int8/int16)."""
        batch = x_q.shape[0]
        num_dirs = len(self.layers[0])
        hidden = self.layers[0][0].hidden_size
        if state is None:
            zeros = torch.zeros(len(self.layers) * num_dirs, batch, hidden, dtype=torch.int64)
            state = (zeros, zeros)
        h_all, c_all = state[0].to(torch.int64), state[1].to(torch.int64)
        h_out, c_out = [], []
        layer_in = x_q
        for li, (directions, fmt) in enumerate(zip(self.layers, self.formats)):
            outs = []
            for di, d in enumerate(directions):
                k = li * num_dirs + di
                x_dir = layer_in if di == 0 else reverse_padded(layer_in, lengths)
                y, h_n, c_n = run_direction(d, fmt, self.acts, x_dir, h_all[k], c_all[k], lengths)
                outs.append(y if di == 0 else reverse_padded(y, lengths))
                h_out.append(h_n)
                c_out.append(c_n)
            layer_in = torch.cat(outs, dim=-1).to(torch.int8)
        return layer_in, (torch.stack(h_out).to(torch.int8), torch.stack(c_out).to(torch.int16))
