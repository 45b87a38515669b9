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


# ---- the guard fires on floats slipped into real engine paths -------------------------------------------


def _tiny_lm_engine():
    from app.models.lm import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 16, 16, 2, 0.0, True, {"mode": "irnn"})
    with torch.no_grad():
        model.train()(torch.randint(0, 30, (2, 8)))
    return model.eval().export_integer([str(i) for i in range(30)])


def test_guard_fails_when_a_float_is_slipped_into_the_lm_engine(monkeypatch):
    import pytest

    from app.engine import fixed_point
    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    engine = _tiny_lm_engine()
    tokens = torch.randint(0, 30, (2, 5))
    with IntegerOnlyGuard() as guard:
        engine(tokens)  # the real path passes
    assert guard.ops > 0
    real = fixed_point.Requantizer.__call__

    def float_rounding(self, acc):  # the same result through float math: exactly what must be caught
        return torch.round(acc.double() * self.m0 / 2.0**self.shift).long().clamp(self.lo, self.hi)

    monkeypatch.setattr(fixed_point.Requantizer, "__call__", float_rounding)
    with pytest.raises(FloatOperationError), IntegerOnlyGuard():
        engine(tokens)
    monkeypatch.setattr(fixed_point.Requantizer, "__call__", real)
    from app.engine.layers import IntLinear

    monkeypatch.setattr(IntLinear, "from_accumulator", lambda self, acc: (acc * 0.5).long())  # a Python float scalar
    with pytest.raises(FloatOperationError), IntegerOnlyGuard():
        engine(tokens)


def test_guard_refuses_a_registered_op_that_computes_in_float_inside():
    import pytest

    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    lib = torch.library.Library("qrnn_guard_test", "DEF")
    lib.define("hidden_float(Tensor x) -> Tensor")
    lib.impl("hidden_float", lambda x: (x.double() * 1.5).long(), "CPU")  # integer in, integer out, float inside
    x = torch.arange(4)
    assert torch.equal(torch.ops.qrnn_guard_test.hidden_float(x), torch.tensor([0, 1, 3, 4]))
    with pytest.raises(FloatOperationError, match="not a vetted integer kernel"), IntegerOnlyGuard():
        torch.ops.qrnn_guard_test.hidden_float(x)
