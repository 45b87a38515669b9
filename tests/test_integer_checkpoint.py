"""Integer checkpoints: self-describing, round-trip exact, verified by their SHA-256 digests, and every malformed
file refused with one IntegerCheckpointError line that names the file and the fix.

tests/test_checkpoint_fuzz.py fuzzes the bytes of a file (both loaders). Here the edits are also *signed anew*
(digests recomputed, as a buggy writer would sign its own output), so each check behind the digests is reached:
dtypes, shapes, missing fields, PWL domains, layer-norm layout; and version 1 files are refused, with the way
to export them again.
"""

import hashlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from app.engine.checkpoint import (
    DIGESTS_KEY,
    METADATA_DIGEST,
    METADATA_KEY,
    IntegerCheckpointError,
    load_integer_checkpoint,
    metadata_digest,
    save_integer_checkpoint,
)
from app.engine.guard import IntegerOnlyGuard
from app.models.asr import AttentionASR
from app.models.lm import LSTMLanguageModel

VOCAB = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="module")
def qat_model():
    torch.manual_seed(0)
    model = LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "irnn"})
    with torch.no_grad():
        model.train()(torch.randint(0, 50, (4, 12)))  # calibrates the embedding's range
    return model.eval()


def test_integer_checkpoint_round_trip_is_exact(qat_model, tmp_path):
    engine = qat_model.export_integer(VOCAB)
    path = tmp_path / "model.int.safetensors"
    stored = save_integer_checkpoint(path, engine, kind="lm", vocab=VOCAB, info={"quant": "irnn"})
    loaded, meta = load_integer_checkpoint(path)
    assert meta["kind"] == "lm" and meta["vocab"] == VOCAB and meta["info"] == {"quant": "irnn"}
    tokens = torch.randint(0, 50, (3, 10))
    with IntegerOnlyGuard():
        a, _ = engine(tokens)
        b, _ = loaded(tokens)
    assert torch.equal(a, b)
    float_bytes = sum(p.numel() * 4 for p in qat_model.parameters())
    assert stored < 0.5 * float_bytes  # int8 weights (tiny model: per-channel scales weigh more)


def test_integer_checkpoint_describes_every_tensor(qat_model, tmp_path):
    path = tmp_path / "model.int.safetensors"
    save_integer_checkpoint(path, qat_model.export_integer(VOCAB), kind="lm", vocab=VOCAB, info={})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["qrnn_speech"])
        keys = set(f.keys())
        dtypes = {k: f.get_tensor(k).dtype for k in keys}
    assert (
        meta["format"] == "qrnn-speech-integer"
        and meta["version"] == 2
        and set(meta["sha256"]) == keys | {"__metadata__"}
    )
    assert all(not d.is_floating_point for d in dtypes.values())
    assert dtypes["model.embedding.w_q"] == torch.int8
    decoder = meta["model"]["decoder"]
    assert decoder["class"] == "IntLinear" and decoder["out_frac"] == 16 and decoder["m0"]["tensor"] in keys


def test_loading_a_float_checkpoint_or_foreign_file_fails_with_one_clear_line(qat_model, tmp_path):
    torch_file = tmp_path / "float.ckpt"
    torch.save(qat_model.state_dict(), torch_file)
    with pytest.raises(IntegerCheckpointError, match="not an integer checkpoint"):
        load_integer_checkpoint(torch_file)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(IntegerCheckpointError, match="without qrnn-speech-integer metadata"):
        load_integer_checkpoint(foreign)
    with pytest.raises(IntegerCheckpointError, match="does not exist"):
        load_integer_checkpoint(tmp_path / "missing.safetensors")


def test_truncated_integer_checkpoint_is_rejected(qat_model, tmp_path):
    path = tmp_path / "model.int.safetensors"
    save_integer_checkpoint(path, qat_model.export_integer(VOCAB), kind="lm", vocab=VOCAB, info={})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegerCheckpointError):
        load_integer_checkpoint(path)


def test_float_model_cannot_be_exported():
    model = LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": "float"})
    with pytest.raises(ValueError, match="float activations"):
        model.export_integer(VOCAB)


# ---- version 2: digests, and every malformed file in one line ---------------------------------------------


def assert_one_line_refusal(path: Path, what: str) -> str:
    """Loading ``path`` raises IntegerCheckpointError (no other exception, no silent load): one line that names the
    file and says what to do."""
    with pytest.raises(IntegerCheckpointError) as error:
        load_integer_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message, f"{what}: {message}"
    assert re.search(r"export it again|pass <run>", message), f"{what}: no fix in {message}"
    assert "-m app.export" not in message, (
        f"{what}: names a command that does not exist"
    )  # app.export is a package, no command
    return message


def read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    return meta, load_file(str(path))


