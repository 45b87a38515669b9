"""A compiled int8 GEMM for CPUs where ``torch._int_mm`` has no fast path.

On CPUs without AVX-512 VNNI (this project's 2-core AVX2 machines), torch's ``_int_mm`` runs a
reference loop that is 10-100x slower than a float GEMM (measured: README "Engine speed"). The engine
then uses ``csrc/int8_gemm.c``: plain C, integer-only, compiled once with the system C compiler
(``cc -O3 -march=native -fopenmp``) into a per-user cache and registered as the torch operator
``qrnn::int8_gemm_nt``, so dispatch-level guards still see an op with integer inputs and outputs.
Without a C compiler the engine falls back to ``torch._int_mm`` (same integers, slower) and says so.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

_SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("int8_gemm.c", "int_lstm.c"))


def _cache_dir() -> Path:
    root = os.environ.get("QRNN_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "qrnn-speech"
    )
    return Path(root)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("QRNN_DISABLE_C_KERNELS") == "1":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    source = b"".join(path.read_bytes() for path in _SOURCES)
    digest = hashlib.sha256(source + os.uname().machine.encode()).hexdigest()[:16]
    target = _cache_dir() / f"qrnn_kernels-{digest}.so"
    if not target.exists():
        if compiler is None:
            warnings.warn("no C compiler found: the integer engine uses torch._int_mm (slow on CPUs without VNNI)")
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
        os.close(fd)
        cmd = [compiler, "-O3", "-march=native", "-shared", "-fPIC", *map(str, _SOURCES), "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp)
            names = ", ".join(path.name for path in _SOURCES)
            warnings.warn(f"compiling {names} failed ({result.stderr.strip()[:200]}): using torch ops (slower)")
            return None
        os.replace(tmp, target)  # atomic: concurrent builders never see a half-written library
    lib = ctypes.CDLL(str(target))
    lib.qrnn_int8_gemm_nt.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    lib.qrnn_int8_gemm_nt.restype = None
    lib.qrnn_lstm_direction.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + \
        [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    lib.qrnn_lstm_direction.restype = ctypes.c_int
    return lib


def _int8_gemm_nt_cpu(x: Tensor, w: Tensor) -> Tensor:
    x = x.contiguous()
    w = w.contiguous()
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.int32)
    _library().qrnn_int8_gemm_nt(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], w.shape[0], x.shape[1], 1)
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


def int8_gemm_nt(x: Tensor, w: Tensor) -> Tensor:
    """x (M, K) int8 @ w (N, K) int8 transposed -> (M, N) int32, exact."""
    if x.dtype != torch.int8 or w.dtype != torch.int8:
        raise TypeError(f"int8_gemm_nt takes int8 tensors, got {x.dtype} and {w.dtype}")
    return torch.ops.qrnn.int8_gemm_nt.default(x, w)


def lstm_direction(
    x_proj: Tensor, w_hh: Tensor, m0: Tensor, shift: Tensor, req_range: tuple[int, int], luts: tuple[Tensor, Tensor, Tensor],
    lut_min: int, ig_shift: int, h_shift: int, h_range: tuple[int, int], h0: Tensor, c0: Tensor, lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``csrc/int_lstm.c``: a whole direction of the integer LSTM without layer norm (see its header).

    x_proj (B, T, 4H) int64, w_hh (4H, H) int8, m0 / shift (4H,) int64, luts (sigmoid, tanh gate, tanh cell)
    int64 tables over [lut_min, lut_min + len), h0 / c0 (B, H). Returns outputs (B, T, H), h_T, c_T, int64.
    """
    batch, steps, gates = x_proj.shape
    hidden = gates // 4
    x_proj, w_hh, m0, shift = (t.contiguous() for t in (x_proj, w_hh, m0, shift))
    luts = tuple(t.contiguous() for t in luts)
    h = h0.to(torch.int64).contiguous().clone()
    c = c0.to(torch.int64).contiguous().clone()
    out = torch.empty(batch, steps, hidden, dtype=torch.int64)
    lens = None if lengths is None else lengths.to(torch.int64).contiguous()
    status = _library().qrnn_lstm_direction(
        x_proj.data_ptr(), w_hh.data_ptr(), m0.data_ptr(), shift.data_ptr(), req_range[0], req_range[1],
        luts[0].data_ptr(), luts[1].data_ptr(), luts[2].data_ptr(), lut_min, ig_shift, h_shift, h_range[0], h_range[1],
        None if lens is None else lens.data_ptr(), h.data_ptr(), c.data_ptr(), out.data_ptr(), batch, steps, hidden,
    )
    if status != 0:
        raise MemoryError("qrnn_lstm_direction could not allocate its work buffers")
    return out, h, c


def c_kernels_available() -> bool:
    return _library() is not None
