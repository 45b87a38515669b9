"""Every damaged or edited integer checkpoint is refused with one line that names the file, by the Python
loader (IntegerCheckpointError) and by the C runtime (NativeRuntimeError), never another exception, a crash
or a silent load: truncations, flipped bytes anywhere, and metadata edits that keep the file well-formed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from app.engine.checkpoint import (
    IntegerCheckpointError,
    load_integer_checkpoint,
    metadata_digest,
    save_integer_checkpoint,
)
from app.engine.native import NativeLanguageModel, NativeRuntimeError
from app.models.lm import LSTMLanguageModel


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vocab = [f"w{i}" for i in range(40)] + [
        "naïve",
        "日本",
    ]  # non-ASCII words: the digest covers them as Python writes them
    model = LSTMLanguageModel(len(vocab), 16, 16, 2, 0.0, True, {"mode": "irnn_denseshift", "weight_bits": 3})
    with torch.no_grad():
        model.train()(torch.randint(0, len(vocab), (4, 12)))
    path = tmp_path_factory.mktemp("fuzz") / "good.int.safetensors"
    save_integer_checkpoint(path, model.eval().export_integer(vocab), "lm", vocab, {"lr": 0.5, "note": "ok"})
    return path


def split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload


def edited(data: bytes, edit, resign: bool = False) -> bytes:
    """The file with its qrnn_speech metadata edited (resign: the metadata digest computed anew, as a forger
    would, so that the check behind the digest is the one tested)."""
    header, payload = split(data)
    meta = json.loads(header["__metadata__"]["qrnn_speech"])
    edit(meta)
    if resign and isinstance(meta.get("sha256"), dict):
        meta["sha256"]["__metadata__"] = metadata_digest(meta)
    header["__metadata__"]["qrnn_speech"] = json.dumps(meta)
    return join(header, payload)


def header_edited(data: bytes, edit) -> bytes:
    header, payload = split(data)
    edit(header)
    return join(header, payload)


def set_path(tree: dict, keys: list, value) -> None:
    for key in keys[:-1]:
        tree = tree[key]
    tree[keys[-1]] = value


def mutations(data: bytes) -> list[tuple[str, bytes]]:
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    cases = [
        (f"truncated to {n} bytes", data[:n])
        for n in (0, 5, 8, 9, header_end // 2, header_end, header_end + 7, len(data) - 1)
    ]
    for position in sorted({*range(0, len(data), max(1, len(data) // 97)), header_end - 1, header_end, len(data) - 1}):
        for mask in (0x01, 0xFF):
            flipped = bytearray(data)
            flipped[position] ^= mask
            cases.append((f"byte {position} ^ {mask:#x}", bytes(flipped)))
    emb = ["model", "embedding"]
    edits = {
        "metadata not JSON": lambda d: header_edited(d, lambda h: h["__metadata__"].update(qrnn_speech="{not json")),
        "no qrnn_speech metadata": lambda d: header_edited(d, lambda h: h.pop("__metadata__")),
        "metadata a list": lambda d: header_edited(d, lambda h: h["__metadata__"].update(qrnn_speech="[1, 2]")),
        "no model": lambda d: edited(d, lambda m: m.pop("model")),
        "no kind (re-signed)": lambda d: edited(d, lambda m: m.pop("kind"), True),
        "no model (re-signed)": lambda d: edited(d, lambda m: m.pop("model"), True),
        "version 3": lambda d: edited(d, lambda m: m.update(version=3)),
        "version 1 (re-signed)": lambda d: edited(d, lambda m: m.update(version=1), True),
        "version 1 without digests": lambda d: edited(d, lambda m: (m.update(version=1), m.pop("sha256"))),
        "version 2 without digests": lambda d: edited(d, lambda m: m.pop("sha256")),
        "another format": lambda d: edited(d, lambda m: m.update(format="other")),
        "an edited out_frac": lambda d: edited(d, lambda m: set_path(m, emb + ["out_frac"], 3)),
        "an edited vocabulary word": lambda d: edited(d, lambda m: m["vocab"].__setitem__(0, "zz")),
        "an edited info note": lambda d: edited(d, lambda m: m["info"].update(note="changed")),
        "a float32 dtype (re-signed)": lambda d: edited(
            d, lambda m: set_path(m, emb + ["m0", "dtype"], "float32"), True
        ),
        "an unknown dtype (re-signed)": lambda d: edited(d, lambda m: set_path(m, emb + ["m0", "dtype"], "int3"), True),
        "a missing tensor (re-signed)": lambda d: edited(
            d, lambda m: set_path(m, emb + ["m0", "tensor"], "nope"), True
        ),
        "a missing field (re-signed)": lambda d: edited(d, lambda m: m["model"]["embedding"].pop("exp"), True),
        "an unknown class (re-signed)": lambda d: edited(d, lambda m: set_path(m, emb + ["class"], "Nope"), True),
        "a wrong code shape (re-signed)": lambda d: edited(
            d, lambda m: set_path(m, emb + ["w_q", "shape"], [41, 16]), True
        ),
        "a short vocabulary (re-signed)": lambda d: edited(d, lambda m: m["vocab"].pop(), True),
        "a float tensor in the file (re-signed)": lambda d: edited(
            header_edited(d, lambda h: h["model.embedding.m0"].update(dtype="F16")), lambda m: None, True
        ),
    }
    cases += [(name, make(data)) for name, make in edits.items()]
    return cases


def test_the_good_file_and_a_re_signed_copy_load_in_both_runtimes(good):
    load_integer_checkpoint(good)
    NativeLanguageModel(good)
    copy = good.with_name("copy.int.safetensors")
    copy.write_bytes(edited(good.read_bytes(), lambda m: m["info"].update(note="re-signed"), resign=True))
    load_integer_checkpoint(copy)  # the forger's path works, so the re-signed cases reach the checks behind it
    NativeLanguageModel(copy)


def test_every_mutation_is_refused_with_one_line_by_both_loaders(good, tmp_path):
    cases = mutations(good.read_bytes())
    assert len(cases) > 200
    for number, (name, data) in enumerate(cases):
        path = tmp_path / f"case{number}.int.safetensors"
        path.write_bytes(data)
        with pytest.raises(IntegerCheckpointError) as python_error:
            load_integer_checkpoint(path)
        message = str(python_error.value)
        assert "\n" not in message and str(path) in message, f"{name}: {message}"
        with pytest.raises(NativeRuntimeError) as c_error:
            NativeLanguageModel(path)
        message = str(c_error.value)
        assert "\n" not in message and str(path) in message, f"{name}: {message}"


def test_a_directory_and_a_missing_file_are_named_as_such(tmp_path):
    with pytest.raises(IntegerCheckpointError, match="is a directory"):
        load_integer_checkpoint(tmp_path)
    with pytest.raises(IntegerCheckpointError, match="does not exist"):
        load_integer_checkpoint(tmp_path / "nothing.int.safetensors")
