"""The integer checkpoint: safetensors tensors + a JSON tree describing every engine object.

File layout (format ``qrnn-speech-integer``, version 2; version 1 is the same without the digests):
- tensors: every integer tensor of the engine objects, stored in the narrowest integer dtype that
  holds its values (weights int8, multipliers int16, exponents int8, biases int32, ...); DenseShift
  weights as packed N-bit codes (``ShiftCodes``: uint8, 3-bit: 8 weights in 3 bytes);
- metadata ``qrnn_speech``: JSON with ``format``, ``version``, ``kind`` (e.g. ``lm``), ``model``
  (a tree: each node names its engine class and holds its integer fields, fixed-point formats
  ``*_frac`` and references ``{"tensor": name, "dtype": original dtype}``), ``vocab`` and ``info``
  (free-form provenance: quant config, source checkpoint, bit widths), and ``sha256``: the SHA-256 of every
  tensor's stored bytes by tensor name, and under ``__metadata__`` the SHA-256 of the canonical JSON
  (sorted keys, no spaces, ASCII) of the rest of the metadata, so that any byte changed in place is found.
Loading needs only torch and safetensors; every malformed file is refused with one IntegerCheckpointError line
that names the file and the fix, never another exception or a silent load (tests/test_checkpoint_fuzz.py and
tests/test_integer_checkpoint.py fuzz it). Version 1 files (no digests) are refused too: unverified, a flipped
version digit would switch every check off. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.engine.asr import IntegerASRModel
from app.engine.attention import IntAdditiveAttention
from app.engine.fixed_point import INT16_MAX, INT16_MIN
from app.engine.layers import IntEmbedding, IntLinear
from app.engine.lm import IntegerLanguageModel
from app.engine.lstm import CellActivations, IntLayerNormParams, IntLSTM, IntLSTMDirection, LSTMFormat
from app.engine.packing import ShiftCodes
from app.engine.pwl import PWLTable

FORMAT = "qrnn-speech-integer"
VERSION = 2
METADATA_KEY = "qrnn_speech"
DIGESTS_KEY = "sha256"
METADATA_DIGEST = "__metadata__"
INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "bool"}
EXPORT_HINT = (
    "export it again from its QAT run (train.py quant=irnn or quant=irnn_denseshift writes <run>/model.int.safetensors)"
)
# there is no standalone export command: train.py exports at the end of a run, through these functions
REEXPORT_FUNCTIONS = "app.export.lm.export_integer_lm / app.export.asr.export_integer_asr"
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


def canonical_json(value: Any) -> bytes:
    """The bytes the metadata digest covers (the C runtime serializes its parsed copy the same way)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def metadata_digest(meta: dict) -> str:
    """The ``sha256["__metadata__"]`` entry of ``meta``: SHA-256 of the canonical JSON of everything but ``sha256``."""
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != DIGESTS_KEY})).hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()  # the bytes safetensors stores


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
        if node.get("tensor") not in tensors:
            raise IntegerCheckpointError(f"tensor {node.get('tensor')} of {prefix} is missing from the file")
        if node.get("dtype") not in INTEGER_DTYPES:
            raise IntegerCheckpointError(f"{prefix} declares dtype {node.get('dtype')!r}, not an integer dtype")
        stored, dtype = tensors[node["tensor"]], getattr(torch, node["dtype"])
        if stored.numel() and dtype != torch.bool:
            info = torch.iinfo(dtype)
            if int(stored.min()) < info.min or int(stored.max()) > info.max:
                raise IntegerCheckpointError(f"{prefix} holds values outside its declared dtype {node['dtype']}")
        return stored.to(dtype)
    if isinstance(node, dict) and "class" in node:
        cls = _CLASSES.get(node["class"])
        if cls is None:
            raise IntegerCheckpointError(f"unknown engine class {node['class']!r} (written by a newer version?)")
        fields = {k: _unpack(v, tensors, f"{prefix}.{k}") for k, v in node.items() if k != "class"}
        try:
            obj = cls(**fields)
            _check_layout(obj)
            return obj
        except Exception as exc:  # missing or inconsistent fields, e.g. packed codes of another bit width
            raise IntegerCheckpointError(f"{prefix} ({node['class']}): {type(exc).__name__}: {exc}") from None
    return node


