"""A dispatch-level guard that fails on any floating-point tensor: the proof of integer-only."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class FloatOperationError(RuntimeError):
    pass


class IntegerOnlyGuard(TorchDispatchMode):
    """Raise on every op that takes or produces a floating-point (or complex) tensor.

    Tensor creation counts (``torch.tensor(1.0)`` dispatches an op whose output is float), and so
    does a Python float mixed into an integer op (its result is a float tensor). ``ops`` counts the
    integer ops seen, so a test can also check that the guarded code ran at all.

    A registered op outside aten is a black box to a dispatch mode: its inside could compute in float with
    integer inputs and outputs. So only the vetted ones pass (``INTEGER_KERNELS``: the C kernels on the CPU,
    whose sources and compiled code tests/test_native.py checks for floating point); any other, and a vetted
    op on a GPU (its CUDA form is a float64 GEMM), is refused. What the guard cannot see is Python float
    arithmetic on numbers taken out of tensors (``.item()``): no engine code does that (review), and the
    same integers from the C runtime (tests/test_native.py) cross-check the torch-op path.
    """

    INTEGER_KERNELS = frozenset({"qrnn::int8_gemm_nt", "qrnn::tiled_matmul"})

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            self._check(func, leaf, "input")
        if func.namespace not in ("aten", "prim", "prims"):
            name = func._schema.name
            if name not in self.INTEGER_KERNELS:
                raise FloatOperationError(f"{name} is not a vetted integer kernel: the guard cannot see inside it")
            if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tree_leaves((args, kwargs))):
                raise FloatOperationError(f"{name} off the CPU computes through a float64 GEMM")
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            self._check(func, leaf, "output")
        self.ops += 1
        return out

    @staticmethod
    def _check(func, leaf, where: str) -> None:
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            raise FloatOperationError(f"{func} has a {leaf.dtype} {where}: the integer engine must not use floats")
        if isinstance(leaf, torch.dtype) and (leaf.is_floating_point or leaf.is_complex):
            raise FloatOperationError(f"{func} was asked for dtype {leaf}: the integer engine must not use floats")
