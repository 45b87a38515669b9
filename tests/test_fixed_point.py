"""Fixed-point primitives: the rounding and saturation the QAT simulation and the engine share."""

import math
from fractions import Fraction

import pytest
import torch

from app.engine.fixed_point import isqrt, requantize, rounding_right_shift, shift_round
from app.quant.quantizers import fixed_point_scale, round_half_up


def test_rounding_right_shift_rounds_half_up_on_both_signs():
    x = torch.tensor([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6])
    expected = torch.tensor([math.floor(v / 4 + 0.5) for v in x.tolist()])
    assert torch.equal(rounding_right_shift(x, 2), expected)
    assert torch.equal(rounding_right_shift(x, torch.full_like(x, 2)), expected)


def test_float_round_half_up_equals_integer_shift_on_exact_values():
    x = torch.arange(-4096, 4096)
    assert torch.equal(round_half_up(x.double() / 16).long(), rounding_right_shift(x, 4))


def test_requantize_is_the_exactly_rounded_product_with_the_fixed_point_multiplier_and_saturates():
    torch.manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (1000, 4))
    real = torch.tensor([0.001, 0.0123, 0.2, 0.75])
    m0, exp = fixed_point_scale(real)
    assert bool(((m0 >= 2**14) & (m0 < 2**15)).all())
    y = requantize(acc, m0, exp, -128, 127)
    for row, out in zip(acc.tolist(), y.tolist()):  # the rational value acc * m0 / 2^exp, rounded half up
        for a, m, e, got in zip(row, m0.tolist(), exp.tolist(), out):
            assert got == min(127, max(-128, math.floor(Fraction(a * m, 2**e) + Fraction(1, 2)))), (a, m, e)
    assert int(y.max()) == 127 and int(y.min()) == -128
    ties = torch.arange(-7, 8)  # m0 / 2^exp = 1/2: every odd accumulator is a tie, rounded up on both signs
    assert requantize(ties, torch.tensor([2**14]), torch.tensor([15]), -128, 127).tolist() == [
        (a + 1) // 2 for a in range(-7, 8)
    ]


def test_requantize_rejects_a_non_positive_shift():
    with pytest.raises(ValueError, match="shift"):
        requantize(torch.tensor([5]), torch.tensor([20000]), torch.tensor([0]), -128, 127)


def test_fixed_point_scale_is_within_half_a_multiplier_step():
    scales = torch.logspace(-6, 2, 200, dtype=torch.float64)
    m0, exp = fixed_point_scale(scales)
    approx = m0.double() * torch.pow(2.0, -exp.double())
    assert ((approx - scales).abs() / scales).max() <= 2.0**-15


def test_shift_round_left_shift_is_exact():
    x = torch.tensor([-3, 0, 7])
    assert torch.equal(shift_round(x, -2), x * 4)


def test_integer_square_root_is_exact_on_a_sweep():
    small = torch.arange(0, 200_000)
    big = torch.randint(0, 2**62, (20_000,), generator=torch.Generator().manual_seed(1))
    squares = torch.arange(0, 3_000_000_000, 7_919_999).pow(2)
    for n in (small, big, squares, squares - 1, squares + 1):
        n = n.clamp_min(0)
        r = isqrt(n)
        assert bool(((r * r) <= n).all()), "root too large"
        assert bool((((r + 1) * (r + 1)) > n).all()), "root too small"


def test_quantized_residual_add_aligns_grids_rounds_and_saturates():
    from app.engine.layers import residual_add

    a = torch.tensor([100, -128, 127])  # Q0.7
    b = torch.tensor([10, -40, 127])  # Q1.6
    y = residual_add(a, 7, b, 6, out_frac=6, out_bits=8)
    expected = torch.tensor([math.floor((100 + 20) / 2 + 0.5), math.floor((-128 - 80) / 2 + 0.5), 127])
    assert torch.equal(y, expected)
