"""PWL activations for QAT: the engine's integer tables plus the slope each segment gives as gradient."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from app.engine.attention import PROB_FRAC, SCORE_FRAC
from app.engine.lstm import GATE_FRAC, PWL_OUT_FRAC, CellActivations
from app.engine.pwl import DeviceCopies, LookupActivation, PWLTable
from app.quant.pwl import fit_pwl, pwl_slopes_real
from app.quant.quantizers import ste


@dataclass
class PWLGradient:
    """Per-input real slope of a PWL table, as a lookup table over its integer domain."""

    table: PWLTable
    in_frac: int
    out_frac: int

    def __post_init__(self):
        x = torch.arange(self.table.in_min, self.table.in_max + 1, dtype=torch.int64)
        self.slope_lut = pwl_slopes_real(self.table, self.in_frac, self.out_frac).float()[self.table.segment_index(x)]
        self._slope_lut = DeviceCopies(self.slope_lut)

    def slope(self, x_int: Tensor) -> Tensor:
        lut = self._slope_lut.on(x_int.device)
        return lut.index_select(0, (x_int - self.table.in_min).reshape(-1)).view(x_int.shape)


def pwl_apply(x: Tensor, x_int: Tensor, exact_int: Tensor, grad: PWLGradient) -> Tensor:
    """Forward: the exact integer PWL output (dequantized); backward: the segment slope at x."""
    surrogate = x * grad.slope(x_int)
    return ste(surrogate, exact_int.to(x.dtype) * 2.0**-grad.out_frac)


@dataclass
class QATCellActivations:
    cell: CellActivations  # integer tables, shared with the engine
    sigmoid_grad: PWLGradient
    tanh_gate_grad: PWLGradient
    tanh_cell_grad: PWLGradient


@lru_cache(maxsize=16)
def lstm_activations(segments: int, cell_frac: int, layer_norm: bool) -> QATCellActivations:
    sigmoid = fit_pwl("sigmoid", GATE_FRAC, PWL_OUT_FRAC, segments).table
    tanh_gate = fit_pwl("tanh", GATE_FRAC, PWL_OUT_FRAC, segments).table
    tanh_cell_frac = GATE_FRAC if layer_norm else cell_frac
    tanh_cell = fit_pwl("tanh", tanh_cell_frac, PWL_OUT_FRAC, segments).table
    return QATCellActivations(
        cell=CellActivations(sigmoid=sigmoid, tanh_gate=tanh_gate, tanh_cell=tanh_cell),
        sigmoid_grad=PWLGradient(sigmoid, GATE_FRAC, PWL_OUT_FRAC),
        tanh_gate_grad=PWLGradient(tanh_gate, GATE_FRAC, PWL_OUT_FRAC),
        tanh_cell_grad=PWLGradient(tanh_cell, tanh_cell_frac, PWL_OUT_FRAC),
    )


@lru_cache(maxsize=16)
def attention_activations(segments: int) -> tuple[PWLTable, PWLTable, PWLGradient]:
    """(tanh Q3.12 -> Q0.15, exp Q5.10 -> Q0.15, tanh gradient)."""
    tanh = fit_pwl("tanh", GATE_FRAC, PWL_OUT_FRAC, segments).table
    exp = fit_pwl("exp", SCORE_FRAC, PROB_FRAC, segments).table
    return tanh, exp, PWLGradient(tanh, GATE_FRAC, PWL_OUT_FRAC)


__all__ = [
    "PWLGradient",
    "pwl_apply",
    "QATCellActivations",
    "lstm_activations",
    "attention_activations",
    "LookupActivation",
]
