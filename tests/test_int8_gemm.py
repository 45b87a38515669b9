"""The compiled int8 GEMM: exact, integer-only, and seen by the integer-only guard."""

import re
from pathlib import Path

import pytest
import torch

from app.engine import kernels
from app.engine.guard import IntegerOnlyGuard


@pytest.mark.parametrize("m,k,n", [(1, 200, 800), (20, 37, 9), (3, 16, 4), (7, 650, 2601), (1, 1, 1)])
def test_compiled_int8_gemm_equals_int_mm_exactly(m, k, n):
    assert kernels.c_kernels_available(), "a C compiler (cc) is needed to build app/engine/csrc/int8_gemm.c"
    gen = torch.Generator().manual_seed(m * 1000 + k)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    with IntegerOnlyGuard() as guard:
        y = kernels.int8_gemm_nt(x, w)
    assert guard.ops >= 1 and y.dtype == torch.int32
    assert torch.equal(y, torch._int_mm(x, w.t()))


@pytest.mark.parametrize("name", ["int8_gemm.c", "int_lstm.c"])
def test_kernel_source_has_no_floating_point_type(name):
    source = (Path(kernels.__file__).parent / "csrc" / name).read_text()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    assert not re.search(r"\b(float|double|_Float\d+|__m256[^i]|__m128[^i])\b", code)


def test_kernel_rejects_non_int8_inputs():
    with pytest.raises(TypeError, match="int8"):
        kernels.int8_gemm_nt(torch.zeros(2, 2, dtype=torch.int16), torch.zeros(2, 2, dtype=torch.int8))


def test_gpu_form_of_the_int8_gemm_is_exact_at_the_extremes():
    """QAT on a GPU runs the op's float64 form: every int8 product and sum below 2^53 stays exact, even where
    all K products are the largest (-128 * -128) and float32 would already round (K = 2048: 2^25)."""
    gen = torch.Generator().manual_seed(7)
    k = 2048
    x = torch.randint(-128, 128, (5, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (6, k), dtype=torch.int8, generator=gen)
    x[0], w[0] = -128, -128  # y[0, 0] = 2048 * 16384 = 2^25
    y = kernels._int8_gemm_nt_float64(x, w)
    assert y.dtype == torch.int32 and int(y[0, 0]) == 1 << 25
    assert torch.equal(y, torch._int_mm(x, w.t()))
