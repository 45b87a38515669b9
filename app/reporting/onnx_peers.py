"""ONNX Runtime peers for ``python -m app.bench``: the float LSTM LM as an ONNX graph, in float and as
``onnxruntime.quantization.quantize_dynamic`` makes it int8, the runtimes a user would pick to deploy an LSTM
on a CPU.

The LM graph is written with ``onnx.helper`` straight from the torch weights (no exporter needed):

    tokens (T, B) int64 -> Gather (embedding) -> one ONNX ``LSTM`` node per layer (gates reordered from
    PyTorch's i, f, g, o to ONNX's i, o, f, c; B = [b_ih; b_hh]) -> MatMul + Add (full-vocabulary logits)

Tokens are time-major (T, B) because that is the ``LSTM`` node's layout: no Transpose in the graph.
The recurrent state (h0, c0) (L, B, H) float32 is a graph input and (h_n, c_n) an output, so a caller
steps it one token at a time as it steps our engine. ``quantize_dynamic`` (int8 weights) turns the
LSTM nodes into ``com.microsoft.DynamicQuantizeLSTM``, the MatMul into DynamicQuantizeLinear +
MatMulInteger (which the session fuses into ``DynamicQuantizeMatMul``) and the embedding Gather into a
Gather of uint8 rows + DequantizeLinear.

The ASR peer (float only) exports ``app.models.asr.AttentionASR`` with torch's TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) as two graphs, the encoder and one decoder step.
Needs the bench extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from app.engine.asr import CONV_KERNEL, CONV_STRIDE, conv_lengths
from app.quant.attention import AttentionMemory
from app.quant.layers import float_weight

try:
    import onnx
    import onnxruntime as ort
    from onnx import ModelProto, TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
except ImportError as exc:
    raise ImportError(
        f"app.reporting.onnx_peers needs the bench extra ({exc.name} is missing): pip install -e '.[bench]'"
    ) from exc

ORT_FLOAT, ORT_INT8 = "ONNX Runtime float", "ONNX Runtime int8"  # the method names of app.bench's rows
OPSET = 17  # LSTM-14 and Gather-13; quantize_dynamic supports it, ONNX Runtime 1.20+ runs it


def _onnx_gates(w: Tensor) -> np.ndarray:
    """PyTorch's gate blocks (i, f, g, o) along dim 0 -> ONNX's (i, o, f, c); (4H, ...) float32."""
    i, f, g, o = w.detach().float().chunk(4, dim=0)
    return torch.cat([i, o, f, g], dim=0).numpy()


def _initializer(name: str, array: np.ndarray | Tensor) -> TensorProto:
    if isinstance(array, Tensor):
        array = array.detach().float().numpy()
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def lm_onnx_model(plain: nn.Module) -> ModelProto:
    """``app.reporting.bench.PlainLM`` (nn.Embedding -> nn.LSTM batch_first -> nn.Linear) as an ONNX model.

    Inputs: tokens (T, B) int64, h0 and c0 (L, B, H) float32. Outputs: logits (T, B, V) float32, h_n and
    c_n (L, B, H) float32. T and B are dynamic.
    """
    lstm: nn.LSTM = plain.lstm
    if lstm.bidirectional or lstm.proj_size or not lstm.bias or not lstm.batch_first:
        raise ValueError(f"lm_onnx_model converts a unidirectional batch_first nn.LSTM with biases, got {lstm}")
    layers, hidden, vocab = lstm.num_layers, lstm.hidden_size, plain.decoder.out_features
    inits = [
        _initializer("embedding", plain.embedding.weight),  # (V, E)
        _initializer("decoder_w", plain.decoder.weight.t()),  # (H, V): MatMul's right operand
        _initializer("decoder_b", plain.decoder.bias),
        _initializer("squeeze_axis", np.array([1], dtype=np.int64)),
    ]
    nodes = [helper.make_node("Gather", ["embedding", "tokens"], ["x0"])]  # (T, B, E)
    for layer in range(layers):
        bias = np.concatenate([_onnx_gates(getattr(lstm, f"bias_{kind}_l{layer}")) for kind in ("ih", "hh")])
        inits += [
            _initializer(f"W{layer}", _onnx_gates(getattr(lstm, f"weight_ih_l{layer}"))[None]),  # (1, 4H, I)
            _initializer(f"R{layer}", _onnx_gates(getattr(lstm, f"weight_hh_l{layer}"))[None]),  # (1, 4H, H)
            _initializer(f"B{layer}", bias[None]),  # (1, 8H)
            _initializer(f"start{layer}", np.array([layer], dtype=np.int64)),
            _initializer(f"end{layer}", np.array([layer + 1], dtype=np.int64)),
        ]
        nodes += [
            helper.make_node("Slice", ["h0", f"start{layer}", f"end{layer}"], [f"h0_{layer}"]),  # (1, B, H)
            helper.make_node("Slice", ["c0", f"start{layer}", f"end{layer}"], [f"c0_{layer}"]),
            helper.make_node(
                "LSTM",
                [f"x{layer}", f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}", f"c0_{layer}"],
                [f"y{layer}", f"h_n{layer}", f"c_n{layer}"],
                hidden_size=hidden,
            ),
            helper.make_node("Squeeze", [f"y{layer}", "squeeze_axis"], [f"x{layer + 1}"]),  # (T, 1, B, H) -> (T, B, H)
        ]
    nodes += [
        helper.make_node("MatMul", [f"x{layers}", "decoder_w"], ["scores"]),
        helper.make_node("Add", ["scores", "decoder_b"], ["logits"]),
        helper.make_node("Concat", [f"h_n{layer}" for layer in range(layers)], ["h_n"], axis=0),
        helper.make_node("Concat", [f"c_n{layer}" for layer in range(layers)], ["c_n"], axis=0),
    ]
    state = [layers, "B", hidden]
    graph = helper.make_graph(
        nodes,
        "qrnn_lstm_lm",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", "B"]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c0", TensorProto.FLOAT, state),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", "B", vocab]),
            helper.make_tensor_value_info("h_n", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c_n", TensorProto.FLOAT, state),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="app.reporting.onnx_peers"
    )
    onnx.checker.check_model(model)
    return model


def int8_onnx_model(path_in: Path, path_out: Path) -> None:
    """``quantize_dynamic`` of the ONNX model at ``path_in`` with int8 weights (per tensor, the default),
    written to ``path_out``: LSTM -> DynamicQuantizeLSTM, MatMul -> MatMulInteger, Gather -> uint8 rows."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run onnxruntime's pre-processing first is about vision models
    try:
        quantize_dynamic(Path(path_in), Path(path_out), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def op_types(model: OrtLM | Path | ModelProto, optimized: bool = False) -> list[str]:
    """The sorted node types of a model (an OrtLM's file, an .onnx path or a ModelProto): as saved, or with
    ``optimized`` as the CPU session runs them after its fusions (e.g. MatMulInteger and its scaling Muls
    -> DynamicQuantizeMatMul)."""
    if isinstance(model, OrtLM):
        model = model.path
    if optimized:
        with tempfile.TemporaryDirectory() as tmp:
            options = session_options(1)
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            options.log_severity_level = 3  # its warning that a graph optimized at level ALL fits this CPU only
            source = model.SerializeToString() if isinstance(model, ModelProto) else str(model)
            ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            model = onnx.load(options.optimized_model_filepath)
    elif not isinstance(model, ModelProto):
        model = onnx.load(str(model))
    return sorted({node.op_type for node in model.graph.node})


def session_options(threads: int) -> ort.SessionOptions:
    """One inference at a time on ``threads`` intra-op threads, every graph optimization on."""
    if threads < 1:
        raise ValueError(f"threads={threads}: an ONNX Runtime session needs at least 1 intra-op thread")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


RecurrentState = tuple[np.ndarray, np.ndarray]  # h, c: (L, B, H) float32, B the batch (LM) or hypotheses (ASR)


class OrtLM:
    """An ONNX Runtime CPU session of ``lm_onnx_model`` (float or int8), called like app.bench's torch models:
    ``model(tokens (B, T) int64, state) -> (logits (B, T, V) float32, state)``.

    ``tokens`` is a torch tensor or a numpy array; ``state`` None starts from zeros, else the (h, c) the
    previous call returned (numpy, passed back to the session as they are). ``logits`` is a numpy view.
    """

    def __init__(self, path: Path, threads: int):
        self.path, self.threads = Path(path), threads
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        layers, _, hidden = self.session.get_inputs()[1].shape  # h0: (L, "B", H)
        self.layers, self.hidden = int(layers), int(hidden)

    def zero_state(self, batch: int) -> RecurrentState:
        zeros = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)
        return zeros, zeros

    def __call__(
        self, tokens: Tensor | np.ndarray, state: RecurrentState | None = None
    ) -> tuple[np.ndarray, RecurrentState]:
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).T)  # (T, B): a copy of B * T ids
        h, c = self.zero_state(ids.shape[1]) if state is None else state
        logits, h_n, c_n = self.session.run(None, {"tokens": ids, "h0": h, "c0": c})
        return logits.swapaxes(0, 1), (h_n, c_n)


