"""quant=denseshift and quant=irnn_denseshift in the LM: the same quantizable layers with DenseShift weights,
QAT == integer engine bit for bit, packed N-bit codes in the integer checkpoint, the shift kernel equal to the
int8 path, fine-tuning from a float checkpoint, resuming, the weight-freezing metric and config errors."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.engine.checkpoint import load_integer_checkpoint, save_integer_checkpoint
from app.engine.guard import IntegerOnlyGuard
from app.engine.packing import packed_size
from app.engine.shift import use_shift_kernel
from app.errors import UserInputError
from app.models.lm import LSTMLanguageModel
from app.quant.config import QuantConfig
from app.quant.denseshift import DenseShiftWeight, optimizer_parameter_groups, shift_weights
from app.quant.lstm import QuantLSTM
from app.quant.monitor import load_init_weights
from app.tasks.lm import LanguageModelTask
from tests.conftest import compose_config
from train import train

VOCAB = [f"w{i}" for i in range(50)]
PTB_VOCAB_SIZE = 10_000
LATENT_KEY = "lstm.shift_weight_hh_l1.gates"


def tiny_lm(mode: str, **quant) -> LSTMLanguageModel:
    """A 50-word, 16 x 16, 2-layer tied LM; DenseShift modes with 3-bit weights."""
    bits = {"weight_bits": 3} if "denseshift" in mode else {}
    return LSTMLanguageModel(50, 16, 16, 2, 0.0, True, {"mode": mode, **bits, **quant})


def save_lightning_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """What load_init_weights reads from a train.py checkpoint: the task's state dict."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory) -> Path:
    """A float tiny-model checkpoint on the PTB vocabulary (model=tiny: 32 x 32, 2 layers, tied)."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(PTB_VOCAB_SIZE, 32, 32, 2, 0.0, True, {"mode": "float"})
    return save_lightning_checkpoint(model, tmp_path_factory.mktemp("float") / "best.ckpt")


@pytest.fixture(scope="module")
def denseshift_run(ptb_overrides, float_ckpt, tmp_path_factory) -> tuple[Path, dict]:
    """quant=denseshift fine-tuned from the float checkpoint (init=float)."""
    run_dir = tmp_path_factory.mktemp("denseshift_run")
    overrides = [*ptb_overrides, "quant=denseshift", "quant.init=float", f"quant.init_from={float_ckpt}"]
    return run_dir, train(compose_config("train", overrides, run_dir))


@pytest.fixture(scope="module")
def irnn_denseshift_run(ptb_overrides, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("irnn_denseshift_run")
    overrides = [*ptb_overrides, "quant=irnn_denseshift", "quant.pwl_segments=16"]
    return run_dir, train(compose_config("train", overrides, run_dir))


# ---- layers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_qat_lstm_with_denseshift_weights_matches_integer_engine_bit_exact(bidirectional, layer_norm):
    torch.manual_seed(0)
    quant = QuantConfig(mode="irnn_denseshift", weight_bits=3, layer_norm=layer_norm, pwl_segments=16)
    lstm = QuantLSTM(16, 24, num_layers=2, bidirectional=bidirectional, quant=quant).eval()
    gen = torch.Generator().manual_seed(0)
    x_int = torch.randint(-127, 128, (3, 9, 16), generator=gen)
    lengths = torch.tensor([9, 6, 2]) if bidirectional else None
    with torch.no_grad():
        y, (h, c) = lstm(x_int.float() * 2.0**-6, in_frac=6, lengths=lengths)
    engine = lstm.export(in_frac=6)
    assert set(engine.layers[0][0].shift_codes) == {"w_ih", "w_hh"}
    with IntegerOnlyGuard() as guard:
        y_int, (h_int, c_int) = engine(x_int.to(torch.int8), lengths=lengths)
    assert (
        guard.ops > 10
    )  # the LSTM steps may run in csrc/int_lstm.c, which the guard does not see (no float type there: test_int8_gemm)
    assert torch.equal(y_int.long(), torch.round(y * 2**quant.h_frac).long())
    assert torch.equal(h_int.long(), torch.round(h * 2**quant.h_frac).long())
    assert torch.equal(c_int.long(), torch.round(c * 2**quant.cell_frac).long())


def test_denseshift_lstm_is_nn_lstm_on_the_effective_weights():
    torch.manual_seed(0)
    lstm = QuantLSTM(8, 12, num_layers=2, bidirectional=True, quant=QuantConfig(mode="denseshift", weight_bits=2))
    assert not any(name.startswith("weight_") for name, _ in lstm.named_parameters())  # the latents replace them
    reference = torch.nn.LSTM(8, 12, 2, batch_first=True, bidirectional=True)
    state = {k: v for k, v in lstm.state_dict().items() if k.startswith("bias")}
    weights = [name for name in reference.state_dict() if name.startswith("weight")]
    state.update({name: getattr(lstm, f"shift_{name}")().detach() for name in weights})
    reference.load_state_dict(state)
    x, lengths = torch.randn(3, 7, 8), torch.tensor([7, 3, 5])
    assert torch.equal(lstm(x)[0], reference(x)[0])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=7)
    assert torch.equal(lstm(x, lengths=lengths)[0], expected)


@pytest.mark.parametrize("mode", ["denseshift", "irnn_denseshift"])
def test_tied_decoder_shares_the_embedding_denseshift_weight_and_every_latent_trains(mode):
    torch.manual_seed(0)
    model = tiny_lm(mode)
    assert model.decoder.shift_weight is model.embedding.shift_weight
    lstm_weights = {f"lstm.weight_{kind}_l{layer}" for kind in ("ih", "hh") for layer in (0, 1)}
    assert set(shift_weights(model)) == {"embedding.weight", *lstm_weights}
    for module in shift_weights(model).values():  # the LM's init: alpha positive, latents ~ N(0, 1e-3)
        assert bool((module.alpha > 0).all()) and module.gates.abs().max() < 0.01
    logits, _ = model.train()(torch.randint(0, 50, (4, 12)))
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_alpha_is_left_out_of_weight_decay():
    model = tiny_lm("denseshift")
    groups = optimizer_parameter_groups(model)
    alphas = {id(m.alpha) for m in shift_weights(model).values()}
    assert {id(p) for p in groups[1]["params"]} == alphas and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(optimizer_parameter_groups(tiny_lm("irnn"))) == 1


# ---- integer engine: parity, packed checkpoint, shift kernel ---------------------------------------------


@pytest.fixture(scope="module")
def irnn_denseshift_lm():
    torch.manual_seed(0)
    model = tiny_lm("irnn_denseshift", pwl_segments=16)
    with torch.no_grad():
        model.train()(torch.randint(0, 50, (4, 12)))  # calibrates the embedding's range
    return model.eval()


def test_lm_integer_engine_matches_qat_bit_exact(irnn_denseshift_lm):
    tokens = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        logits, _ = irnn_denseshift_lm(tokens)
    engine = irnn_denseshift_lm.export_integer(VOCAB)
    with IntegerOnlyGuard():
        logits_int, _ = engine(tokens)
    assert torch.equal(logits_int.long(), torch.round(logits.double() * 2**engine.logit_frac).long())


def test_packed_checkpoint_round_trip_stores_three_bit_codes(irnn_denseshift_lm, tmp_path):
    engine = irnn_denseshift_lm.export_integer(VOCAB)
    path = tmp_path / "model.int.safetensors"
    save_integer_checkpoint(path, engine, kind="lm", vocab=VOCAB, info={})
    tensors = load_file(str(path))
    weights = {k: v for k, v in tensors.items() if k.endswith((".w_q", ".w_ih", ".w_hh", ".packed"))}
    assert all(k.endswith(".packed") and v.dtype == torch.uint8 for k, v in weights.items())  # no int8 weights
    assert "model.decoder.w_q.packed" not in weights  # tied: stored once, under the embedding
    counts = {
        "model.embedding.w_q.packed": 50 * 16,
        **{f"model.lstm.layers.{i}.0.{w}.packed": 64 * 16 for i in (0, 1) for w in ("w_ih", "w_hh")},
    }
    assert {k: v.numel() for k, v in weights.items()} == {k: packed_size(n, 3) for k, n in counts.items()}
    assert sum(v.numel() for v in weights.values()) == 3 * sum(counts.values()) // 8  # 3/8 of int8
    loaded, _ = load_integer_checkpoint(path)
    assert torch.equal(loaded.lstm.layers[1][0].w_hh, engine.lstm.layers[1][0].w_hh)  # decoded once, to int8
    assert loaded.decoder.w_q.dtype == torch.int8
    tokens = torch.randint(0, 50, (2, 9))
    with IntegerOnlyGuard():
        assert torch.equal(loaded(tokens)[0], engine(tokens)[0])


@pytest.mark.parametrize("stored_bits", [2, 4])
def test_a_packed_checkpoint_whose_stored_bit_width_does_not_match_its_codes_is_one_clear_error(
    irnn_denseshift_lm, tmp_path, stored_bits
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from app.engine.checkpoint import METADATA_DIGEST, METADATA_KEY, IntegerCheckpointError, metadata_digest

    path = tmp_path / "model.int.safetensors"
    save_integer_checkpoint(path, irnn_denseshift_lm.export_integer(VOCAB), kind="lm", vocab=VOCAB, info={})
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    meta["model"]["lstm"]["layers"][0][0]["w_hh"]["bits"] = stored_bits  # 3-bit codes, metadata says otherwise
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(IntegerCheckpointError, match="does not match its sha256 digest") as error:
        load_integer_checkpoint(path)  # version 2: the edit is found by the metadata digest
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    meta["sha256"][METADATA_DIGEST] = metadata_digest(meta)  # the same edit signed anew: the codes themselves refuse it
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(
        IntegerCheckpointError, match=rf"model.lstm.layers.0.0.w_hh \(ShiftCodes\): .*{stored_bits} bits"
    ) as error:
        load_integer_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_shift_kernel_gives_the_int8_paths_logits(irnn_denseshift_lm):
    engine = irnn_denseshift_lm.export_integer(VOCAB)
    tokens = torch.randint(0, 50, (2, 9))
    with IntegerOnlyGuard():
        expected, (h, c) = engine(tokens)
        assert use_shift_kernel(engine) == 4  # embedding, two LSTM directions, decoder
        shifted, (h_s, c_s) = engine(tokens)
    assert torch.equal(shifted, expected) and torch.equal(h_s, h) and torch.equal(c_s, c)
    assert engine.decoder.shift_kernel and engine.lstm.layers[0][0].shift_kernel


def test_four_bit_codes_are_refused_by_the_int8_engine():
    from app.engine.packing import ShiftCodes

    codes = ShiftCodes.pack(torch.zeros(2, 2, dtype=torch.uint8), torch.full((2, 2), 7), bits=4)
    with pytest.raises(ValueError, match="128"):
        codes.to_int8()


# ---- fine-tuning from float, resuming ----------------------------------------------------------------------


@pytest.mark.parametrize("init", ["float", "low_variance"])
def test_init_from_a_float_checkpoint_derives_the_latents(init, tmp_path):
    torch.manual_seed(0)
    source = tiny_lm("float")
    path = save_lightning_checkpoint(source, tmp_path / "float.ckpt")
    model = tiny_lm("irnn_denseshift", init=init)
    load_init_weights(model, path, init=init)
    float_weight = source.lstm.weight_hh_l1.detach()
    derived = model.lstm.shift_weight_hh_l1
    if init == "float":  # the nearest codes of the float weights
        expected = DenseShiftWeight.from_float(float_weight, 3, "float")
        assert torch.equal(derived.integer_weight(), expected.integer_weight())
        assert torch.equal(derived.alpha, expected.alpha)
    else:  # random codes, alpha keeps each channel's rms
        assert derived.gates.abs().max() < 0.01
        rms = derived().detach().pow(2).mean(1).sqrt() / float_weight.pow(2).mean(1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)
    assert model.decoder.shift_weight is model.embedding.shift_weight
    assert torch.equal(model.lstm.bias_ih_l0, source.lstm.bias_ih_l0)


def test_init_from_a_denseshift_checkpoint_loads_its_latents(tmp_path):
    torch.manual_seed(0)
    source = tiny_lm("denseshift")
    path = save_lightning_checkpoint(source, tmp_path / "denseshift.ckpt")
    model = tiny_lm("irnn_denseshift", init="float")  # init would re-derive, but the latents are there
    load_init_weights(model, path, init="float")
    assert torch.equal(model.state_dict()[LATENT_KEY], source.state_dict()[LATENT_KEY])


def test_init_from_a_checkpoint_without_the_weights_is_one_clear_error(tmp_path):
    state = {k: v for k, v in tiny_lm("float").state_dict().items() if k != "lstm.weight_hh_l1"}
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(ValueError, match=r"lacks weights \['lstm.weight_hh_l1'\]"):
        load_init_weights(tiny_lm("denseshift"), path)


def test_denseshift_run_fine_tunes_from_float_and_logs_weight_freezing(denseshift_run):
    run_dir, metrics = denseshift_run
    assert metrics["quant"] == "denseshift" and metrics["engine"] == "qat" and metrics["integer"] is None
    assert math.isfinite(metrics["test_ppl"])  # 4 batches: no quality claim
    quant = metrics["quant_metrics"]
    assert set(quant) == {
        f"{k}/{w}"
        for k in ("freeze", "sign_flip")
        for w in (
            "embedding.weight",
            "lstm.weight_ih_l0",
            "lstm.weight_hh_l0",
            "lstm.weight_ih_l1",
            "lstm.weight_hh_l1",
        )
    }
    assert all(0.0 <= v <= 1.0 for v in quant.values())
    assert all(quant[f"sign_flip/{w}"] <= 1 - quant[f"freeze/{w}"] for w in ("embedding.weight", "lstm.weight_hh_l0"))
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs[0]["quant"] == quant


def test_resuming_restores_the_runs_own_latents(denseshift_run):
    """Lightning resumes by building the task (which derives latents from quant.init_from) and then loading
    the checkpoint's state dict: the trained latents must win, the tied decoder included."""
    _, metrics = denseshift_run
    checkpoint = torch.load(metrics["checkpoint"], weights_only=False)
    task = LanguageModelTask(**checkpoint["hyper_parameters"])
    trained = checkpoint["state_dict"][f"model.{LATENT_KEY}"]
    assert not torch.equal(task.model.state_dict()[LATENT_KEY], trained)  # re-derived from the float weights
    task.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(task.model.state_dict()[LATENT_KEY], trained)
    embedding_sign = checkpoint["state_dict"]["model.embedding.shift_weight.sign"]
    assert torch.equal(task.model.decoder.shift_weight.sign, embedding_sign)