def _expect_shape(name: str, t: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} has shape {found}, expected {shape}")


def _check_layout(obj: Any) -> None:
    """The shapes one engine object needs that a smoke run cannot see: a per-channel vector of one entry
    broadcasts over every channel silently, and a PWL domain beyond int16 would build a huge lookup table."""
    if isinstance(obj, (IntLinear, IntEmbedding)):
        if obj.w_q.dim() != 2:
            raise ValueError(f"w_q has shape {tuple(obj.w_q.shape)}, expected (rows, columns)")
        for name in ("m0", "exp", "bias_acc"):
            if getattr(obj, name, None) is not None:
                _expect_shape(name, getattr(obj, name), (obj.w_q.shape[0],))
    elif isinstance(obj, IntLSTMDirection):
        gates, hidden = obj.w_hh.shape[0], obj.w_hh.shape[1] if obj.w_hh.dim() == 2 else -1
        _expect_shape("w_hh", obj.w_hh, (4 * hidden, hidden))
        if obj.w_ih.dim() != 2 or obj.w_ih.shape[0] != gates:
            raise ValueError(f"w_ih has shape {tuple(obj.w_ih.shape)}, expected ({gates}, inputs)")
        for name in ("w_ih_m0", "w_ih_exp", "w_hh_m0", "w_hh_exp", "bias_acc", "bias_q12"):
            if getattr(obj, name) is not None:
                _expect_shape(name, getattr(obj, name), (gates,))
        if (obj.bias_acc is None) == (obj.ln_ih is None) or (obj.bias_q12 is None) != (obj.ln_ih is None):
            raise ValueError("needs bias_acc without layer norm, bias_q12 with it")
        for name, size in (("ln_ih", gates), ("ln_hh", gates), ("ln_cell", hidden)):
            ln = getattr(obj, name)
            if (ln is None) != (obj.ln_ih is None):
                raise ValueError(f"{name} is {'missing' if ln is None else 'present'} while ln_ih is not")
            if ln is not None:
                _expect_shape(f"{name}.gamma_q", ln.gamma_q, (size,))
                _expect_shape(f"{name}.beta_q", ln.beta_q, (size,))
    elif isinstance(obj, PWLTable):
        segments = obj.slopes.numel()
        _expect_shape("slopes", obj.slopes, (segments,))
        _expect_shape("intercepts", obj.intercepts, (segments,))
        _expect_shape("boundaries", obj.boundaries, (segments - 1,))
        if segments < 1 or bool((obj.boundaries[1:] <= obj.boundaries[:-1]).any()):
            raise ValueError("boundaries must increase strictly, one fewer than the segments")
        if not INT16_MIN <= obj.in_min <= obj.in_max <= INT16_MAX:
            raise ValueError(f"domain [{obj.in_min}, {obj.in_max}] is not inside the int16 inputs the engine looks up")
    elif isinstance(obj, IntLSTM):
        if not obj.layers or len(obj.formats) != len(obj.layers) or len({len(d) for d in obj.layers}) != 1:
            raise ValueError(f"{len(obj.layers)} layers need as many formats ({len(obj.formats)}) and equal directions")


def save_integer_checkpoint(path: str | Path, model: Any, kind: str, vocab: list[str] | None, info: dict) -> int:
    """Write ``model`` (an engine object) atomically; returns the tensor bytes stored."""
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(model, IntegerLanguageModel):
        model = dataclasses.replace(model, vocab=[])  # the vocabulary is stored once, under "vocab"
    tree = _pack(model, "model", tensors)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "model": tree, "vocab": vocab, "info": info}
    meta[DIGESTS_KEY] = {name: _tensor_digest(t) for name, t in tensors.items()} | {
        METADATA_DIGEST: metadata_digest(meta)
    }
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


def _fail(path: Path, problem: str, fix: str = EXPORT_HINT) -> IntegerCheckpointError:
    return IntegerCheckpointError(f"{path}: {problem}; {fix}".replace("\n", " "))


