"""DenseShift matmuls on int8 activations: the multiplication-free kernel and the decoded fast path.

A DenseShift weight is ``w = s * 2^p`` (s = -1 where ``sign_bit`` is 1, p = ``exponent``), so

    y[m, n] = sum_k s[n, k] * (x[m, k] << p[n, k])
            = sum_p ( sum_{k: p[n,k] = p} s[n, k] * x[m, k] ) << p        (METHODS.md section 5)

``shift_matmul`` computes the second line literally: per exponent value a +-1 sum (selected
additions and subtractions), then one left shift. ``decoded_matmul`` decodes the codes to int8 and
uses ``torch._int_mm``; the tests prove both give identical int64 results. Both use integer ops only.

Engine layers (``IntLinear``, ``IntLSTMDirection``) run their weights through ``weight_matmul``: the int8
GEMM on the decoded weight by default, ``shift_matmul`` on the codes after ``use_shift_kernel(model)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from app.engine.fixed_point import int_matmul

# shift_matmul materialises (M, rows, K) int64 terms; this bounds one chunk to ~128 MiB
_CHUNK_ELEMENTS = 1 << 24
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


def shift_matmul(x_q: Tensor, sign_bit: Tensor, exponent: Tensor) -> Tensor:
    """x_q (M, K) int8, sign_bit (N, K) uint8/bool, exponent (N, K) int -> (M, N) int64 = x_q @ w.T.

    Multiplication-free: for each exponent value p, the weights with that exponent contribute a
    masked sum of +x or -x (no multiply), and that partial sum is shifted left by p once. This is
    the reference for shift-and-add hardware, not the fast path (see ``decoded_matmul``).
    """
    _check_shapes(x_q, sign_bit, exponent)
    x = x_q.to(torch.int64).unsqueeze(1)  # (M, 1, K)
    negative = sign_bit.bool()
    exponent = exponent.to(torch.int64)
    m, k = x_q.shape
    rows = max(1, _CHUNK_ELEMENTS // max(1, m * k))
    out = []
    for start in range(0, exponent.shape[0], rows):
        chunk_x = torch.where(negative[start : start + rows].unsqueeze(0), -x, x)  # (M, rows, K): s * x
        chunk_p = exponent[start : start + rows].unsqueeze(0)  # (1, rows, K)
        acc = torch.zeros(m, chunk_x.shape[1], dtype=torch.int64, device=x_q.device)
        for p in torch.unique(chunk_p).tolist():
            plus_minus_sum = torch.where(chunk_p == p, chunk_x, 0).sum(dim=-1)  # (M, rows)
            acc = acc + (plus_minus_sum << p)
        out.append(acc)
    return torch.cat(out, dim=1) if out else torch.zeros(m, 0, dtype=torch.int64, device=x_q.device)


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
        return int_matmul(x_q, getattr(layer, name).t())
    return shift_matmul(x_q, *codes.sign_exponent)


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
