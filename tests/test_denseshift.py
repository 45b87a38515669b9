"""DenseShift weights: zero-free power-of-two codes, the official surrogate gradient, exact forward values,
initialisation and the weight-freezing metric (docs/methods.md sections 5.2 and 5.6)."""

import itertools
import math

import pytest
import torch

from app.quant.denseshift import DenseShiftWeight, FreezingTracker
from app.quant.quantizers import fixed_point_value


def all_codes_module(bits: int) -> DenseShiftWeight:
    """One output channel holding every (sign, gate pattern) combination, alpha = 1."""
    levels = (1 << (bits - 1)) - 1
    patterns = list(itertools.product((-1.0, 1.0), repeat=levels))
    count = 2 * len(patterns)
    module = DenseShiftWeight((1, count), bits)
    with torch.no_grad():
        for i, (sign, pattern) in enumerate(itertools.product((-1.0, 1.0), patterns)):
            module.sign[0, i] = sign
            module.gates[:, 0, i] = torch.tensor(pattern)
    return module


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_value_set_has_no_zero_and_exactly_two_to_the_n_levels(bits):
    module = all_codes_module(bits)
    top = (1 << (bits - 1)) - 1
    expected = {sign * 2**p for sign in (-1, 1) for p in range(top + 1)}
    assert set(module.integer_weight().flatten().tolist()) == expected
    assert len(expected) == 2**bits and 0 not in expected
    assert set(module().detach().flatten().tolist()) == {float(v) for v in expected}  # alpha = 1 exactly


def test_three_bit_values_are_plus_minus_one_two_four_eight():
    assert set(all_codes_module(3).integer_weight().flatten().tolist()) == {-8, -4, -2, -1, 1, 2, 4, 8}


def test_exponent_is_the_thermometer_of_the_gates_from_the_top():
    # 3-bit, gates (b1, b2, b3): b3 gates |w| >= 2, b2 gates >= 4, b1 gates 8 (docs/methods.md section 5.2)
    module = DenseShiftWeight((1, 5), 3)
    patterns = [(1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1), (0, 0, 0)]
    with torch.no_grad():
        module.sign.fill_(1.0)
        for i, pattern in enumerate(patterns):
            module.gates[:, 0, i] = torch.tensor(pattern, dtype=torch.float32) - 0.5
    assert module.integer_weight()[0].tolist() == [1, 2, 4, 8, 1]


def test_zero_sign_latent_means_plus_one():
    module = DenseShiftWeight((1, 1), 2)  # latents all exactly 0: sign +1, gate off
    assert module.integer_weight().item() == 1
    assert module.codes()[0].item() == 0


def test_surrogate_gradient_matches_the_official_formula_on_a_hand_example():
    # 3-bit, all gates on (S = 3), s = +1, alpha = 0.5 (exact in fixed point), dL/dW = 1:
    # dsign = a sqrt(4) = 1; dS = a / (2 sqrt(4)) = 1/8; dt3 = dS ((b1+1) b2 + 1) = 3/8;
    # dt2 = dS (b1+1) b3 = 2/8; dt1 = dS b2 b3 = 1/8; dalpha = s 2^S = 8.
    module = DenseShiftWeight((1, 1), 3)
    with torch.no_grad():
        module.sign.fill_(0.3)
        module.gates.fill_(0.2)
        module.alpha.fill_(0.5)
    weight = module()
    assert weight.item() == 4.0
    weight.sum().backward()
    assert module.sign.grad.item() == pytest.approx(1.0)
    assert module.gates.grad.flatten().tolist() == pytest.approx([1 / 8, 2 / 8, 3 / 8])
    assert module.alpha.grad.item() == pytest.approx(8.0)


def test_gradient_reaches_the_sign_and_every_gate_when_all_gates_are_on():
    for bits in (2, 3, 4):
        module = DenseShiftWeight.from_shape((4, 6), bits)
        with torch.no_grad():
            module.gates.abs_()  # every gate on: the top exponent everywhere
        assert bool((module.codes()[1] == module.levels).all())
        (module() * torch.randn(4, 6)).sum().backward()
        assert bool((module.sign.grad != 0).all())
        assert bool((module.gates.grad != 0).all())
        assert bool((module.alpha.grad != 0).all())