def read_metadata(path: str | Path) -> dict:
    """The checked ``qrnn_speech`` metadata of an integer checkpoint (format, version, keys, metadata digest)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise _fail(path, "is a directory, not an integer checkpoint file", "pass <run>/model.int.safetensors")
    if not path.is_file():
        raise _fail(path, "integer checkpoint does not exist", "pass <run>/model.int.safetensors of a quant=irnn run")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises several types on damaged headers; the file is refused either way
        raise _fail(
            path, f"not an integer checkpoint: not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from None
    if raw is None:
        raise _fail(path, f"a safetensors file without {FORMAT} metadata: not an integer checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"its {METADATA_KEY} metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"its {METADATA_KEY} metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise _fail(path, f"has format {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if type(version) is int and version == 1:
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        source = info.get("source_checkpoint") or "its run's checkpoints/best.ckpt"
        raise _fail(
            path,
            f"is {FORMAT} version 1, written before checkpoints carried SHA-256 digests, and is not loaded unverified",
            f"export it again: train.py writes <run>/model.int.safetensors (version {VERSION}) at the end of a quant=irnn "
            f"or quant=irnn_denseshift run; for an existing run, call {REEXPORT_FUNCTIONS} on the QAT model of {source}",
        )
    if type(version) is not int or version != VERSION:
        raise _fail(path, f"is {FORMAT} version {version!r}; this engine reads version {VERSION}")
    for key, kind in (("kind", str), ("model", dict)):
        if not isinstance(meta.get(key), kind):
            raise _fail(path, f"its metadata has no {key} {kind.__name__}")
    digests = meta.get(DIGESTS_KEY)
    if not isinstance(digests, dict) or not isinstance(digests.get(METADATA_DIGEST), str):
        raise _fail(path, "its metadata has no sha256 digests")
    if digests[METADATA_DIGEST] != metadata_digest(meta):
        raise _fail(path, "its metadata does not match its sha256 digest (the file was changed after export)")
    return meta


def _check_tensors(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Integer dtypes only, and every tensor's bytes equal to its digest."""
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            raise _fail(path, f"tensor {name} is {t.dtype}: integer checkpoints hold integers only")
    digests = meta[DIGESTS_KEY]
    for name in sorted(set(digests) - {METADATA_DIGEST} - set(tensors)):
        raise _fail(path, f"tensor {name} is missing from the file")
    for name, t in tensors.items():
        if digests.get(name) != _tensor_digest(t):
            raise _fail(path, f"tensor {name} does not match its sha256 digest (the file was changed or damaged)")


def _smoke_run(model: Any) -> None:
    """One tiny step, so that shapes or formats that do not fit together are found at load, not later."""
    with torch.inference_mode():
        if isinstance(model, IntegerLanguageModel):
            model(torch.zeros(1, 1, dtype=torch.int64))
        elif isinstance(model, IntegerASRModel):
            feats = torch.zeros(1, 3, model.conv[0].w_q.shape[1] // 3, dtype=torch.int8)
            memory = model.encode(feats, torch.tensor([3]))
            model.decode_step(torch.zeros(1, dtype=torch.int64), model.init_state(1), memory)
            if model.ctc is not None:
                model.ctc_logits(memory)
        else:
            raise IntegerCheckpointError(f"the model is a {type(model).__name__}, not an integer LM or ASR model")


def load_integer_checkpoint(path: str | Path) -> tuple[Any, dict]:
    """Return (engine object, metadata). Raises IntegerCheckpointError with one clear line on bad files."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # as in read_metadata
        raise _fail(path, f"its tensors are unreadable ({type(exc).__name__}: {exc})") from None
    _check_tensors(path, meta, tensors)
    try:
        model = _unpack(meta["model"], tensors)
        if isinstance(model, IntegerLanguageModel) and meta.get("vocab") is not None:
            if not isinstance(meta["vocab"], list) or len(meta["vocab"]) != model.embedding.table.shape[0]:
                raise IntegerCheckpointError("its vocabulary does not match the embedding's rows")
            model.vocab = meta["vocab"]
        _smoke_run(model)
    except IntegerCheckpointError as exc:
        raise _fail(path, f"inconsistent: {exc}") from None
    except Exception as exc:  # wrong shapes, missing fields, values out of range: one line, never a traceback
        raise _fail(path, f"inconsistent: its model does not run ({type(exc).__name__}: {exc})") from None
    return model, meta


def tensor_bytes(path: str | Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_file(str(path)).values())
