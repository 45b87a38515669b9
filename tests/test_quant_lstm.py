"""The QAT LSTM computes exactly what the integer engine computes, and trains."""

import pytest
import torch

from app.engine import lstm as engine_lstm
from app.engine.guard import IntegerOnlyGuard
from app.quant.config import QuantConfig
from app.quant.lstm import QuantLSTM


def _inputs(batch=3, steps=9, features=16, frac=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_int = torch.randint(-127, 128, (batch, steps, features), generator=gen)
    return x_int.float() * 2.0**-frac, x_int.to(torch.int8)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_qat_lstm_matches_integer_engine_bit_exact(bidirectional, layer_norm, compiled, monkeypatch):
    """Both engine paths: csrc/int_lstm.c (cells without layer norm) and the torch-op loop."""
    calls = []
    compiled_direction = engine_lstm.kernels.lstm_direction
    monkeypatch.setattr(engine_lstm.kernels, "lstm_direction", lambda *a: calls.append(1) or compiled_direction(*a))
    if not compiled:
        monkeypatch.setattr(engine_lstm, "_compiled_direction_applies", lambda *a: False)
    torch.manual_seed(0)
    quant = QuantConfig(mode="irnn", layer_norm=layer_norm, pwl_segments=16)
    lstm = QuantLSTM(16, 24, num_layers=2, bidirectional=bidirectional, quant=quant).eval()
    x, x_int = _inputs()
    lengths = torch.tensor([9, 6, 2]) if bidirectional else None
    with torch.no_grad():
        y, (h, c) = lstm(x, in_frac=6, lengths=lengths)
    engine = lstm.export(in_frac=6)
    with IntegerOnlyGuard() as guard:
        y_int, (h_int, c_int) = engine(x_int, lengths=lengths)
    assert guard.ops > 10
    assert len(calls) == (2 * (1 + bidirectional) if compiled and not layer_norm else 0)  # layers x directions
    assert y_int.dtype == torch.int8 and c_int.dtype == torch.int16
    assert torch.equal(y_int.long(), torch.round(y * 2**quant.h_frac).long())
    assert torch.equal(h_int.long(), torch.round(h * 2**quant.h_frac).long())
    assert torch.equal(c_int.long(), torch.round(c * 2**quant.cell_frac).long())


def test_bidirectional_directions_share_quantization_formats():
    lstm = QuantLSTM(8, 8, num_layers=2, bidirectional=True, quant=QuantConfig(mode="irnn"))
    engine = lstm.export(in_frac=5)
    assert all(len(layer) == 2 for layer in engine.layers)
    assert engine.formats[0].in_frac == 5 and engine.formats[1].in_frac == engine.formats[0].h_frac
    y, _ = engine(torch.zeros(1, 3, 8, dtype=torch.int8))
    assert y.shape == (1, 3, 16) and y.dtype == torch.int8  # both directions concatenate as integers


def test_qat_lstm_gradients_reach_every_parameter():
    torch.manual_seed(0)
    lstm = QuantLSTM(16, 24, num_layers=2, quant=QuantConfig(mode="irnn", layer_norm=True))
    x, _ = _inputs()
    x.requires_grad_(True)
    y, _ = lstm(x, in_frac=6)
    y.pow(2).sum().backward()
    for name, param in lstm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_qat_lstm_state_dict_is_the_float_lstm_state_dict():
    float_lstm = torch.nn.LSTM(16, 24, 2, batch_first=True)
    qat = QuantLSTM(16, 24, num_layers=2, quant=QuantConfig(mode="irnn"))
    qat.load_state_dict(float_lstm.state_dict())  # strict: same names and shapes


def test_qat_lstm_output_tracks_the_float_lstm():
    torch.manual_seed(0)
    qat = QuantLSTM(16, 32, num_layers=1, quant=QuantConfig(mode="irnn")).eval()
    float_lstm = torch.nn.LSTM(16, 32, 1, batch_first=True)
    float_lstm.load_state_dict(qat.state_dict())
    x, _ = _inputs(steps=20)
    with torch.no_grad():
        y_q, _ = qat(x, in_frac=6)
        y_f, _ = float_lstm(x)
    assert (y_q - y_f).abs().max() < 0.05  # a few int8 steps of h (2^-7)


def test_layer_norm_needs_integer_activations():
    with pytest.raises(ValueError, match="layer_norm"):
        QuantLSTM(4, 4, quant=QuantConfig(mode="float", layer_norm=True))


def test_fused_cell_backward_equals_the_straight_through_graph():
    """The fused cell's hand-written backward == autograd through the STE/PWL-slope graph."""
    from app.engine.lstm import LSTMFormat, cell_step
    from app.quant.activations import lstm_activations
    from app.quant.lstm import _gate_slopes, _gate_values, _IntegerCellFunction
    from app.quant.quantizers import ste

    gen = torch.Generator().manual_seed(3)
    hidden = 8
    fmt = LSTMFormat(in_frac=6, h_frac=7, h_bits=8, cell_frac=11)
    acts = lstm_activations(16, 11, False)
    gates_int = torch.randint(-20000, 20000, (5, 4 * hidden), generator=gen)
    c_int = torch.randint(-8000, 8000, (5, hidden), generator=gen)
    h_int, c_new_int, mid = cell_step(gates_int, c_int, acts.cell, fmt, None)
    upstream_h, upstream_c = torch.randn(5, hidden, generator=gen), torch.randn(5, hidden, generator=gen)

    gates = (gates_int.float() / 2**12).requires_grad_(True)
    c = (c_int.float() / 2**11).requires_grad_(True)
    h_new, c_new = _IntegerCellFunction.apply(gates, c, gates_int, c_new_int, h_int, mid, acts, fmt)
    torch.autograd.backward([h_new, c_new], [upstream_h, upstream_c])
    fused = (gates.grad.clone(), c.grad.clone())

    gates.grad = c.grad = None
    act = ste(gates * _gate_slopes(mid, acts, hidden), _gate_values(mid, hidden, gates.dtype))
    i, f, g, o = act.chunk(4, dim=1)
    c_ref = ste(f * c + i * g, c_new_int.float() / 2**11)
    t = ste(c_ref * acts.tanh_cell_grad.slope(c_new_int), mid["t"].float() / 2**15)
    h_ref = ste(o * t, h_int.float() / 2**7)
    torch.autograd.backward([h_ref, c_ref], [upstream_h, upstream_c])
    assert torch.equal(h_ref, h_new) and torch.equal(c_ref, c_new)
    assert torch.allclose(gates.grad, fused[0], atol=1e-6) and torch.allclose(c.grad, fused[1], atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float_mode_is_nn_lstm_exactly_with_and_without_lengths(bidirectional):
    torch.manual_seed(0)
    lstm = QuantLSTM(8, 12, num_layers=2, bidirectional=bidirectional)
    reference = torch.nn.LSTM(8, 12, 2, batch_first=True, bidirectional=bidirectional)
    reference.load_state_dict(lstm.state_dict())
    x, lengths = torch.randn(3, 7, 8), torch.tensor([7, 3, 5])
    state = (torch.randn(lstm.num_layers * (2 if bidirectional else 1), 3, 12),) * 2
    y, (h, c) = lstm(x, state)
    y_ref, (h_ref, c_ref) = reference(x, state)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y_ref, (h_ref, c_ref) = reference(packed, state)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_ref, batch_first=True, total_length=7)
    y, (h, c) = lstm(x, state, lengths=lengths)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)