def ort_lm_methods(plain: nn.Module, threads: int, workdir: Path) -> dict[str, OrtLM]:
    """{ORT_FLOAT: ..., ORT_INT8: ...}: sessions with ``threads`` intra-op threads of ``plain``
    (app.reporting.bench.PlainLM) as ``lm_onnx_model`` and its ``int8_onnx_model``.

    The .onnx files go to ``workdir``, named by a digest of the float graph, so that calls for several
    thread counts quantize once and a different model never reuses them.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = lm_onnx_model(plain).SerializeToString()
    digest = hashlib.sha256(data).hexdigest()[:16]
    float_path, int8_path = workdir / f"lm-{digest}.float.onnx", workdir / f"lm-{digest}.int8.onnx"
    if not (float_path.exists() and int8_path.exists()):
        float_path.write_bytes(data)
        int8_onnx_model(float_path, int8_path)
    return {ORT_FLOAT: OrtLM(float_path, threads), ORT_INT8: OrtLM(int8_path, threads)}


# ---- ASR (float): the encoder and one decoder step as two graphs, exported by torch -----------------------


def _min_frames(conv_layers: int) -> int:
    """Fewest feature frames the exported front end takes: each kernel-3 stride-2 Conv needs 3 frames in
    (``unfold_time`` pads shorter inputs; an ONNX Conv does not), so 3, 7, 15, ... for 1, 2, 3 layers."""
    return 2 ** (conv_layers + 1) - 1


class _ExportEncoder(nn.Module):
    """``AttentionASR.encode`` for the exporter: feats (B, T, F) float32, lengths (B,) int64 ->
    keys (B, S, 2He), keys_proj (B, S, A) float32, mask (B, S) bool.

    The front end's unfold + linear is the same kernel-3 stride-2 ``Conv``: the TorchScript exporter cannot
    unfold a dynamic time axis ("ONNX export of operator Unfold, input size not accessible").
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model, x = self.model, feats.transpose(1, 2)  # (B, F, T)
        for conv in model.conv:
            weight = float_weight(conv)  # (C_out, k * C_in), the k frames of a window in time order
            weight = weight.reshape(weight.shape[0], CONV_KERNEL, -1).transpose(1, 2)  # (C_out, C_in, k)
            x = torch.relu(nn.functional.conv1d(x, weight, conv.bias, stride=CONV_STRIDE))
            lengths = conv_lengths(lengths)
        x, _, _ = model._stack(model.encoder, x.transpose(1, 2), None, lengths, final_state=False)
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        memory = model.attention.precompute(x, None, mask)
        return memory.keys, memory.keys_proj, mask


