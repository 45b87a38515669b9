"""The integer checkpoint read by hand, and the LM and speech recognizer it describes, on the reference arithmetic.

File (docs/engine.md, "The checkpoint format"): an 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}, "__metadata__": {"qrnn_speech": "<JSON>"}}``, then the tensor bytes
(little-endian). The ``qrnn_speech`` JSON holds ``model``: a tree of nodes ``{"class": ..., fields}`` whose
tensors are ``{"tensor": name, "dtype": ...}`` and whose DenseShift weights are
``{"class": "ShiftCodes", "packed": tensor, "bits": N, "shape": [...]}``; and ``sha256``: the SHA-256 of
each tensor's stored bytes by name.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.reference.arithmetic import (
    LSTM,
    PWL,
    Array,
    Attention,
    CellTables,
    Direction,
    Embedding,
    LayerNormParams,
    Linear,
    LSTMFormat,
    ints,
    rescale,
    residual_add,
    saturate,
    unpack_denseshift,
)

_DTYPES = {"I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "U8": "<u1", "BOOL": "<u1"}


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Array]]:
    """(metadata, raw bytes per tensor, int64 array per tensor); every tensor's digest checked."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header.pop("__metadata__")["qrnn_speech"])
    payload = data[8 + header_len :]
    raw, arrays = {}, {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw[name] = payload[begin:end]
        arrays[name] = np.frombuffer(raw[name], dtype=_DTYPES[entry["dtype"]]).astype(np.int64).reshape(entry["shape"])
        if hashlib.sha256(raw[name]).hexdigest() != meta["sha256"][name]:
            raise ValueError(f"{path}: tensor {name} does not match its sha256 digest")
    return meta, raw, arrays


class _Tree:
    """Turns the metadata's model tree into reference objects."""

    def __init__(self, raw: dict[str, bytes], arrays: dict[str, Array]):
        self.raw, self.arrays = raw, arrays

    def tensor(self, node: Any) -> Array | None:
        if node is None:
            return None
        if node.get("class") == "ShiftCodes":
            return unpack_denseshift(self.raw[node["packed"]["tensor"]], node["bits"], node["shape"])
        return self.arrays[node["tensor"]]

    def pwl(self, node: dict) -> PWL:
        return PWL(
            self.tensor(node["boundaries"]),
            self.tensor(node["slopes"]),
            self.tensor(node["intercepts"]),
            node["slope_frac_bits"],
            node["in_min"],
            node["in_max"],
            node["out_min"],
            node["out_max"],
        )

    def linear(self, node: dict) -> Linear:
        return Linear(
            self.tensor(node["w_q"]),
            self.tensor(node["m0"]),
            self.tensor(node["exp"]),
            self.tensor(node["bias_acc"]),
            node["in_frac"],
            node["out_frac"],
            node["out_bits"],
        )

    def embedding(self, node: dict) -> Embedding:
        return Embedding(
            self.tensor(node["w_q"]),
            self.tensor(node["m0"]),
            self.tensor(node["exp"]),
            node["out_frac"],
            node["out_bits"],
        )

    def layer_norm(self, node: dict | None) -> LayerNormParams | None:
        if node is None:
            return None
        return LayerNormParams(
            self.tensor(node["gamma_q"]), self.tensor(node["beta_q"]), node["out_frac"], node["eps_s"]
        )

    def direction(self, node: dict) -> Direction:
        names = ("w_ih", "w_ih_m0", "w_ih_exp", "w_hh", "w_hh_m0", "w_hh_exp", "bias_acc", "bias_q12")
        norms = (self.layer_norm(node.get(name)) for name in ("ln_ih", "ln_hh", "ln_cell"))
        return Direction(*(self.tensor(node[name]) for name in names), *norms)

    def lstm(self, node: dict) -> LSTM:
        acts = node["acts"]
        tables = CellTables(self.pwl(acts["sigmoid"]), self.pwl(acts["tanh_gate"]), self.pwl(acts["tanh_cell"]))
        formats = [LSTMFormat(f["in_frac"], f["h_frac"], f["h_bits"], f["cell_frac"]) for f in node["formats"]]
        return LSTM([[self.direction(d) for d in layer] for layer in node["layers"]], formats, tables)


@dataclass
class ReferenceLM:
    embedding: Embedding
    lstm: LSTM
    decoder: Linear

    def __call__(self, tokens, state=None) -> tuple[Array, tuple[Array, Array]]:
        """tokens (B, T) -> (int32 logits (B, T, V) at 2^-decoder.out_frac, (h, c) each (L, B, H))."""
        y, state = self.lstm(self.embedding(tokens), state)
        return self.decoder(y), state


@dataclass
class Memory:
    keys: Array  # (B, T, 2H)
    keys_proj: Array  # (B, T, A)
    mask: Array  # (B, T) bool
    lengths: Array  # (B,)


@dataclass
class ReferenceASR:
    """Conv front end -> BiLSTM encoder (residual from layer 1) -> decoder LSTM (residual from layer 1) ->
    additive attention -> output layer on [query; context] (app/engine/asr.py's docstring)."""

    feat_frac: int
    conv: list[Linear]
    encoder: list[LSTM]
    encoder_fracs: list[int]
    residual: bool
    embedding: Embedding
    decoder: list[LSTM]
    decoder_fracs: list[int]
    attention: Attention
    out_frac: int
    output: Linear
    act_bits: int
    ctc: Linear | None

    def encode(self, feats, lengths) -> Memory:
        """int8 features (B, T, F), lengths (B,) -> the encoder memory."""
        x, lengths = ints(feats), ints(lengths)
        for conv in self.conv:
            if x.shape[1] < 3:  # shorter than one window: zero frames complete it
                x = np.concatenate([x, np.zeros((x.shape[0], 3 - x.shape[1], x.shape[2]), dtype=np.int64)], axis=1)
            frames = (x.shape[1] - 3) // 2 + 1
            windows = np.stack([x[:, 2 * t : 2 * t + 3].reshape(x.shape[0], -1) for t in range(frames)], axis=1)
            x = np.maximum(conv(windows), 0)  # kernel 3, stride 2, ReLU
            lengths = np.maximum((lengths - 3) // 2, 0) + 1
        frac = self.conv[-1].out_frac
        for layer, (lstm, out_frac) in enumerate(zip(self.encoder, self.encoder_fracs)):
            y, _ = lstm(x, lengths=lengths)
            if self.residual and layer > 0:
                y = residual_add(y, lstm.formats[0].h_frac, x, frac, out_frac, self.act_bits)
            x, frac = y, out_frac
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        return Memory(x, self.attention.key_proj(x), mask, lengths)

    def init_state(self, batch: int) -> list[tuple[Array, Array]]:
        hidden = self.decoder[0].layers[0][0].w_hh.shape[1]
        return [(np.zeros((1, batch, hidden), dtype=np.int64),) * 2 for _ in self.decoder]

    def decode_step(self, tokens, state, memory: Memory) -> tuple[Array, list[tuple[Array, Array]], Array]:
        """Previous tokens (N,) -> (int32 logits (N, V), new state, attention probabilities (N, T) Q0.15)."""
        x = self.embedding(ints(tokens)[:, None])
        frac = self.embedding.out_frac
        new_state = []
        for layer, (lstm, out_frac) in enumerate(zip(self.decoder, self.decoder_fracs)):
            y, layer_state = lstm(x, state[layer])
            if self.residual and layer > 0:
                y = residual_add(y, lstm.formats[0].h_frac, x, frac, out_frac, self.act_bits)
            x, frac = y, out_frac
            new_state.append(layer_state)
        query = x[:, 0]
        context, probs = self.attention(query, memory.keys, memory.keys_proj, memory.mask)
        joined = np.concatenate(
            [
                saturate(rescale(query, frac - self.out_frac), self.act_bits),
                saturate(rescale(context, self.encoder_fracs[-1] - self.out_frac), self.act_bits),
            ],
            axis=-1,
        )
        return self.output(joined), new_state, probs

    def ctc_logits(self, memory: Memory) -> Array:
        return self.ctc(memory.keys)


def load_reference(path: str | Path) -> ReferenceLM | ReferenceASR:
    """The reference model of an integer checkpoint file (kind ``lm`` or ``asr``)."""
    meta, raw, arrays = read_checkpoint(path)
    tree, model = _Tree(raw, arrays), meta["model"]
    if meta["kind"] == "lm":
        return ReferenceLM(tree.embedding(model["embedding"]), tree.lstm(model["lstm"]), tree.linear(model["decoder"]))
    attention = model["attention"]
    return ReferenceASR(
        feat_frac=model["feat_frac"],
        conv=[tree.linear(node) for node in model["conv"]],
        encoder=[tree.lstm(node) for node in model["encoder"]],
        encoder_fracs=model["encoder_fracs"],
        residual=model["residual"],
        embedding=tree.embedding(model["embedding"]),
        decoder=[tree.lstm(node) for node in model["decoder"]],
        decoder_fracs=model["decoder_fracs"],
        attention=Attention(
            tree.linear(attention["key_proj"]),
            tree.linear(attention["query_proj"]),
            tree.linear(attention["score_proj"]),
            tree.pwl(attention["tanh"]),
            tree.pwl(attention["exp"]),
        ),
        out_frac=model["out_frac"],
        output=tree.linear(model["output"]),
        act_bits=model["act_bits"],
        ctc=None if model.get("ctc") is None else tree.linear(model["ctc"]),
    )
