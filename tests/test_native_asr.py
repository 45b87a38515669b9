"""The native speech recognizer (app.engine.native.NativeASRModel, qrnn-run asr) against the torch-op engine
on real FSDD audio, bit for bit: encoder output, CTC logits, decoder steps of several hypotheses, greedy
tokens, CTC best path; with layer norm and a two-layer decoder (its residual), 1 and 2 threads, every kernel path."""

from __future__ import annotations

import subprocess

import pytest
import torch

from app.data.text import BOS_ID, EOS_ID, PAD_ID
from app.decode.search import ctc_greedy_search
from app.engine.checkpoint import load_integer_checkpoint, save_integer_checkpoint
from app.engine.native import CSRC, NativeASRModel, NativeRuntimeError, isa_supported
from app.export.asr import quantize_features
from app.models.asr import build_asr
from tests.conftest import compose_config

ISAS = [isa for isa in ("scalar", "avx2", "avx512vnni") if isa_supported(isa)]
VARIANTS = {
    "irnn": ({"mode": "irnn"}, 1),
    "irnn_layer_norm_2_decoder_layers": ({"mode": "irnn", "layer_norm": True}, 2),
}


@pytest.fixture(scope="module")
def fsdd(fsdd_batch):
    """Real FSDD test utterances, the vocabulary size and the tiny ASR preset."""
    batch, datamodule = fsdd_batch
    return batch, datamodule.tokenizer.vocab_size, compose_config("train", ["model=tiny"]).model.asr


@pytest.fixture(scope="module")
def checkpoints(fsdd, tmp_path_factory):
    batch, vocab_size, tiny = fsdd
    out = tmp_path_factory.mktemp("native-asr")
    paths = {}
    for name, (quant, decoder_layers) in VARIANTS.items():
        torch.manual_seed(0)
        preset = {"name": "tiny", "asr": {**tiny, "decoder_layers": decoder_layers}}
        model = build_asr(preset, {"name": name, **quant}, batch["feats"].shape[-1], vocab_size)
        with torch.no_grad():  # activation ranges from real speech, as QAT sets them
            model.train()(batch["feats"], batch["feat_lens"], batch["tokens"][:, :-1])
        paths[name] = out / f"{name}.int.safetensors"
        save_integer_checkpoint(paths[name], model.eval().export_integer(), "asr", None, {})
    return paths


def utterances(batch, feat_frac: int, count: int = 3) -> list[torch.Tensor]:
    """The first real utterances as int8 features (1, T, F), without their padding."""
    feats = quantize_features(batch["feats"], feat_frac)
    return [feats[i : i + 1, : int(batch["feat_lens"][i])] for i in range(count)]


def reference_greedy(engine, memory, max_len: int) -> list[int]:
    tokens, state, out = torch.tensor([BOS_ID]), engine.init_state(1), []
    for _ in range(max_len):
        logits, state = engine.decode_step(tokens, state, memory)
        tokens = logits.argmax(dim=-1)
        if int(tokens) == EOS_ID:
            break
        out.append(int(tokens))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_recognizer_equals_the_torch_engine_bit_for_bit_on_real_speech(variant, checkpoints, fsdd):
    batch = fsdd[0]
    reference, _ = load_integer_checkpoint(checkpoints[variant])
    for isa in ISAS:
        for threads in (1, 2):
            native = NativeASRModel(checkpoints[variant], threads=threads, isa=isa)
            for feats in utterances(batch, reference.feat_frac):
                case = f"{variant} {isa} threads={threads} frames={feats.shape[1]}"
                want = reference.encode(feats, torch.tensor([feats.shape[1]]))
                got = native.encode(feats)
                assert torch.equal(native.keys(got), want.keys), case
                assert torch.equal(native.ctc_logits(got), reference.ctc_logits(want)), case
                tokens = torch.tensor([BOS_ID, 5, 9])  # three hypotheses, one memory
                want_state, got_state = reference.init_state(3), native.init_state(3)
                beams = want.select(torch.zeros(3, dtype=torch.int64))
                for _ in range(4):
                    want_logits, want_state = reference.decode_step(tokens, want_state, beams)
                    got_logits, got_state = native.decode_step(tokens, got_state, got)
                    assert got_logits.dtype == torch.int32 and torch.equal(got_logits, want_logits), case
                    for (wh, wc), (gh, gc) in zip(want_state, got_state):
                        assert torch.equal(gh, wh) and torch.equal(gc, wc), case
                    tokens = want_logits.argmax(dim=-1)
                assert native.greedy(got, BOS_ID, EOS_ID, 12) == reference_greedy(reference, want, 12), case
                best_path = ctc_greedy_search(reference.ctc_logits(want), want.lengths, PAD_ID)[0]
                assert native.ctc_best_path(got, PAD_ID) == best_path, case


def test_cli_decodes_real_speech_as_the_python_engine(checkpoints, fsdd, tmp_path):
    build = tmp_path / "build"
    result = subprocess.run(["make", "-C", str(CSRC), f"BUILD={build}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path = checkpoints["irnn"]
    reference, _ = load_integer_checkpoint(path)
    files, want, want_ctc = [], [], []
    for i, feats in enumerate(utterances(fsdd[0], reference.feat_frac)):
        files.append(tmp_path / f"utt{i}.i8")
        files[-1].write_bytes(feats[0].contiguous().numpy().tobytes())
        memory = reference.encode(feats, torch.tensor([feats.shape[1]]))
        want.append(reference_greedy(reference, memory, 12))
        want_ctc += ctc_greedy_search(reference.ctc_logits(memory), memory.lengths, PAD_ID)
    args = ["--bos", str(BOS_ID), "--eos", str(EOS_ID), "--max-len", "12", "--threads", "2"]
    result = subprocess.run(
        [str(build / "qrnn-run"), "asr", str(path), *args, *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    got = [[int(t) for t in line.split()[1:]] for line in result.stdout.splitlines()]
    assert got == want
    result = subprocess.run(
        [str(build / "qrnn-run"), "asr", str(path), "--ctc", "--blank", str(PAD_ID), *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    got_ctc = [[int(t) for t in line.split()[1:]] for line in result.stdout.splitlines()]
    assert got_ctc == want_ctc and any(want_ctc) and got_ctc != got
    bad = tmp_path / "odd.i8"
    bad.write_bytes(b"\x01" * 7)  # not a whole number of frames
    result = subprocess.run([str(build / "qrnn-run"), "asr", str(path), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "not frames x" in result.stderr and len(result.stderr.splitlines()) == 1


def test_native_recognizer_refuses_bad_input_with_one_line(checkpoints, fsdd):
    native = NativeASRModel(checkpoints["irnn"])
    with pytest.raises(NativeRuntimeError, match="features must be"):
        native.encode(torch.zeros(5, native.feat_dim + 1, dtype=torch.int8))
    with pytest.raises(TypeError, match="int8"):
        native.encode(torch.zeros(5, native.feat_dim))
    memory = native.encode(torch.zeros(5, native.feat_dim, dtype=torch.int8))
    with pytest.raises(NativeRuntimeError, match="outside the vocabulary"):
        native.decode_step(torch.tensor([native.vocab_size]), native.init_state(1), memory)
    with pytest.raises(NativeRuntimeError, match=r"^blank id -1 is outside the vocabulary"):
        native.ctc_best_path(memory, -1)
    with pytest.raises(NativeRuntimeError, match="kind asr"):
        from app.engine.native import NativeLanguageModel

        NativeLanguageModel(checkpoints["irnn"])