def test_a_lower_gate_gets_gradient_only_when_every_gate_above_it_is_on():
    # 3-bit gates (t1, t2, t3): pattern (on, off, on) gives S = 1; t1 sits under the off gate t2.
    module = DenseShiftWeight((1, 1), 3)
    with torch.no_grad():
        module.sign.fill_(-0.1)
        module.gates[:, 0, 0] = torch.tensor([0.1, -0.1, 0.1])
    module().sum().backward()
    grad_t1, grad_t2, grad_t3 = module.gates.grad.flatten().tolist()
    d_exponent = -1 / (2 * math.sqrt(2))  # s / (2 sqrt(S + 1)), alpha = 1
    assert grad_t1 == 0.0
    assert grad_t2 == pytest.approx(d_exponent * (1 + 1) * 1)  # (b1 + 1) b3
    assert grad_t3 == pytest.approx(d_exponent * ((1 + 1) * 0 + 1))  # (b1 + 1) b2 + 1
    assert module.sign.grad.item() == pytest.approx(math.sqrt(2))


def test_surrogate_gradient_matches_the_closed_form_on_random_latents():
    torch.manual_seed(0)
    module = DenseShiftWeight.from_shape((8, 16), 3)
    upstream = torch.randn(8, 16)
    (module() * upstream).sum().backward()
    b1, b2, b3 = (module.gates.detach() > 0).float()
    exponent = (((b1 + 1) * b2) + 1) * b3
    s = torch.where(module.sign.detach() >= 0, 1.0, -1.0)
    alpha = fixed_point_value(*module.channel_scale()).unsqueeze(1)
    g = upstream * alpha
    d_exponent = g * s / (2 * torch.sqrt(exponent + 1))
    torch.testing.assert_close(module.sign.grad, g * torch.sqrt(exponent + 1))
    torch.testing.assert_close(module.gates.grad[2], d_exponent * ((b1 + 1) * b2 + 1))
    torch.testing.assert_close(module.gates.grad[1], d_exponent * (b1 + 1) * b3)
    torch.testing.assert_close(module.gates.grad[0], d_exponent * b2 * b3)
    torch.testing.assert_close(module.alpha.grad, (upstream * s * 2**exponent).sum(dim=1))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("init", ["low_variance", "float"])
def test_forward_value_equals_fixed_point_alpha_times_integer_weight_exactly(bits, init):
    torch.manual_seed(bits)
    module = DenseShiftWeight.from_float(torch.randn(12, 5, 3) * 0.07, bits, init)
    m0, exp = module.channel_scale()
    assert bool(((m0 >= 2**14) & (m0 < 2**15)).all())
    expected = fixed_point_value(m0, exp).reshape(-1, 1, 1) * module.integer_weight().float()
    assert torch.equal(module(), expected)


def test_low_variance_init_draws_every_latent_from_n_0_1e_minus_3_and_keeps_each_channel_rms():
    torch.manual_seed(1)
    weight = torch.empty(64, 256).uniform_(-0.1, 0.1)
    module = DenseShiftWeight.from_float(weight, 3, "low_variance")
    assert module.sign.std().item() == pytest.approx(1e-3, rel=0.05)
    assert module.gates.std().item() == pytest.approx(1e-3, rel=0.05)
    assert abs(module.gates.mean().item()) < 1e-4
    rms_ratio = module().detach().pow(2).mean(1).sqrt() / weight.pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms_ratio, torch.ones(64), atol=1e-4, rtol=0)  # up to alpha's 16-bit rounding


