"""Integer attention: softmax rows, masks, and QAT == engine."""

import torch

from app.engine.attention import softmax_int
from app.engine.guard import IntegerOnlyGuard
from app.engine.pwl import LookupActivation
from app.quant.activations import attention_activations
from app.quant.attention import QuantAdditiveAttention
from app.quant.config import QuantConfig


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys_int = torch.randint(-127, 128, (3, 11, 24), generator=gen)
    query_int = torch.randint(-127, 128, (3, 16), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 2:] = False
    return keys_int, query_int, mask


def test_integer_softmax_rows_sum_to_one_within_half_an_lsb_per_element():
    _, exp, _ = attention_activations(32)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(-20000, 20000, (64, 50), generator=gen)
    mask = torch.rand(64, 50, generator=gen) > 0.3
    mask[:, 0] = True
    probs = softmax_int(scores, mask, LookupActivation(exp))
    sums = probs.sum(-1)
    assert (sums - 2**15).abs().max() <= mask.sum(-1).max() // 2  # each p is rounded once
    assert bool((probs[~mask] == 0).all())
    reference = torch.softmax(scores.double().masked_fill(~mask, float("-inf")) / 2**10, -1)
    assert (
        probs.double() / 2**15 - reference
    ).abs().max() < 0.006  # 32-piece exp: ~14 LSB of Q0.15 before normalisation


def test_qat_attention_matches_integer_engine_and_respects_padding():
    torch.manual_seed(0)
    attention = QuantAdditiveAttention(16, 24, 20, QuantConfig(mode="irnn", pwl_segments=16)).eval()
    keys_int, query_int, mask = _batch()
    memory = attention.precompute(keys_int.float() / 128, key_frac=7, mask=mask)
    context, probs = attention(query_int.float() / 128, memory, query_frac=7)
    engine = attention.export(query_frac=7, key_frac=7)
    with IntegerOnlyGuard():
        keys_q = keys_int.to(torch.int8)
        context_int, probs_int = engine(query_int.to(torch.int8), keys_q, engine.project_keys(keys_q), mask)
    assert torch.equal(context_int.long(), torch.round(context * 128).long())
    assert torch.equal(probs_int, torch.round(probs * 2**15).long())
    assert bool((probs[~mask] == 0).all())


def test_qat_attention_gradients_flow_to_weights_and_keys():
    attention = QuantAdditiveAttention(16, 24, 20, QuantConfig(mode="irnn"))
    keys_int, query_int, mask = _batch()
    keys = (keys_int.float() / 128).requires_grad_(True)
    memory = attention.precompute(keys, key_frac=7, mask=mask)
    context, _ = attention(query_int.float() / 128, memory, query_frac=7)
    context.pow(2).sum().backward()
    assert keys.grad.abs().sum() > 0
    for name, param in attention.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_float_attention_is_a_masked_softmax():
    attention = QuantAdditiveAttention(16, 24, 20)
    keys_int, query_int, mask = _batch()
    memory = attention.precompute(keys_int.float(), mask=mask)
    _, probs = attention(query_int.float(), memory)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    assert bool((probs[~mask] == 0).all())