def test_a_denseshift_run_resumes_in_place_and_logs_freezing_for_the_resumed_epoch(
    denseshift_run, ptb_overrides, float_ckpt, tmp_path
):
    run_dir = shutil.copytree(denseshift_run[0], tmp_path / "run")
    overrides = [
        *ptb_overrides,
        "quant=denseshift",
        "quant.init=float",
        f"quant.init_from={float_ckpt}",
        "task.max_epochs=2",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
    ]
    metrics = train(compose_config("train", overrides))  # the optimizer (two parameter groups) resumes too
    assert metrics["epochs"] == 2
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and 0 <= epochs[1]["quant"]["freeze/lstm.weight_hh_l1"] <= 1


def test_irnn_denseshift_run_exports_packed_codes_that_match_the_qat_model(irnn_denseshift_run):
    run_dir, metrics = irnn_denseshift_run
    integer = metrics["integer"]
    # the same int32 logits, scored in float64 by both the QAT task and the engine check: the same perplexity
    assert integer["test_ppl_rel_diff_vs_qat"] == 0.0 and integer["val_ppl_rel_diff_vs_qat"] == 0.0
    assert integer["integer_param_bytes"] < 0.2 * integer["float_param_bytes"]  # float: 32 bits per weight
    assert "freeze/lstm.weight_ih_l0" in metrics["quant_metrics"] and "embedding.range" in metrics["quant_metrics"]
    engine, meta = load_integer_checkpoint(run_dir / "model.int.safetensors")
    assert meta["info"]["quant"]["mode"] == "irnn_denseshift"
    assert engine.embedding.shift_codes["w_q"].bits == 3
    tokens = torch.randint(0, PTB_VOCAB_SIZE, (2, 6))
    with IntegerOnlyGuard():
        expected, _ = engine(tokens)
        use_shift_kernel(engine)
        assert torch.equal(engine(tokens)[0], expected)


