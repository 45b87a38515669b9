"""ONNX Runtime peers for ``python -m app.bench``: the same float LSTM LM as an ONNX graph, in float and as
``onnxruntime.quantization.quantize_dynamic`` makes it (int8 ``DynamicQuantizeLSTM`` and ``MatMulInteger``),
the runtimes a user would pick to deploy an LSTM on a CPU.

The graph is written with ``onnx.helper`` from the torch weights (no exporter needed): token ids (T, B) int64
-> Gather (embedding) -> one ONNX ``LSTM`` node per layer (gates reordered from PyTorch's i, f, g, o to ONNX's
i, o, f, c; both biases) -> MatMul + Add (the full-vocabulary logits). The recurrent state is a graph input
and output, so a caller steps it token by token as it steps our engine. Needs the bench extra
(``pip install -e '.[bench]'``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ORT_FLOAT, ORT_INT8 = "ONNX Runtime float", "ONNX Runtime int8"
OPSET = 17


def _import():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"{exc.name} is not installed: pip install -e '.[bench]'") from None
    return onnx, onnxruntime


def _onnx_gates(w: Tensor) -> np.ndarray:
    """PyTorch's gate blocks (i, f, g, o) along dim 0 -> ONNX's (i, o, f, c)."""
    i, f, g, o = w.detach().float().chunk(4, dim=0)
    return torch.cat([i, o, f, g], dim=0).numpy()


def lm_onnx_model(plain: nn.Module):
    """``app.bench.PlainLM`` (nn.Embedding, nn.LSTM batch_first, nn.Linear) as an ONNX model.

    Inputs: tokens (T, B) int64, h0 and c0 (L, B, H) float32. Outputs: logits (T, B, V), h_n, c_n (L, B, H).
    """
    onnx, _ = _import()
    from onnx import TensorProto, helper, numpy_helper

    lstm: nn.LSTM = plain.lstm
    layers, hidden = lstm.num_layers, lstm.hidden_size
    init = [numpy_helper.from_array(plain.embedding.weight.detach().float().numpy(), "embedding")]
    init.append(numpy_helper.from_array(plain.decoder.weight.detach().float().t().contiguous().numpy(), "decoder_w"))
    init.append(numpy_helper.from_array(plain.decoder.bias.detach().float().numpy(), "decoder_b"))
    nodes = [helper.make_node("Gather", ["embedding", "tokens"], ["x0"])]  # (T, B, E)
    h_outs, c_outs = [], []
    for layer in range(layers):
        w = _onnx_gates(getattr(lstm, f"weight_ih_l{layer}"))[None]
        r = _onnx_gates(getattr(lstm, f"weight_hh_l{layer}"))[None]
        b = np.concatenate([_onnx_gates(getattr(lstm, f"bias_ih_l{layer}")), _onnx_gates(getattr(lstm, f"bias_hh_l{layer}"))])[None]
        init += [numpy_helper.from_array(w, f"W{layer}"), numpy_helper.from_array(r, f"R{layer}"),
                 numpy_helper.from_array(b, f"B{layer}"),
                 numpy_helper.from_array(np.array([layer], dtype=np.int64), f"index{layer}"),
                 numpy_helper.from_array(np.array([layer + 1], dtype=np.int64), f"index_end{layer}")]  # fmt: skip
        nodes += [
            helper.make_node("Slice", ["h0", f"index{layer}", f"index_end{layer}"], [f"h0_{layer}"]),
            helper.make_node("Slice", ["c0", f"index{layer}", f"index_end{layer}"], [f"c0_{layer}"]),
            helper.make_node(
                "LSTM", [f"x{layer}", f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}", f"c0_{layer}"],
                [f"y{layer}", f"h_last{layer}", f"c_last{layer}"], hidden_size=hidden,
            ),
            helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]),  # (T, 1, B, H) -> (T, B, H)
        ]
        h_outs.append(f"h_last{layer}")
        c_outs.append(f"c_last{layer}")
    init.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes += [
        helper.make_node("MatMul", [f"x{layers}", "decoder_w"], ["scores"]),
        helper.make_node("Add", ["scores", "decoder_b"], ["logits"]),
        helper.make_node("Concat", h_outs, ["h_n"], axis=0),
        helper.make_node("Concat", c_outs, ["c_n"], axis=0),
    ]
    vocab = plain.decoder.weight.shape[0]
    graph = helper.make_graph(
        nodes, "qrnn_lstm_lm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", "B"]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [layers, "B", hidden]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [layers, "B", hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", "B", vocab]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [layers, "B", hidden]),
         helper.make_tensor_value_info("c_n", TensorProto.FLOAT, [layers, "B", hidden])],
        init,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def quantize_int8(path_in: Path, path_out: Path) -> None:
    """``quantize_dynamic`` with int8 weights: LSTM -> DynamicQuantizeLSTM, MatMul -> MatMulInteger."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process graphs is for vision models
    try:
        quantize_dynamic(str(path_in), str(path_out), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)


def op_types(model: "OrtLM") -> list[str]:
    """The sorted node types of the model an OrtLM runs."""
    onnx, _ = _import()
    return sorted({node.op_type for node in onnx.load(str(model.path)).graph.node})


class OrtLM:
    """An ONNX Runtime session of the LM, called as ``model(tokens (B, T) int64, state) -> (logits (B, T, V), state)``
    like the torch models of app.bench (state None: zeros; state: (h, c) float32 numpy arrays (L, B, H))."""

    def __init__(self, path: Path, threads: int, layers: int, hidden: int):
        _, ort = _import()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.threads, self.layers, self.hidden = Path(path), threads, layers, hidden
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, tokens: Tensor, state=None):
        batch = tokens.shape[0]
        if state is None:
            zeros = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)
            state = (zeros, zeros)
        ids = tokens.t().contiguous().numpy()  # (T, B)
        logits, h, c = self.session.run(None, {"tokens": ids, "h0": state[0], "c0": state[1]})
        return logits, (h, c)


def ort_lm_methods(plain: nn.Module, threads: int, workdir: Path) -> dict[str, OrtLM]:
    """{ORT_FLOAT: ..., ORT_INT8: ...} for ``plain`` (app.bench.PlainLM), sessions with ``threads`` threads."""
    onnx, _ = _import()
    workdir.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = workdir / "lm.float.onnx", workdir / "lm.int8.onnx"
    if not float_path.exists():
        onnx.save(lm_onnx_model(plain), str(float_path))
        quantize_int8(float_path, int8_path)
    layers, hidden = plain.lstm.num_layers, plain.lstm.hidden_size
    return {ORT_FLOAT: OrtLM(float_path, threads, layers, hidden), ORT_INT8: OrtLM(int8_path, threads, layers, hidden)}
