"""quant.decomposition=false: DenseShift's zero-free codes from one float latent per weight, rounded directly
(no sign-scale decomposition; the baseline the freezing metric compares the decomposition with). Same codes,
alpha, packing and integer engine as the decomposed weights."""

import math

import pytest
import torch

from app.engine.guard import IntegerOnlyGuard
from app.engine.shift import use_shift_kernel
from app.models.lm import LSTMLanguageModel
from app.quant.config import QuantConfig
from app.quant.denseshift import (
    DenseShiftWeight,
    DirectShiftWeight,
    FreezingTracker,
    optimizer_parameter_groups,
    set_decomposition,
    shift_weights,
)
from app.quant.monitor import load_init_weights
from app.quant.quantizers import fixed_point_value
from tests.conftest import compose_config
from tests.test_denseshift_lm import VOCAB, save_lightning_checkpoint
from train import train


def unit_alpha_weight(latent: torch.Tensor, bits: int) -> DirectShiftWeight:
    """A direct weight with alpha = 1 (exact in the engine's fixed point) and the given latents."""
    module = DirectShiftWeight(latent.shape, bits)
    with torch.no_grad():
        module.latent.copy_(latent)
    return module


def direct_lm(mode: str, **quant) -> LSTMLanguageModel:
    return LSTMLanguageModel(
        50, 16, 16, 2, 0.0, True, {"mode": mode, "weight_bits": 3, "decomposition": False, **quant}
    )


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_value_set_has_no_zero_and_exactly_two_to_the_n_levels(bits):
    top = (1 << (bits - 1)) - 1
    magnitudes = torch.tensor([0.0, 1e-9, 0.3, 1.0, *[2.0**p for p in range(top + 1)], 2.0 ** (top + 3), 1e6])
    module = unit_alpha_weight(torch.cat([magnitudes, -magnitudes]).unsqueeze(0), bits)
    expected = {sign * 2**p for sign in (-1, 1) for p in range(top + 1)}
    assert set(module.integer_weight().flatten().tolist()) == expected
    assert len(expected) == 2**bits and 0 not in expected
    assert set(module().detach().flatten().tolist()) == {float(v) for v in expected}