# ---- config errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["quant=denseshift", "quant.weight_bits=8"], "quant.weight_bits=8: denseshift supports 2, 3 or 4 bits"),
        (["quant=irnn_denseshift", "quant.weight_bits=4"], "quant.weight_bits=4: irnn_denseshift weights reach"),
        (["quant=denseshift", "quant.init=he"], "quant.init='he' is unknown"),
        (["quant=denseshift", "quant.weight_bits=1"], "quant.weight_bits=1: denseshift supports 2, 3 or 4 bits"),
        (["quant=denseshift", "quant.weight_bits=5"], "quant.weight_bits=5: denseshift supports 2, 3 or 4 bits"),
        (["quant=irnn_denseshift", "quant.weight_bits=1"], "quant.weight_bits=1: irnn_denseshift supports 2 or 3 bits"),
        (["quant=irnn_denseshift", "quant.weight_bits=5"], "quant.weight_bits=5: irnn_denseshift supports 2 or 3 bits"),
        (["quant=irnn", "+quant.decomposition=false"], "quant.decomposition=false: irnn has no DenseShift weights"),
    ],
)
def test_bad_denseshift_config_is_one_clear_error(ptb_overrides, tmp_path, overrides, message):
    with pytest.raises(UserInputError, match=message) as error:
        train(compose_config("train", [*ptb_overrides, *overrides], tmp_path))
    assert "\n" not in str(error.value)
