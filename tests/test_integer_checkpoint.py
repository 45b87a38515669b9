"""Integer checkpoints: self-describing, round-trip exact, clear errors on foreign files."""
import json

import pytest
import torch
from safetensors.torch import save_file

from app.engine.checkpoint import IntegerCheckpointError, load_integer_checkpoint, save_integer_checkpoint
from app.engine.guard import IntegerOnlyGuard
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
    assert meta["format"] == "qrnn-speech-integer" and meta["version"] == 2 and set(meta["sha256"]) == keys | {"__metadata__"}
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
