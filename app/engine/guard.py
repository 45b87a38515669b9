"""A dispatch-level guard that fails on any floating-point tensor: the proof of integer-only."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class FloatOperationError(RuntimeError):
    pass


class IntegerOnlyGuard(TorchDispatchMode):
    """Raise on every aten op that takes or produces a floating-point (or complex) tensor.

    Tensor creation counts (``torch.tensor(1.0)`` dispatches an op whose output is float), and so
    does a Python float mixed into an integer op (its result is a float tensor). ``ops`` counts the
    integer ops seen, so a test can also check that the guarded code ran at all.
    """

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            self._check(func, leaf, "input")
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
