"""app.onnx_peers: the LM as an ONNX graph equals the torch float model, and quantize_dynamic turns it into
ONNX Runtime's int8 LSTM (the peers of python -m app.bench engine)."""
import numpy as np
import torch

from app import onnx_peers
from app.bench import PlainLM
from app.models.lm import LSTMLanguageModel


def test_onnx_float_lm_steps_like_the_torch_model_and_quantizes_to_int8_lstm(tmp_path):
    torch.manual_seed(0)
    plain = PlainLM(LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "float"})).eval()
    methods = onnx_peers.ort_lm_methods(plain, threads=1, workdir=tmp_path)
    tokens = torch.randint(0, 50, (3, 6))
    with torch.no_grad():
        want, (h, c) = plain(tokens)
    state, steps = None, []
    for t in range(6):  # one token at a time, the state carried, as the benchmark steps it
        logits, state = methods[onnx_peers.ORT_FLOAT](tokens[:, t : t + 1], state)
        steps.append(logits[0])
    assert np.abs(np.stack(steps, 1) - want.numpy()).max() < 1e-4
    assert np.abs(state[0] - h.numpy()).max() < 1e-5 and np.abs(state[1] - c.numpy()).max() < 1e-5
    int8 = methods[onnx_peers.ORT_INT8]
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= set(onnx_peers.op_types(int8))
    assert "LSTM" not in onnx_peers.op_types(int8)
    assert int8.path.stat().st_size < methods[onnx_peers.ORT_FLOAT].path.stat().st_size / 2
    logits, _ = int8(tokens[:, :1], None)
    assert logits.shape == (1, 3, 50) and np.abs(logits[0] - want[:, 0].numpy()).max() < 0.1  # close, not equal
