"""Compiled kernels of the torch-op engine: an int8 GEMM and a whole LSTM direction without layer norm.

torch's ``_int_mm`` runs a reference loop on many CPUs, 10-100x slower than a float GEMM, so the engine
uses ``csrc/int8_gemm.c`` (registered as the torch operator ``qrnn::int8_gemm_nt``, so dispatch-level
guards still see an op with integer inputs and outputs) and ``csrc/int_lstm.c``. Both are compiled into the
native runtime's library (``app.engine.native``). Without a C compiler the engine falls back to torch ops
(same integers, slower) and says so.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The native runtime's library (app/engine/native.py builds it), or None where it cannot be built."""
    if os.environ.get("QRNN_DISABLE_C_KERNELS") == "1":
        return None
    from app.engine import native

    try:
        return native.library()
    except (native.NativeRuntimeError, OSError) as exc:
        warnings.warn(f"{exc}: the integer engine uses torch ops (same integers, slower)")
        return None


def _int8_gemm_nt_cpu(x: Tensor, w: Tensor) -> Tensor:
    x = x.contiguous()
    w = w.contiguous()
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.int32)
    if _library().qrnn_int8_gemm_nt(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], w.shape[0], x.shape[1]):
        raise MemoryError("qrnn_int8_gemm_nt could not allocate its work buffers")
    return y


def _int8_gemm_nt_float64(x: Tensor, w: Tensor) -> Tensor:
    """The same integers through a float64 GEMM, for GPUs (QAT there runs the engine's integer LSTM cell):
    every int8 product and every partial sum is an integer below 2^53, so float64 holds each exactly.
    CUDA has no int64 GEMM, and ``torch._int_mm`` needs M > 16 and K, N multiples of 8."""
    return (x.to(torch.float64) @ w.to(torch.float64).t()).to(torch.int32)


# A plain Library op (not torch.library.custom_op): ~5 us of dispatch instead of ~30 us per call.
_LIB = torch.library.Library("qrnn", "DEF")
_LIB.define("int8_gemm_nt(Tensor x, Tensor w) -> Tensor")
_LIB.impl("int8_gemm_nt", _int8_gemm_nt_cpu, "CPU")
_LIB.impl("int8_gemm_nt", _int8_gemm_nt_float64, "CUDA")


class TiledWeight:
    """An int8 weight (N, K) laid out once in the runtime's tiles (``qrnn_weight_new``), freed with this object."""

    def __init__(self, weight: Tensor):
        self.weight = weight  # the tensor it was built from (identity tells a cache whether it is current)
        self._lib = _library()
        w = weight.contiguous()
        self.handle = self._lib.qrnn_weight_new(w.data_ptr(), w.shape[0], w.shape[1])
        if not self.handle:
            raise MemoryError(f"could not allocate the tiles of a {tuple(w.shape)} weight")

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self._lib.qrnn_weight_delete(self.handle)
            self.handle = None


def tiled_weight(layer: object, name: str) -> TiledWeight:
    """``layer.<name>`` (int8) as a TiledWeight, built on first use and kept on the layer while it is current."""
    weight = getattr(layer, name)
    cache = layer.__dict__.setdefault("_tiled_weights", {})
    tiled = cache.get(name)
    if tiled is None or tiled.weight is not weight:
        tiled = cache[name] = TiledWeight(weight)
    return tiled


def _tiled_matmul_cpu(x: Tensor, w: Tensor, handle: int) -> Tensor:
    x = x.contiguous()
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.int32)
    if _library().qrnn_weight_matmul(handle, x.data_ptr(), x.shape[0], y.data_ptr()):
        raise MemoryError("qrnn_weight_matmul could not allocate its work buffers")
    return y


# w travels with its tiles' handle so that dispatch-level guards see every integer tensor of the product
_LIB.define("tiled_matmul(Tensor x, Tensor w, int handle) -> Tensor")
_LIB.impl("tiled_matmul", _tiled_matmul_cpu, "CPU")


def tiled_matmul(x: Tensor, tiled: TiledWeight) -> Tensor:
    """x (M, K) int8 @ the tiled weight (N, K) transposed -> (M, N) int32, exact (CPU)."""
    if x.dtype != torch.int8 or x.dim() != 2 or x.shape[1] != tiled.weight.shape[1]:
        raise TypeError(f"tiled_matmul takes (M, {tiled.weight.shape[1]}) int8, got {tuple(x.shape)} {x.dtype}")
    return torch.ops.qrnn.tiled_matmul.default(x, tiled.weight, tiled.handle)


def int8_gemm_nt(x: Tensor, w: Tensor) -> Tensor:
    """x (M, K) int8 @ w (N, K) int8 transposed -> (M, N) int32, exact."""
    if x.dtype != torch.int8 or w.dtype != torch.int8:
        raise TypeError(f"int8_gemm_nt takes int8 tensors, got {x.dtype} and {w.dtype}")
    return torch.ops.qrnn.int8_gemm_nt.default(x, w)


def lstm_direction(
    x_proj: Tensor,
    w_hh: TiledWeight,
    m0: Tensor,
    shift: Tensor,
    req_range: tuple[int, int],
    luts: tuple[Tensor, Tensor, Tensor],
    lut_min: int,
    ig_shift: int,
    h_shift: int,
    h_range: tuple[int, int],
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``csrc/int_lstm.c``: a whole direction of the integer LSTM without layer norm (see its header).

    x_proj (B, T, 4H) int64, w_hh the tiled (4H, H) int8 weight, m0 / shift (4H,) int64, luts (sigmoid, tanh gate, tanh cell)
    int64 tables over [lut_min, lut_min + len), h0 / c0 (B, H). Returns outputs (B, T, H), h_T, c_T, int64.
    """
    batch, steps, gates = x_proj.shape
    hidden = gates // 4
    x_proj, m0, shift = (t.contiguous() for t in (x_proj, m0, shift))
    luts = tuple(t.contiguous() for t in luts)
    h = h0.to(torch.int64).contiguous().clone()
    c = c0.to(torch.int64).contiguous().clone()
    out = torch.empty(batch, steps, hidden, dtype=torch.int64)
    lens = None if lengths is None else lengths.to(torch.int64).contiguous()
    status = _library().qrnn_lstm_direction(
        x_proj.data_ptr(),
        w_hh.handle,
        m0.data_ptr(),
        shift.data_ptr(),
        req_range[0],
        req_range[1],
        luts[0].data_ptr(),
        luts[1].data_ptr(),
        luts[2].data_ptr(),
        lut_min,
        ig_shift,
        h_shift,
        h_range[0],
        h_range[1],
        None if lens is None else lens.data_ptr(),
        h.data_ptr(),
        c.data_ptr(),
        out.data_ptr(),
        batch,
        steps,
        hidden,
    )
    if status != 0:
        raise MemoryError("qrnn_lstm_direction could not allocate its work buffers")
    return out, h, c


def c_kernels_available() -> bool:
    return _library() is not None