def write_signed(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``meta`` and ``tensors`` with every digest recomputed, as the writer signs a file."""
    meta = json.loads(json.dumps(meta))
    meta[DIGESTS_KEY] = {
        name: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for name, t in tensors.items()
    }
    meta[DIGESTS_KEY][METADATA_DIGEST] = metadata_digest(meta)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


def node(tree: dict, dotted: str) -> dict:
    for key in dotted.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory) -> Path:
    """A small layer-norm LM checkpoint (layer norm adds the fields a loader must find together)."""
    torch.manual_seed(1)
    model = LSTMLanguageModel(30, 16, 16, 2, 0.0, True, {"mode": "irnn", "layer_norm": True})
    with torch.no_grad():
        model.train()(torch.randint(0, 30, (3, 10)))
    path = tmp_path_factory.mktemp("lm") / "model.int.safetensors"
    vocab = [f"w{i}" for i in range(30)]
    save_integer_checkpoint(
        path, model.eval().export_integer(vocab), "lm", vocab, {"source_checkpoint": "run/checkpoints/best.ckpt"}
    )
    return path


@pytest.fixture(scope="module")
def asr_file(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    model = AttentionASR(10, 12, 8, 8, 2, 8, 8, 2, 8, 0.0, True, True, {"name": "irnn", "mode": "irnn"})
    with torch.no_grad():
        model.train()(torch.randn(2, 20, 10), torch.tensor([20, 13]), torch.randint(0, 12, (2, 4)))
    path = tmp_path_factory.mktemp("asr") / "model.int.safetensors"
    save_integer_checkpoint(path, model.eval().export_integer(), "asr", None, {})
    return path


LSTM0 = "model.lstm.layers.0.0"
# Metadata edits that keep the JSON well-formed; each is signed anew, so the check behind the digests must find it.
LM_METADATA_EDITS: dict[str, Callable[[dict], None]] = {
    "no model": lambda m: m.pop("model"),
    "no kind": lambda m: m.pop("kind"),
    "model not an object": lambda m: m.update(model=[1]),
    "an unknown class": lambda m: node(m, "model.embedding").update({"class": "IntNothing"}),
    "a missing field": lambda m: node(m, "model.embedding").pop("exp"),
    "an unexpected field": lambda m: node(m, "model.embedding").update(extra=1),
    "a float32 dtype": lambda m: node(m, "model.embedding.m0").update(dtype="float32"),
    "an unknown dtype": lambda m: node(m, "model.embedding.m0").update(dtype="int3"),
    "no dtype": lambda m: node(m, "model.embedding.m0").pop("dtype"),
    "a tensor that is not in the file": lambda m: node(m, "model.embedding.m0").update(tensor="nowhere"),
    "a narrower dtype than the values": lambda m: node(m, "model.lstm.layers.0.0.w_ih_m0").update(dtype="int8"),
    "a PWL domain beyond int16": lambda m: node(m, "model.lstm.acts.sigmoid").update(in_min=-(2**40)),
    "an empty PWL domain": lambda m: node(m, "model.lstm.acts.sigmoid").update(in_min=5, in_max=4),
    "a format too few": lambda m: node(m, "model.lstm.formats").pop(),
    "no layers": lambda m: node(m, "model.lstm").update(layers=[]),
    "a cell layer norm dropped": lambda m: node(m, "model.lstm.layers.1.0").update(ln_cell=None),
    "a layer-norm bias dropped": lambda m: node(m, "model.lstm.layers.0.0").update(bias_q12=None),
    "an output shift below one": lambda m: node(m, "model.decoder").update(out_frac=60),
    "a zero-bit output": lambda m: node(m, "model.decoder").update(out_bits=0),
    "a short vocabulary": lambda m: m["vocab"].pop(),
    "a vocabulary that is not a list": lambda m: m.update(vocab="w0 w1"),
    "version 3": lambda m: m.update(version=3),
    "version 2.0": lambda m: m.update(version=2.0),
    "version true": lambda m: m.update(version=True),
    "another format": lambda m: m.update(format="qrnn-speech-float"),
}
# Tensor edits, signed anew: values the metadata's dtypes and shapes do not allow.
LM_TENSOR_EDITS: dict[str, Callable[[dict[str, torch.Tensor]], None]] = {
    "a float32 tensor": lambda t: t.update({"model.embedding.m0": t["model.embedding.m0"].float()}),
    "an int8 weight holding 300": lambda t: t.update(
        {f"{LSTM0}.w_ih": t[f"{LSTM0}.w_ih"].to(torch.int16).index_fill(1, torch.tensor([0]), 300)}
    ),
    "a per-channel multiplier of one entry (would broadcast)": lambda t: t.update(
        {"model.embedding.m0": t["model.embedding.m0"][:1].clone()}
    ),
    "a transposed recurrent weight": lambda t: t.update({f"{LSTM0}.w_hh": t[f"{LSTM0}.w_hh"].t().contiguous()}),
    "a recurrent weight of another width": lambda t: t.update(
        {f"{LSTM0}.w_hh": t[f"{LSTM0}.w_hh"][:, :-1].contiguous()}
    ),
    "an embedding narrower than the LSTM input": lambda t: t.update(
        {"model.embedding.w_q": t["model.embedding.w_q"][:, :-2].contiguous()}
    ),
    "a PWL table one slope short": lambda t: t.update(
        {"model.lstm.acts.sigmoid.slopes": t["model.lstm.acts.sigmoid.slopes"][:-1].clone()}
    ),
    "PWL boundaries out of order": lambda t: t.update(
        {"model.lstm.acts.sigmoid.boundaries": t["model.lstm.acts.sigmoid.boundaries"].flip(0)}
    ),
    "a layer-norm gamma of the wrong size": lambda t: t.update(
        {f"{LSTM0}.ln_cell.gamma_q": t[f"{LSTM0}.ln_cell.gamma_q"][:-1].clone()}
    ),
    "a bias of the wrong size": lambda t: t.update(
        {"model.decoder.bias_acc": t["model.decoder.bias_acc"][:-3].clone()}
    ),
}


@pytest.mark.parametrize("edit", sorted(LM_METADATA_EDITS))
def test_a_signed_metadata_edit_is_refused_in_one_line(lm_file, tmp_path, edit):
    meta, tensors = read(lm_file)
    LM_METADATA_EDITS[edit](meta)
    path = tmp_path / "edited.int.safetensors"
    write_signed(path, meta, tensors)
    assert_one_line_refusal(path, edit)


@pytest.mark.parametrize("edit", sorted(LM_TENSOR_EDITS))
def test_a_signed_tensor_edit_is_refused_in_one_line(lm_file, tmp_path, edit):
    meta, tensors = read(lm_file)
    LM_TENSOR_EDITS[edit](tensors)
    path = tmp_path / "edited.int.safetensors"
    write_signed(path, meta, tensors)
    assert_one_line_refusal(path, edit)


def test_a_file_signed_anew_without_edits_loads_and_equals_the_original(lm_file, tmp_path):
    meta, tensors = read(lm_file)
    path = tmp_path / "resigned.int.safetensors"
    write_signed(
        path, meta, tensors
    )  # the test's signing is the writer's: the edits above are refused for what they are
    tokens = torch.randint(0, 30, (2, 6))
    assert torch.equal(load_integer_checkpoint(path)[0](tokens)[0], load_integer_checkpoint(lm_file)[0](tokens)[0])


def test_version_1_files_are_refused_with_the_way_to_export_them_again(lm_file, tmp_path):
    meta, tensors = read(lm_file)
    meta["version"] = 1
    meta.pop(DIGESTS_KEY)
    path = tmp_path / "v1.int.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    message = assert_one_line_refusal(path, "version 1")
    assert "version 1" in message and "train.py writes <run>/model.int.safetensors" in message
    assert "app.export.lm.export_integer_lm" in message and "run/checkpoints/best.ckpt" in message  # its source


def test_a_version_digit_changed_in_place_does_not_switch_the_checks_off(lm_file, tmp_path):
    data = lm_file.read_bytes()
    marker = b'\\"version\\": 2'  # inside the JSON string that holds the metadata
    assert data.count(marker) == 1
    for digit in b"0134":
        path = tmp_path / f"version{chr(digit)}.int.safetensors"
        path.write_bytes(data.replace(marker, marker[:-1] + bytes([digit])))
        assert_one_line_refusal(path, f"version digit {chr(digit)}")


@pytest.mark.parametrize("which", ["lm", "asr"])
def test_every_tensor_changed_in_place_and_every_digit_of_the_metadata_are_refused(which, lm_file, asr_file, tmp_path):
    """One byte of each tensor, and each metadata digit bumped (the JSON stays valid), written in place."""
    source = lm_file if which == "lm" else asr_file
    data = source.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__")
    cases = []
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        for offset in {begin, (begin + end) // 2, end - 1}:
            position = 8 + header_len + offset
            cases.append((f"{name} byte {offset - begin}", position, data[position] ^ 0x01))
    meta_start = data.index(b"qrnn_speech")
    digits = [i for i in range(meta_start, 8 + header_len) if chr(data[i]).isdigit()]
    cases += [
        (f"metadata digit at {i}", i, ord("0") + (data[i] - ord("0") + 1) % 10)
        for i in digits[:: max(1, len(digits) // 60)]
    ]
    assert len(cases) > 60
    for number, (what, position, value) in enumerate(cases):
        changed = bytearray(data)
        changed[position] = value
        path = tmp_path / f"case{number}.int.safetensors"
        path.write_bytes(bytes(changed))
        assert_one_line_refusal(path, what)


def test_a_signed_asr_file_with_a_conv_width_that_does_not_fit_is_refused(asr_file, tmp_path):
    meta, tensors = read(asr_file)
    tensors["model.conv.1.w_q"] = tensors["model.conv.1.w_q"][:, :-3].contiguous()  # 3 frames of one channel fewer
    path = tmp_path / "edited.int.safetensors"
    write_signed(path, meta, tensors)
    assert_one_line_refusal(path, "conv width")


def test_the_loader_names_a_directory_a_missing_file_and_a_foreign_file_with_the_fix(tmp_path):
    assert "is a directory" in assert_one_line_refusal(tmp_path, "directory")
    assert "does not exist" in assert_one_line_refusal(tmp_path / "none.int.safetensors", "missing")
    (tmp_path / "junk.int.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "not a readable safetensors file" in assert_one_line_refusal(tmp_path / "junk.int.safetensors", "junk")