# measured (seed 0, 256 x 512): normal 0.398 / 0.207 / 0.187, uniform 0.283 / 0.162 / 0.159 for 2 / 3 / 4 bits
FLOAT_INIT_RELATIVE_ERROR = {"normal": {2: 0.42, 3: 0.22, 4: 0.20}, "uniform": {2: 0.30, 3: 0.18, 4: 0.17}}


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_float_init_approximates_the_float_weight(bits, distribution):
    torch.manual_seed(0)
    weight = torch.randn(256, 512) * 0.05 if distribution == "normal" else torch.empty(256, 512).uniform_(-0.05, 0.05)
    module = DenseShiftWeight.from_float(weight, bits, "float")
    approx = module().detach()
    relative_error = ((approx - weight).norm() / weight.norm()).item()
    assert relative_error < FLOAT_INIT_RELATIVE_ERROR[distribution][bits]
    assert bool((torch.sign(approx) == torch.where(weight >= 0, 1.0, -1.0)).all())
    # each code is the nearest power of two of |w| / alpha (linear distance; ties are measure zero here)
    alpha = module.alpha.detach().unsqueeze(1)
    levels = alpha.unsqueeze(-1) * 2.0 ** torch.arange(module.levels + 1)
    nearest = (weight.abs().unsqueeze(-1) - levels).abs().argmin(dim=-1)
    assert torch.equal(module.codes()[1], nearest)


def test_float_init_beats_both_simple_alpha_rules():
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    module = DenseShiftWeight.from_float(weight, 3, "float")
    searched = (module().detach() - weight).norm()
    for alpha in (weight.abs().amax(1, keepdim=True) / 8, weight.abs().mean(1, keepdim=True)):
        ratio = weight.abs() / alpha
        exponent = (ratio > 1.5).float() + (ratio > 3).float() + (ratio > 6).float()
        simple = torch.sign(weight) * alpha * 2**exponent
        assert searched < (simple - weight).norm()


@pytest.mark.parametrize("bits", [1, 5])
def test_unsupported_bit_widths_are_rejected_with_the_config_key_and_allowed_values(bits):
    for build in (lambda: DenseShiftWeight((2, 2), bits), lambda: DenseShiftWeight.from_shape((2, 2), bits)):
        with pytest.raises(ValueError, match=rf"quant.weight_bits={bits}: denseshift supports 2, 3 or 4 bits"):
            build()


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="low_variance, float"):
        DenseShiftWeight.from_float(torch.randn(2, 2), 3, "he")


def test_latent_parameters_are_sign_and_gates_but_not_alpha():
    module = DenseShiftWeight.from_shape((3, 4), 2)
    latents = module.latent_parameters()
    assert len(latents) == 2 and latents[0] is module.sign and latents[1] is module.gates
    assert module.gates.shape == (1, 3, 4)
    assert {name for name, _ in module.named_parameters()} == {"sign", "gates", "alpha"}


def test_freezing_tracker_counts_unchanged_codes_and_sign_flips_on_a_hand_case():
    tracker = FreezingTracker()
    sign = torch.tensor([0, 0, 1, 1, 0, 0, 1, 0], dtype=torch.uint8)
    exponent = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert tracker.update("lstm.w_ih", (sign, exponent)) == {}  # first call only records
    assert tracker.epoch_metrics() == {}
    new_sign = sign.clone()
    new_exponent = exponent.clone()
    new_sign[0] = 1  # sign flip only
    new_exponent[1] = 2  # exponent change only
    new_sign[2], new_exponent[2] = 0, 0  # both
    metrics = tracker.update("lstm.w_ih", (new_sign, new_exponent))
    assert metrics == {"freeze": 5 / 8, "sign_flip": 2 / 8}
    tracker.update("decoder", (torch.zeros(4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)))
    assert tracker.epoch_metrics() == {"freeze/lstm.w_ih": 5 / 8, "sign_flip/lstm.w_ih": 2 / 8}
    assert tracker.epoch_metrics() == {}  # reset after reading
    assert tracker.update("lstm.w_ih", (new_sign, new_exponent)) == {"freeze": 1.0, "sign_flip": 0.0}


def test_freezing_tracker_follows_a_module_across_an_optimizer_step():
    torch.manual_seed(0)
    module = DenseShiftWeight.from_shape((16, 32), 3)
    tracker = FreezingTracker()
    tracker.update("w", module.codes())
    with torch.no_grad():
        module.sign[:8].neg_()  # flips the signs of half the rows (no latent is exactly 0 here)
    metrics = tracker.update("w", module.codes())
    assert metrics == {"freeze": 0.5, "sign_flip": 0.5}