def test_observer_calibrates_on_first_use_even_in_eval_mode_and_freezes():
    from app.quant.quantizers import PowerOfTwoObserver

    observer = PowerOfTwoObserver(bits=8, momentum=0.5).eval()
    observer.observe(torch.tensor([0.9, -0.3]))  # e.g. Lightning's sanity validation before any training
    assert observer.frac == 7  # 0.9 * 2^7 = 115 <= 127
    observer.observe(torch.tensor([5.0]))  # eval: no update after the first batch
    assert float(observer.running_max) == pytest.approx(0.9)
    observer.train().observe(torch.tensor([2.9]))
    assert float(observer.running_max) == pytest.approx(1.9) and observer.frac == 6
    observer.frozen.fill_(True)
    observer.observe(torch.tensor([100.0]))
    assert observer.frac == 6


def test_quantile_observer_keeps_a_fine_grid_under_outliers_and_saturates_them():
    from app.quant.quantizers import PowerOfTwoObserver, snap

    x = torch.cat([torch.linspace(0.0, 3.0, 9_990), torch.full((10,), 200.0)])  # 0.1% outliers
    by_max, by_quantile = PowerOfTwoObserver(8, 0.5), PowerOfTwoObserver(8, 0.5, quantile=0.999)
    by_max.observe(x)
    by_quantile.observe(x)
    assert by_max.frac == -1  # 200 -> 2^-(-1) steps: every value below 1 rounds to 0 or 2
    assert float(by_quantile.running_max) == pytest.approx(3.0, abs=1e-3) and by_quantile.frac == 5
    q = snap(x, by_quantile.frac, 8)
    assert q.max() == pytest.approx(127 / 32) and (q[-10:] == q.max()).all()  # the outliers saturate
    by_quantile.count_saturation(torch.round(x * 32).clamp(-128, 127))
    assert by_quantile.pop_saturation_rate() == pytest.approx(10 / 10_000)
    assert (x[:9_990] - q[:9_990]).abs().max() <= 2.0**-6 + 1e-6  # half a step of the finer grid
    with pytest.raises(ValueError, match="observer_quantile=0.5"):
        QuantConfig(mode="irnn", observer_quantile=0.5).validate()


@pytest.mark.parametrize("mode", ["float", "denseshift"])
def test_outputs_only_with_lengths_equal_the_packed_kernel_and_its_gradients(mode):
    """final_state=False runs the fused kernel on the padded batch (per direction, reversed within each
    length): the same outputs and gradients as the packed sequence, zeros past each length."""
    torch.manual_seed(0)
    quant = QuantConfig(mode=mode, weight_bits=3) if mode == "denseshift" else QuantConfig(mode=mode)
    lstm = QuantLSTM(8, 12, num_layers=2, bidirectional=True, quant=quant)
    lengths = torch.tensor([9, 4, 6, 1])
    x = torch.randn(4, 9, 8, requires_grad=True)
    state = tuple(torch.randn(4, 4, 12) for _ in range(2))
    y_packed, _ = lstm(x, state, lengths=lengths)
    (grad_packed,) = torch.autograd.grad((y_packed * torch.linspace(-1, 1, 24)).sum(), x)
    y, none = lstm(x, state, lengths=lengths, final_state=False)
    (grad,) = torch.autograd.grad((y * torch.linspace(-1, 1, 24)).sum(), x)
    assert none is None
    assert torch.allclose(y, y_packed, atol=1e-6) and torch.allclose(grad, grad_packed, atol=1e-6)
    assert (y[1, 4:] == 0).all() and (y[3, 1:] == 0).all() and (grad[3, 1:] == 0).all()
