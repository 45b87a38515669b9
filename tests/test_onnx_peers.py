"""app.reporting.onnx_peers: the LM as a hand-written ONNX graph equals the torch float model step by step,
quantize_dynamic turns it into ONNX Runtime's int8 LSTM and MatMul, and the float ASR model exported as two
graphs (encoder, decoder step) equals AttentionASR (the peers of python -m app.bench)."""

import numpy as np
import pytest
import torch

from app.models.asr import build_asr
from app.models.lm import LSTMLanguageModel
from app.reporting import onnx_peers
from app.reporting.bench import PlainLM

VOCAB, HIDDEN = 50, 16


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    plain = PlainLM(LSTMLanguageModel(VOCAB, HIDDEN, HIDDEN, 2, 0.0, True, {"mode": "float"})).eval()
    return plain, onnx_peers.ort_lm_methods(plain, threads=1, workdir=tmp_path_factory.mktemp("onnx"))


def test_onnx_float_lm_steps_token_by_token_like_the_torch_model(lm):
    plain, methods = lm
    tokens = torch.randint(0, VOCAB, (3, 6))
    with torch.no_grad():
        want, (h, c) = plain(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):  # one token at a time, the state carried, as app.bench steps it
        logits, state = methods[onnx_peers.ORT_FLOAT](tokens[:, t : t + 1], state)
        assert logits.shape == (3, 1, VOCAB) and logits.dtype == np.float32
        steps.append(logits)
    assert np.abs(np.concatenate(steps, 1) - want.numpy()).max() < 1e-4
    assert np.abs(state[0] - h.numpy()).max() < 1e-5 and np.abs(state[1] - c.numpy()).max() < 1e-5
    whole, _ = methods[onnx_peers.ORT_FLOAT](tokens.numpy(), None)  # the time axis is dynamic too
    assert np.abs(whole - want.numpy()).max() < 1e-4


def test_quantize_dynamic_gives_int8_lstm_and_matmul_in_a_smaller_model(lm, tmp_path):
    plain, methods = lm
    float_lm, int8_lm = methods[onnx_peers.ORT_FLOAT], methods[onnx_peers.ORT_INT8]
    saved = onnx_peers.op_types(int8_lm)
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= set(saved) and not {"LSTM", "MatMul"} & set(saved)
    assert "DynamicQuantizeMatMul" in onnx_peers.op_types(int8_lm, optimized=True)  # the session's fusion
    assert int8_lm.path.stat().st_size < float_lm.path.stat().st_size / 2
    tokens = torch.randint(0, VOCAB, (3, 1))
    with torch.no_grad():
        want, _ = plain(tokens)
    logits, (h, c) = int8_lm(tokens, None)
    assert logits.shape == (3, 1, VOCAB) and h.shape == c.shape == (2, 3, HIDDEN)
    assert np.abs(logits - want.numpy()).max() < 0.1  # close, not equal: int8 weights and activations
    again = onnx_peers.ort_lm_methods(plain, threads=2, workdir=float_lm.path.parent)  # another thread count
    assert again[onnx_peers.ORT_INT8].path == int8_lm.path  # quantized once per model


ASR_PRESET = {
    "name": "test",
    "asr": dict(
        conv_layers=2,
        conv_channels=8,
        encoder_hidden=6,
        encoder_layers=2,
        decoder_embed=5,
        decoder_hidden=7,
        decoder_layers=2,
        attention_dim=4,
        dropout=0.1,
        residual=True,
        ctc=True,
    ),
}


def test_onnx_float_asr_encodes_and_decodes_greedily_like_the_torch_model(tmp_path):
    torch.manual_seed(0)
    model = build_asr(ASR_PRESET, {"name": "float", "mode": "float"}, 10, 20).eval()
    asr = onnx_peers.OrtASR(*onnx_peers.asr_onnx_files(model, tmp_path), threads=1)
    assert not model.training  # the export leaves the model's mode as it was
    for feats, lengths in (
        (torch.randn(2, 23, 10), torch.tensor([23, 17])),
        (torch.randn(1, 9, 10), torch.tensor([9])),
    ):
        with torch.no_grad():
            want = model.encode(feats, lengths)
        got = asr.encode(feats, lengths)
        assert np.abs(got.output - want.output.numpy()).max() < 1e-5
        assert np.abs(got.memory.keys_proj - want.memory.keys_proj.numpy()).max() < 1e-5
        assert (got.memory.mask == want.memory.mask.numpy()).all() and (got.lengths == want.lengths.numpy()).all()
        tokens, state, ort_tokens, ort_state = torch.full((len(lengths),), 2), None, np.full(len(lengths), 2), None
        for _ in range(4):  # greedy search, the state carried, as app.bench times it
            with torch.no_grad():
                logits, state = model.decode_step(tokens, state, want.memory)
            ort_logits, ort_state = asr.decode_step(ort_tokens, ort_state, got.memory)
            assert np.abs(ort_logits - logits.numpy()).max() < 1e-4
            tokens, ort_tokens = logits.argmax(-1), ort_logits.argmax(-1)
        assert np.abs(ort_state[0] - torch.cat([h for h, _ in state]).numpy()).max() < 1e-5
    with pytest.raises(ValueError, match="at least 7"):
        asr.encode(torch.randn(1, 6, 10), torch.tensor([6]))
