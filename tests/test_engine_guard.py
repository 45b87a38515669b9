"""The guard that proves integer-only execution catches floats."""
import pytest
import torch

from app.engine.guard import FloatOperationError, IntegerOnlyGuard


def test_guard_rejects_float_tensor_creation_and_float_ops():
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            torch.ones(3)
    x = torch.arange(4)
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            _ = x * 0.5
    y = torch.ones(2)
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            _ = y + 1


def test_guard_allows_integer_ops():
    with IntegerOnlyGuard() as guard:
        x = torch.arange(10, dtype=torch.int64)
        _ = torch._int_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(3, 2, dtype=torch.int8))
        _ = (x * 3 + 1) >> 1
    assert guard.ops >= 4
