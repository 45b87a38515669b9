"""DenseShift matmuls on int8 activations: the multiplication-free kernel and the decoded fast path.

A DenseShift weight is ``w = s * 2^p`` (s = -1 where ``sign_bit`` is 1, p = ``exponent``), so

    y[m, n] = sum_k s[n, k] * (x[m, k] << p[n, k])
            = sum_p ( sum_{k: p[n,k] = p} s[n, k] * x[m, k] ) << p        (docs/methods.md section 5.7)

``shift_matmul`` computes the second line literally: per exponent value a +-1 sum (selected
additions and subtractions), then one left shift. ``decoded_matmul`` decodes the codes to int8 and
uses ``torch._int_mm``; the tests prove both give identical int64 results. Both use integer ops only.

The shift kernel runs on a ``ShiftPlan``, the codes rearranged once: each weight row's column indices
grouped by (exponent, sign). Then one gather of x in that order, one running sum, and per group its sum
is the difference of two running-sum values; no multiply anywhere, and no pass per exponent value.

Engine layers (``IntLinear``, ``IntLSTMDirection``) run their weights through ``weight_matmul``: the int8
GEMM on the decoded weight by default, the shift kernel on the codes (with their plan, built on first
use) after ``use_shift_kernel(model)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from app.engine import kernels
from app.engine.fixed_point import int_matmul

# the shift kernel materialises (rows * K, M) running sums; this bounds one chunk to 4M values (16 MiB in int32)
_CHUNK_ELEMENTS = 1 << 22
_INT8_MAX_EXPONENT = 6  # 2^6 = 64 fits int8; +128 (4-bit's p = 7) does not


def decode_weight(sign_bit: Tensor, exponent: Tensor) -> Tensor:
    """sign_bit (N, K) uint8/bool, exponent (N, K) int -> (N, K) int64 weight s * 2^p."""
    magnitude = torch.bitwise_left_shift(torch.ones_like(exponent, dtype=torch.int64), exponent.to(torch.int64))
    return torch.where(sign_bit.bool(), -magnitude, magnitude)


def _check_shapes(x_q: Tensor, sign_bit: Tensor, exponent: Tensor) -> None:
    if x_q.dtype != torch.int8:
        raise ValueError(f"DenseShift matmul expects int8 activations, got {x_q.dtype}")
    if sign_bit.shape != exponent.shape or x_q.dim() != 2 or exponent.dim() != 2 or x_q.shape[1] != exponent.shape[1]:
        raise ValueError(
            f"shapes do not match: x_q {tuple(x_q.shape)} needs (M, K), "
            f"sign_bit {tuple(sign_bit.shape)} and exponent {tuple(exponent.shape)} need (N, K)"
        )


@dataclasses.dataclass
class ShiftPlan:
    """DenseShift codes (N, K) arranged for the shift kernel (built once per weight, at load or first use).

    ``columns`` (N * K,) int64: row by row, the column indices k of that row's weights grouped by
    (exponent p, sign): group ``2p`` holds the +2^p weights, ``2p + 1`` the -2^p ones. ``bounds``
    (N, 2 * (P + 1) + 1) int64: where each group starts in ``columns`` (the last column: the row's end),
    P the largest exponent.
    """

    columns: Tensor
    bounds: Tensor
    shape: tuple[int, int]

    @classmethod
    def from_codes(cls, sign_bit: Tensor, exponent: Tensor) -> ShiftPlan:
        """sign_bit (N, K) uint8/bool, exponent (N, K) int >= 0."""
        rows, k = exponent.shape
        exponent = exponent.to(torch.int64)
        groups = 2 * (int(exponent.max()) + 1) if exponent.numel() else 2
        group = (exponent << 1) | sign_bit.to(torch.int64)  # (N, K): 2p for +2^p, 2p + 1 for -2^p
        row = torch.arange(rows, device=exponent.device).unsqueeze(1)
        order = torch.argsort(group, dim=1, stable=True)  # within each row, columns grouped by (p, sign)
        counts = torch.zeros(rows, groups, dtype=torch.int64, device=exponent.device)
        counts.scatter_add_(1, group, torch.ones_like(group))
        row_start = torch.arange(0, rows * k, k, device=exponent.device) if rows else row.reshape(0)
        bounds = torch.cat([row_start.unsqueeze(1), row_start.unsqueeze(1) + counts.cumsum(dim=1)], dim=1)
        return cls(order.reshape(-1), bounds, (rows, k))

    def matmul(self, x_q: Tensor) -> Tensor:
        """x_q (M, K) int8 -> (M, N) int64 = x_q @ w.T, by additions, subtractions and shifts only."""
        rows, k = self.shape
        if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != k:
            raise ValueError(f"shift kernel expects (M, {k}) int8 activations, got {tuple(x_q.shape)} {x_q.dtype}")
        m = x_q.shape[0]
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, m * k))
        # running sums of int8 values over at most per_chunk * K terms: int32 while that cannot overflow
        dtype = torch.int32 if 128 * (per_chunk * k + 1) < 2**31 else torch.int64
        x_t = x_q.t().to(dtype).contiguous()  # (K, M): a gathered weight row is a contiguous (M,) row
        out = []
        for start in range(0, rows, per_chunk):
            stop = min(rows, start + per_chunk)
            running = x_t.new_zeros((stop - start) * k + 1, m)  # running[j] = sum of the first j gathered rows
            torch.index_select(x_t, 0, self.columns[start * k : stop * k], out=running[1:])  # x in group order
            running.cumsum_(0)
            bounds = self.bounds[start:stop] - start * k  # (rows, G + 1) positions in this chunk
            group_sums = (running[bounds[:, 1:]] - running[bounds[:, :-1]]).to(torch.int64)  # (rows, G, M)
            acc = group_sums[:, 0] - group_sums[:, 1]  # p = 0: +sum - -sum
            for p in range(1, group_sums.shape[1] // 2):
                acc = acc + ((group_sums[:, 2 * p] - group_sums[:, 2 * p + 1]) << p)  # (+sum - -sum) << p
            out.append(acc)
        if not out:
            return torch.zeros(m, 0, dtype=torch.int64, device=x_q.device)
        return torch.cat(out, dim=0).t().contiguous()


def shift_matmul(x_q: Tensor, sign_bit: Tensor, exponent: Tensor) -> Tensor:
    """x_q (M, K) int8, sign_bit (N, K) uint8/bool, exponent (N, K) int -> (M, N) int64 = x_q @ w.T.

    Multiplication-free: for each exponent value p, the weights with that exponent contribute a
    sum of +x minus a sum of -x (no multiply), and that partial sum is shifted left by p once
    (``ShiftPlan``; an engine layer keeps the plan of its codes). This is the reference for
    shift-and-add hardware, not the fast path (see ``decoded_matmul``).
    """
    _check_shapes(x_q, sign_bit, exponent)
    return ShiftPlan.from_codes(sign_bit, exponent).matmul(x_q)


def decoded_matmul(x_q: Tensor, sign_bit: Tensor, exponent: Tensor) -> Tensor:
    """x_q (M, K) int8, sign_bit (N, K) uint8/bool, exponent (N, K) int -> (M, N) int64 = x_q @ w.T.

    Fast path: decode to an int8 weight and run ``torch._int_mm`` (int32 accumulation, exact for
    K < 2^17). 4-bit weights of +-128 do not fit int8, so those are taken as +-64 in a second int8
    matrix whose product is shifted left by one: ``x @ w = x @ w_low + (x @ (w_top / 2)) << 1``.
    An engine would decode once at load time; here the decode runs on every call.
    """
    _check_shapes(x_q, sign_bit, exponent)
    exponent = exponent.to(torch.int64)
    top = exponent > _INT8_MAX_EXPONENT
    w = decode_weight(sign_bit, exponent)
    if not bool(top.any()):
        return int_matmul(x_q, w.to(torch.int8).t())
    w_low = torch.where(top, 0, w).to(torch.int8)
    w_top_half = torch.where(top, w >> 1, 0).to(torch.int8)  # +-128 -> +-64
    return int_matmul(x_q, w_low.t()) + (int_matmul(x_q, w_top_half.t()) << 1)


def weight_matmul(x_q: Tensor, layer: Any, name: str) -> Tensor:
    """x_q (M, K) int8 @ ``layer.<name>``.T -> (M, N) int64: the int8 GEMM on the (decoded) int8 weight, or
    ``shift_matmul`` on its DenseShift codes where ``use_shift_kernel`` switched the layer over."""
    codes = layer.shift_codes.get(name) if layer.shift_kernel else None
    if codes is None:
        weight = getattr(layer, name)
        if not x_q.is_cuda and weight.dtype == torch.int8 and kernels.c_kernels_available():
            return kernels.tiled_matmul(x_q, kernels.tiled_weight(layer, name)).to(torch.int64)  # tiled once per layer
        return int_matmul(x_q, weight.t())
    return codes.shift_plan.matmul(x_q)


def use_shift_kernel(model: Any, enabled: bool = True) -> int:
    """Run every DenseShift weight of an engine model (any tree of engine dataclasses) with the
    multiplication-free ``shift_matmul`` (``enabled=False``: back to the int8 GEMM). Returns how many
    layers hold DenseShift codes. Results are identical either way (tests/test_denseshift_lm.py)."""
    layers = 0
    if dataclasses.is_dataclass(model):
        if getattr(model, "shift_codes", None):
            model.shift_kernel = enabled
            layers += 1
        for field in dataclasses.fields(model):
            layers += use_shift_kernel(getattr(model, field.name), enabled)
    elif isinstance(model, (list, tuple)):
        layers += sum(use_shift_kernel(item, enabled) for item in model)
    return layers