def test_codes_round_log2_of_latent_over_alpha_and_clamp_to_the_bit_width():
    # 3-bit, alpha = 1: the thresholds between 2^p and 2^(p+1) are 2^(p + 1/2) = 1.414, 2.828, 5.657
    latent = torch.tensor([[0.0, -0.0, 0.01, -1.41, 1.42, 2.82, -2.83, 5.65, 5.66, -1000.0]])
    sign_bit, exponent = unit_alpha_weight(latent, 3).codes()
    assert exponent[0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert sign_bit[0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # 0 and -0 are +1: never zero


def test_gradient_goes_straight_through_to_the_latent_and_alpha_gets_the_codes():
    torch.manual_seed(0)
    module = DirectShiftWeight.from_float(torch.randn(6, 10) * 0.1, 3, "float")
    upstream = torch.randn(6, 10)
    (module() * upstream).sum().backward()
    assert torch.equal(module.latent.grad, upstream)
    code = module.integer_weight().float()
    torch.testing.assert_close(module.alpha.grad, (upstream * code).sum(dim=1))
    assert module.latent_parameters() == [module.latent]
    assert {name for name, _ in module.named_parameters()} == {"latent", "alpha"}


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("init", ["low_variance", "float"])
def test_forward_value_equals_fixed_point_alpha_times_integer_weight_exactly(bits, init):
    torch.manual_seed(bits)
    module = DirectShiftWeight.from_float(torch.randn(12, 5, 3) * 0.07, bits, init)
    expected = fixed_point_value(*module.channel_scale()).reshape(-1, 1, 1) * module.integer_weight().float()
    assert torch.equal(module(), expected)


def test_float_init_takes_the_float_weight_as_latent_and_its_log_nearest_codes():
    torch.manual_seed(0)
    weight = torch.randn(64, 128) * 0.05
    module = DirectShiftWeight.from_float(weight, 3, "float")
    assert torch.equal(module.latent, weight)
    alpha = fixed_point_value(*module.channel_scale()).unsqueeze(1)
    log_distance = (torch.log2(weight.abs() / alpha).unsqueeze(-1) - torch.arange(4.0)).abs()
    assert torch.equal(module.codes()[1], log_distance.argmin(dim=-1))
    assert bool((torch.sign(module().detach()) == torch.sign(weight)).all())
    assert ((module().detach() - weight).norm() / weight.norm()).item() < 0.25


def test_low_variance_init_puts_every_latent_near_its_sign_threshold_and_keeps_each_channel_rms():
    torch.manual_seed(1)
    weight = torch.empty(64, 256).uniform_(-0.1, 0.1)
    module = DirectShiftWeight.from_float(weight, 3, "low_variance")
    assert bool((module.codes()[1] == 0).all())  # |w| = alpha everywhere: far below the first threshold
    relative = module.latent / module.alpha.detach().unsqueeze(1)
    assert relative.std().item() == pytest.approx(1e-3, rel=0.05)
    rms_ratio = module().detach().pow(2).mean(1).sqrt() / weight.pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms_ratio, torch.ones(64), atol=1e-4, rtol=0)


def test_freezing_metric_counts_unchanged_codes_and_sign_flips():
    module = unit_alpha_weight(torch.tensor([[1.0, 2.0, 4.0, 8.0, -1.0, -2.0, -4.0, -8.0]]), 3)
    tracker = FreezingTracker()
    assert tracker.update("w", module.codes()) == {}
    with torch.no_grad():
        module.latent[0, 0] = -1.0  # sign flip only
        module.latent[0, 1] = 4.0  # exponent change only
        module.latent[0, 2] = -1.0  # both
        module.latent[0, 3] = 9.0  # the latent moved, its code (clamped at 8) did not
    assert tracker.update("w", module.codes()) == {"freeze": 5 / 8, "sign_flip": 2 / 8}


# ---- config, model, engine ---------------------------------------------------------------------------------


def test_decomposition_false_is_refused_without_denseshift_weights_and_must_be_a_bool():
    with pytest.raises(ValueError, match="quant.decomposition=false: irnn has no DenseShift weights"):
        QuantConfig(mode="irnn", decomposition=False).validate()
    with pytest.raises(ValueError, match="quant.decomposition='no': use true or false"):
        QuantConfig(mode="denseshift", weight_bits=3, decomposition="no").validate()
    assert QuantConfig(mode="irnn_denseshift", weight_bits=3, decomposition=False).validate()


@pytest.mark.parametrize("mode,allowed", [("denseshift", "2, 3 or 4 bits"), ("irnn_denseshift", "2 or 3 bits")])
@pytest.mark.parametrize("bits", [1, 5])
def test_unsupported_bit_widths_are_one_line_naming_the_mode_and_its_widths(mode, allowed, bits):
    with pytest.raises(ValueError, match=rf"^quant.weight_bits={bits}: {mode} supports {allowed}") as error:
        QuantConfig(mode=mode, weight_bits=bits).validate()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("mode", ["denseshift", "irnn_denseshift"])
def test_lm_with_decomposition_false_has_only_direct_weights_tied_and_every_latent_trains(mode):
    torch.manual_seed(0)
    model = direct_lm(mode)
    weights = shift_weights(model)
    assert len(weights) == 5 and all(type(m) is DirectShiftWeight for m in weights.values())
    assert model.decoder.shift_weight is model.embedding.shift_weight
    logits, _ = model.train()(torch.randint(0, 50, (4, 12)))
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_set_decomposition_keeps_shared_weights_shared_and_converts_back():
    torch.manual_seed(0)
    model = LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "denseshift", "weight_bits": 3})
    effective = model.lstm.shift_weight_hh_l0().detach()
    assert set_decomposition(model, False) == 5  # the tied embedding/decoder weight once
    assert model.decoder.shift_weight is model.embedding.shift_weight
    assert torch.equal(model.lstm.shift_weight_hh_l0.latent, effective)  # init="float" from the effective weight
    assert set_decomposition(model, False) == 0
    assert set_decomposition(model, True) == 5 and type(model.embedding.shift_weight) is DenseShiftWeight


