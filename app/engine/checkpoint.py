"""The integer checkpoint: safetensors tensors + a JSON tree describing every engine object.

File layout (format ``qrnn-speech-integer``, version 1):
- tensors: every integer tensor of the engine objects, stored in the narrowest integer dtype that
  holds its values (weights int8, multipliers int16, exponents int8, biases int32, ...); DenseShift
  weights as packed N-bit codes (``ShiftCodes``: uint8, 3-bit: 8 weights in 3 bytes);
- metadata ``qrnn_speech``: JSON with ``format``, ``version``, ``kind`` (e.g. ``lm``), ``model``
  (a tree: each node names its engine class and holds its integer fields, fixed-point formats
  ``*_frac`` and references ``{"tensor": name, "dtype": original dtype}``), ``vocab`` and ``info``
  (free-form provenance: quant config, source checkpoint, bit widths).
Loading needs only torch and safetensors. Writes are atomic (temporary file, then rename).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.engine.asr import IntegerASRModel
from app.engine.attention import IntAdditiveAttention
from app.engine.layers import IntEmbedding, IntLinear
from app.engine.lm import IntegerLanguageModel
from app.engine.lstm import CellActivations, IntLayerNormParams, IntLSTM, IntLSTMDirection, LSTMFormat
from app.engine.packing import ShiftCodes
from app.engine.pwl import PWLTable

FORMAT = "qrnn-speech-integer"
VERSION = 1
METADATA_KEY = "qrnn_speech"
_CLASSES = {
    cls.__name__: cls
    for cls in (
        IntEmbedding,
        IntLinear,
        IntLSTM,
        IntLSTMDirection,
        LSTMFormat,
        IntLayerNormParams,
        CellActivations,
        PWLTable,
        IntegerLanguageModel,
        IntegerASRModel,
        IntAdditiveAttention,
        ShiftCodes,
    )
}
_NARROW = (torch.int8, torch.int16, torch.int32, torch.int64)


class IntegerCheckpointError(ValueError):
    pass


def _narrowest(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in _NARROW or t.numel() == 0:
        return t.contiguous()
    lo, hi = int(t.min()), int(t.max())
    for dtype in _NARROW:
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype).contiguous()
    return t.contiguous()


def _pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor], seen: dict[int, str] | None = None) -> Any:
    """Turn an engine object into a JSON tree, moving its tensors into ``tensors``.

    A tensor object reachable twice (tied embedding and output weights) is stored once. A weight a layer
    was built from DenseShift codes (``layer.shift_codes``) is stored as those packed codes, not as int8.
    """
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            raise IntegerCheckpointError(f"{prefix} is a {obj.dtype} tensor: integer checkpoints hold integers only")
        name = seen.setdefault(id(obj), prefix)
        if name == prefix:
            tensors[prefix] = _narrowest(obj)
        return {"tensor": name, "dtype": str(obj.dtype).removeprefix("torch.")}
    if dataclasses.is_dataclass(obj):
        node = {"class": type(obj).__name__}
        stored = getattr(obj, "shift_codes", {})
        for f in dataclasses.fields(obj):
            if f.init:
                node[f.name] = _pack(stored.get(f.name, getattr(obj, f.name)), f"{prefix}.{f.name}", tensors, seen)
        return node
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{prefix}.{i}", tensors, seen) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (int, str, bool)):
        return obj
    raise IntegerCheckpointError(f"cannot store {prefix} of type {type(obj).__name__}")


def _unpack(node: Any, tensors: dict[str, torch.Tensor], prefix: str = "model") -> Any:
    if isinstance(node, list):
        return [_unpack(v, tensors, f"{prefix}.{i}") for i, v in enumerate(node)]
    if isinstance(node, dict) and "tensor" in node:
        if node["tensor"] not in tensors:
            raise IntegerCheckpointError(f"tensor {node['tensor']} is missing from the file")
        return tensors[node["tensor"]].to(getattr(torch, node["dtype"]))
    if isinstance(node, dict) and "class" in node:
        cls = _CLASSES.get(node["class"])
        if cls is None:
            raise IntegerCheckpointError(f"unknown engine class {node['class']!r} (written by a newer version?)")
        fields = {k: _unpack(v, tensors, f"{prefix}.{k}") for k, v in node.items() if k != "class"}
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:  # inconsistent fields, e.g. packed codes of another bit width
            raise IntegerCheckpointError(f"{prefix} ({node['class']}): {exc}") from None
    return node


def save_integer_checkpoint(path: str | Path, model: Any, kind: str, vocab: list[str] | None, info: dict) -> int:
    """Write ``model`` (an engine object) atomically; returns the tensor bytes stored."""
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(model, IntegerLanguageModel):
        model = dataclasses.replace(model, vocab=[])  # the vocabulary is stored once, under "vocab"
    tree = _pack(model, "model", tensors)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "model": tree, "vocab": vocab, "info": info}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise IntegerCheckpointError(f"integer checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise IntegerCheckpointError(
            f"{path} is not an integer checkpoint (not a readable safetensors file: {exc}); "
            "export one with train.py quant=irnn or python -m app.export"
        ) from None
    if raw is None:
        raise IntegerCheckpointError(f"{path} is a safetensors file without {FORMAT} metadata: not an integer checkpoint")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise IntegerCheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise IntegerCheckpointError(f"{path} is {FORMAT} version {meta.get('version')}; this engine reads version {VERSION}")
    return meta


def load_integer_checkpoint(path: str | Path) -> tuple[Any, dict]:
    """Return (engine object, metadata). Raises IntegerCheckpointError with one clear line on bad files."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise IntegerCheckpointError(f"{path} is damaged (tensors unreadable: {exc}); export it again") from None
    try:
        model = _unpack(meta["model"], tensors)
    except IntegerCheckpointError as exc:
        raise IntegerCheckpointError(f"{path} is inconsistent: {exc}") from None
    if isinstance(model, IntegerLanguageModel) and meta.get("vocab") is not None:
        model.vocab = meta["vocab"]
    return model, meta


def tensor_bytes(path: str | Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_file(str(path)).values())
