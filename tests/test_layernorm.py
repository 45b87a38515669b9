"""Integer layer norm against float layer norm."""

import pytest
import torch
import torch.nn.functional as F

from app.engine.layernorm import layer_norm_int
from app.quant.lstm import ln_eps_on_grid

LN_BOUND_LSB = 3  # |integer LN - float LN| in output LSB (Q3.12), stated in the README


@pytest.mark.parametrize("spread", [1, 3, 50, 1000, 20000])
def test_integer_layer_norm_matches_float_within_bound(spread):
    gen = torch.Generator().manual_seed(spread)
    x = torch.randint(-spread, spread + 1, (32, 200), generator=gen) + torch.randint(
        -3000, 3000, (32, 1), generator=gen
    )
    gamma_q = torch.round(torch.rand(200, generator=gen) * 2 * 4096).long()
    beta_q = torch.round(torch.randn(200, generator=gen) * 0.5 * 4096).long()
    y = layer_norm_int(x, gamma_q, beta_q, 12, 12, ln_eps_on_grid(12))
    ref = F.layer_norm(x.double() / 4096, (200,), gamma_q.double() / 4096, beta_q.double() / 4096, 1e-5) * 4096
    assert (y.double() - ref.clamp(-32768, 32767)).abs().max() <= LN_BOUND_LSB


def test_integer_layer_norm_of_a_constant_row_is_beta():
    x = torch.full((2, 16), 1234)
    beta_q = torch.arange(16)
    y = layer_norm_int(x, torch.full((16,), 4096), beta_q, 12, 12, ln_eps_on_grid(12))
    assert torch.equal(y, beta_q.expand(2, 16))