def test_a_model_whose_weights_do_not_follow_quant_decomposition_is_refused_before_training():
    model = direct_lm("denseshift")
    assert len(optimizer_parameter_groups(model)) == 2  # alphas without weight decay
    set_decomposition(model, True)  # as a model that never converted its layers would be
    with pytest.raises(
        ValueError,
        match="quant.decomposition=false, but LSTMLanguageModel's embedding.weight is a "
        "DenseShiftWeight: build the model with .*set_decomposition",
    ):
        optimizer_parameter_groups(model)


def test_integer_engine_matches_qat_bit_exact_and_the_shift_kernel_matches_int8():
    torch.manual_seed(0)
    model = direct_lm("irnn_denseshift", pwl_segments=16)
    with torch.no_grad():
        model.train()(torch.randint(0, 50, (4, 12)))  # calibrates the embedding's range
        tokens = torch.randint(0, 50, (3, 10))
        logits, _ = model.eval()(tokens)
    engine = model.export_integer(VOCAB)
    assert engine.embedding.shift_codes["w_q"].bits == 3
    with IntegerOnlyGuard():
        logits_int, _ = engine(tokens)
        assert use_shift_kernel(engine) == 4
        shifted, _ = engine(tokens)
    assert torch.equal(logits_int.long(), torch.round(logits.double() * 2**engine.logit_frac).long())
    assert torch.equal(shifted, logits_int)


def test_fine_tuning_from_float_derives_latents_and_from_the_other_parametrization_is_one_clear_error(tmp_path):
    torch.manual_seed(0)
    source = LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "float"})
    model = direct_lm("denseshift", init="float")
    load_init_weights(model, save_lightning_checkpoint(source, tmp_path / "float.ckpt"), init="float")
    assert torch.equal(model.lstm.shift_weight_ih_l1.latent, source.lstm.weight_ih_l1)
    decomposed = LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "denseshift", "weight_bits": 3})
    path = save_lightning_checkpoint(decomposed, tmp_path / "decomposed.ckpt")
    with pytest.raises(ValueError, match="holds the other DenseShift parametrization .* quant.decomposition=false"):
        load_init_weights(direct_lm("denseshift"), path)


def test_tiny_lm_run_with_decomposition_false_logs_weight_freezing(ptb_overrides, tmp_path):
    overrides = [*ptb_overrides, "quant=denseshift", "quant.decomposition=false", "trainer.limit_train_batches=2"]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert metrics["quant"] == "denseshift" and math.isfinite(metrics["test_ppl"])
    quant = metrics["quant_metrics"]
    layers = ("embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1")
    assert set(quant) == {f"{k}/{w}" for k in ("freeze", "sign_flip") for w in layers}
    assert all(0.0 <= v <= 1.0 for v in quant.values())
    assert all(quant[f"sign_flip/{w}"] <= 1 - quant[f"freeze/{w}"] + 1e-6 for w in layers)  # 6-digit rounding
    checkpoint = torch.load(metrics["checkpoint"], weights_only=False)
    assert checkpoint["hyper_parameters"]["quant_cfg"]["decomposition"] is False
    assert "model.lstm.shift_weight_hh_l1.latent" in checkpoint["state_dict"]


def test_a_checkpoint_from_before_quant_decomposition_existed_resumes_with_the_default():
    from app.errors import UserInputError
    from app.runs.directory import check_resumable

    old_quant = {
        "name": "denseshift",
        "mode": "denseshift",
        "weight_bits": 3,
        "init": "low_variance",
        "init_from": None,
    }
    checkpoint = {
        "hyper_parameters": {"model_cfg": {"lm": {"hidden_dim": 32}}, "quant_cfg": old_quant, "vocab_sha256": "v"}
    }
    current = {"model": {"lm": {"hidden_dim": 32}}, "vocab_sha256": "v"}
    check_resumable(checkpoint, {**current, "quant": {**old_quant, "decomposition": True}}, "last.ckpt")
    with pytest.raises(UserInputError, match="quant.decomposition=True, this run has quant.decomposition=False"):
        check_resumable(checkpoint, {**current, "quant": {**old_quant, "decomposition": False}}, "last.ckpt")
