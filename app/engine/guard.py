"""A guard that fails on any floating-point operation the engine could hide: the proof of integer-only.

Three layers, all active inside ``with IntegerOnlyGuard():``
- dispatch: every aten op is checked for floating-point tensors, dtypes and Python float arguments;
- registered ops outside aten: only the vetted C kernels pass, on the CPU, and their Python wrappers run under
  the guard too (a dispatch mode otherwise sees an op as one black box);
- Python numbers: ``float(tensor)`` and ``tensor.numpy()`` are refused, and the integers ``.item()`` /
  ``.tolist()`` hand out refuse any mixing with floats (``n / 2``, ``n * 0.5``, ``float(n)``), as do the
  integers computed from them.
What stays out of its sight is C code (tests/test_native.py checks the C sources and the compiled library for
floating point), ``int(tensor)`` (Python turns what ``__int__`` returns into a plain int) and float arithmetic on
Python numbers that never came out of a tensor.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class FloatOperationError(RuntimeError):
    pass


def _refuse_float(name: str, value: Any) -> None:
    if isinstance(value, (float, complex)):
        raise FloatOperationError(
            f"{value!r} mixed into an integer taken out of a tensor ({name}): the engine must not use floats"
        )


class GuardedInt(int):
    """An integer taken out of a tensor inside the guard: arithmetic with ints gives GuardedInts again, anything
    that would give a float (a float operand, true division, a negative power, ``float()``) raises."""

    def __float__(self) -> float:
        raise FloatOperationError(
            f"float() of the integer {int(self)} taken out of a tensor: the engine must not use floats"
        )

    def __complex__(self) -> complex:
        raise FloatOperationError(f"complex() of the integer {int(self)} taken out of a tensor")

    def __truediv__(self, other: Any) -> Any:
        raise FloatOperationError(
            f"{int(self)} / {other!r}: true division of an integer taken out of a tensor gives a float"
        )

    def __rtruediv__(self, other: Any) -> Any:
        raise FloatOperationError(
            f"{other!r} / {int(self)}: true division by an integer taken out of a tensor gives a float"
        )


def _guarded_binary(name: str):
    def method(self: GuardedInt, other: Any) -> Any:
        _refuse_float(name, other)
        result = getattr(int, name)(self, other)
        _refuse_float(name, result)  # e.g. a negative power
        return GuardedInt(result) if type(result) is int else result

    method.__name__ = name
    return method


for _name in ("add", "sub", "mul", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor"):
    for _side in ("", "r"):
        setattr(GuardedInt, f"__{_side}{_name}__", _guarded_binary(f"__{_side}{_name}__"))


def _guarded_unary(op):
    return lambda self: GuardedInt(op(int(self)))


for _name in ("neg", "pos", "abs"):
    setattr(GuardedInt, f"__{_name}__", _guarded_unary(getattr(operator, _name)))


def _guarded(value: Any) -> Any:
    """``.item()`` / ``.tolist()`` results with every int a GuardedInt (bools stay bools)."""
    if isinstance(value, list):
        return [_guarded(v) for v in value]
    if type(value) is int:
        return GuardedInt(value)
    return value


class _PythonNumberGuard(TorchFunctionMode):
    """The function-level half of the guard: what leaves tensors as Python numbers or numpy arrays."""

    REFUSED = {torch.Tensor.__float__, torch.Tensor.__complex__, torch.Tensor.numpy, torch.Tensor.__array__}
    GUARDED = {torch.Tensor.item, torch.Tensor.tolist}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.REFUSED:
            raise FloatOperationError(
                f"{func.__name__} takes values out of the integer engine's sight (float or numpy math)"
            )
        result = func(*args, **(kwargs or {}))
        return _guarded(result) if func in self.GUARDED else result


class IntegerOnlyGuard(TorchDispatchMode):
    """Raise on every op that takes or produces a floating-point (or complex) tensor or dtype, or takes a Python float.

    Tensor creation counts (``torch.tensor(1.0)`` dispatches an op whose output is float), and so does a Python
    float mixed into an integer op (``torch.full_like(x, 2.5)`` truncates into an integer tensor: refused for its
    argument). ``ops`` counts the integer ops seen, so a test can also check that the guarded code ran at all.

    A registered op outside aten is a black box to a dispatch mode: its inside could compute in float with
    integer inputs and outputs. So only the vetted ones pass (``INTEGER_KERNELS``: the C kernels on the CPU,
    whose sources and compiled code tests/test_native.py checks for floating point), and their Python wrappers
    run under this guard (their aten ops are checked like any other); any other registered op, and a vetted op
    off the CPU (its CUDA form is a float64 GEMM), is refused.
    """

    INTEGER_KERNELS = frozenset({"qrnn::int8_gemm_nt", "qrnn::tiled_matmul"})

    def __init__(self):
        super().__init__()
        self.ops = 0
        self._numbers = _PythonNumberGuard()

    def __enter__(self) -> IntegerOnlyGuard:
        super().__enter__()
        self._numbers.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._numbers.__exit__(*exc)
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            self._check(func, leaf, "input")
        if func.namespace not in ("aten", "prim", "prims"):
            out = self._vetted_kernel(func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            self._check(func, leaf, "output")
        self.ops += 1
        return out

    def _vetted_kernel(self, func, args, kwargs):
        """A vetted registered op on the CPU, its Python wrapper run with this guard active again."""
        name = func._schema.name
        if name not in self.INTEGER_KERNELS:
            raise FloatOperationError(f"{name} is not a vetted integer kernel: the guard cannot see inside it")
        if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tree_leaves((args, kwargs))):
            raise FloatOperationError(f"{name} off the CPU computes through a float64 GEMM")
        TorchDispatchMode.__enter__(self)  # the mode is popped while it handles an op: push it back for the wrapper
        try:
            return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        finally:
            TorchDispatchMode.__exit__(self, None, None, None)

    @staticmethod
    def _check(func, leaf, where: str) -> None:
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            raise FloatOperationError(f"{func} has a {leaf.dtype} {where}: the integer engine must not use floats")
        if isinstance(leaf, torch.dtype) and (leaf.is_floating_point or leaf.is_complex):
            raise FloatOperationError(f"{func} was asked for dtype {leaf}: the integer engine must not use floats")
        if isinstance(leaf, (float, complex)):
            raise FloatOperationError(
                f"{func} was given the Python number {leaf!r}: the integer engine must not use floats"
            )