class _ExportDecoderStep(nn.Module):
    """``AttentionASR.decode_step`` for the exporter: tokens (N,) int64, h0 and c0 (L, N, Hd) float32 and the
    encoder's keys, keys_proj, mask -> logits (N, V) float32, h_n and c_n (L, N, Hd) float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, h0, c0, keys, keys_proj, mask) -> tuple[Tensor, Tensor, Tensor]:
        state = [(h0[i : i + 1], c0[i : i + 1]) for i in range(h0.shape[0])]
        memory = AttentionMemory(keys=keys, key_frac=None, mask=mask, keys_proj=keys_proj)
        logits, state = self.model.decode_step(tokens, state, memory)
        return logits, torch.cat([h for h, _ in state]), torch.cat([c for _, c in state])


def asr_onnx_files(model: nn.Module, workdir: Path) -> tuple[Path, Path]:
    """Export a float ``app.models.asr.AttentionASR`` (quant.mode float or denseshift) as
    ``workdir/asr.encoder.onnx`` and ``workdir/asr.decoder_step.onnx`` (inputs and outputs: _ExportEncoder,
    _ExportDecoderStep; batch, frames and encoder steps dynamic) with torch's TorchScript exporter."""
    if model.quant.integer_activations:
        raise ValueError(
            f"quant.mode={model.quant.mode} has integer activations: its CPU runtime is app.engine.native; "
            "the ONNX Runtime peer exports the float model (quant=float)"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = workdir / "asr.encoder.onnx", workdir / "asr.decoder_step.onnx"
    layers, hidden = len(model.decoder), model.decoder[0].hidden_size
    frames = 4 * _min_frames(len(model.conv))
    feats = torch.randn(2, frames, model.conv[0].in_features // CONV_KERNEL)
    lengths = torch.tensor([frames, frames - 3])  # one padded utterance: the masks are traced too
    training = model.training
    encoder, decoder = _ExportEncoder(model).eval(), _ExportDecoderStep(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter's deprecation note, and its caution on LSTM batch sizes, which does not apply:
        # every LSTM's initial state is computed from the input's shape or is a graph input
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (feats, lengths),
            str(encoder_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["feats", "lengths"],
            output_names=["keys", "keys_proj", "mask"],
            dynamic_axes={
                "feats": {0: "B", 1: "T"},
                "lengths": {0: "B"},
                **{name: {0: "B", 1: "S"} for name in ("keys", "keys_proj", "mask")},
            },
        )
        keys, keys_proj, mask = encoder(feats, lengths)
        zeros = torch.zeros(layers, 2, hidden)
        torch.onnx.export(
            decoder,
            (torch.zeros(2, dtype=torch.int64), zeros, zeros, keys, keys_proj, mask),
            str(decoder_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["tokens", "h0", "c0", "keys", "keys_proj", "mask"],
            output_names=["logits", "h_n", "c_n"],
            dynamic_axes={
                **{name: {0: "N"} for name in ("tokens", "logits")},
                **{name: {1: "N"} for name in ("h0", "c0", "h_n", "c_n")},
                **{name: {0: "N", 1: "S"} for name in ("keys", "keys_proj", "mask")},
            },
        )
    model.train(training)  # export() restores the wrappers' (train) mode on the model: give it its own back
    return encoder_path, decoder_path


@dataclass
class OrtMemory:
    keys: np.ndarray  # (B, S, 2He) float32: the encoder output
    keys_proj: np.ndarray  # (B, S, A) float32: the attention's key projection, once per utterance
    mask: np.ndarray  # (B, S) bool, True = real encoder step


@dataclass
class OrtEncoded:
    """What ``OrtASR.encode`` returns, named as ``app.models.asr.Encoded`` is."""

    output: np.ndarray  # (B, S, 2He) float32
    lengths: np.ndarray  # (B,) int64
    memory: OrtMemory


class OrtASR:
    """ONNX Runtime CPU sessions of ``asr_onnx_files``, used as AttentionASR is in greedy search:
    ``encoded = asr.encode(feats, lengths)``, then ``logits, state = asr.decode_step(tokens, state, encoded.memory)``.
    """

    def __init__(self, encoder_path: Path, decoder_path: Path, threads: int):
        options = session_options(threads)
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder_path), options, providers=providers)
        self.threads = threads
        layers, _, hidden = self.decoder.get_inputs()[1].shape  # h0: (L, "N", Hd)
        self.layers, self.hidden = int(layers), int(hidden)
        conv_layers = sum(node.op_type == "Conv" for node in onnx.load(str(encoder_path)).graph.node)
        self.min_frames = _min_frames(conv_layers)

    def encode(self, feats: Tensor | np.ndarray, lengths: Tensor | np.ndarray) -> OrtEncoded:
        """feats (B, T, F) float32, lengths (B,) int64 (T >= min_frames) -> the encoder output and memory."""
        feats = np.asarray(feats, dtype=np.float32)
        if feats.shape[1] < self.min_frames:
            raise ValueError(
                f"{feats.shape[1]} feature frames: the exported front end needs at least {self.min_frames} "
                "(pad the utterance with zero frames and keep its length)"
            )
        keys, keys_proj, mask = self.encoder.run(None, {"feats": feats, "lengths": np.asarray(lengths, dtype=np.int64)})
        return OrtEncoded(keys, mask.sum(1), OrtMemory(keys, keys_proj, mask))

    def decode_step(
        self, tokens: Tensor | np.ndarray, state: RecurrentState | None, memory: OrtMemory
    ) -> tuple[np.ndarray, RecurrentState]:
        """Previous tokens (N,) int64 -> (logits (N, V) float32, new state (h, c) (L, N, Hd) float32);
        ``state`` None starts from zeros."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if state is None:
            zeros = np.zeros((self.layers, tokens.shape[0], self.hidden), dtype=np.float32)
            state = (zeros, zeros)
        feed = {"tokens": tokens, "h0": state[0], "c0": state[1]}
        feed.update(keys=memory.keys, keys_proj=memory.keys_proj, mask=memory.mask)
        logits, h_n, c_n = self.decoder.run(None, feed)
        return logits, (h_n, c_n)
