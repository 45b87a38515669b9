"""The QAT simulation and the torch-op engine equal an independent integer reference (tests/reference/), exactly.

The QAT forward and the engine share their integer code (app.quant calls app.engine's functions), so their
agreement alone proves nothing about that code. tests/reference/ restates the arithmetic from docs/methods.md
and the engine docstrings with numpy int64, imports nothing from app.engine or app.quant, and reads the
integer checkpoint file by hand: a mistake in the shared code (a rounding, a shift, a saturation, a packing
order) makes these tests fail. Inputs: random tensors over whole ranges (ties, saturation included), real
PTB sentences and real FSDD utterances through tiny models.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine.attention import softmax_int
from app.engine.checkpoint import load_integer_checkpoint, save_integer_checkpoint
from app.engine.fixed_point import isqrt, requantize, rounding_right_shift, shift_round
from app.engine.layernorm import layer_norm_int
from app.engine.layers import residual_add
from app.engine.packing import ShiftCodes, pack_codes
from app.engine.pwl import LookupActivation
from app.engine.shift import shift_matmul, use_shift_kernel
from app.export.asr import quantize_features
from app.models.asr import build_asr
from app.models.lm import LSTMLanguageModel
from app.quant.activations import attention_activations
from app.quant.lstm import QuantLSTM
from app.quant.pwl import fit_pwl
from tests.conftest import PTB_DIR, compose_config
from tests.reference import arithmetic as ref
from tests.reference.models import load_reference

REFERENCE_DIR = Path(__file__).with_name("reference")


def to_q(x: torch.Tensor, frac: int) -> torch.Tensor:
    """A QAT float value on the 2^-frac grid as its integer (exact: the values are integers times 2^-frac)."""
    q = x.double() * 2.0**frac
    assert torch.equal(q, torch.round(q)), "QAT value off its grid"
    return q.long()


def assert_same(engine: torch.Tensor, reference: np.ndarray, what: str) -> None:
    got = engine.long().numpy()
    assert got.shape == reference.shape, f"{what}: shape {got.shape} != reference {reference.shape}"
    differ = got != reference
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} of {differ.size} differ, e.g. {got[differ][:5]} vs {reference[differ][:5]}"
    )


def test_the_reference_imports_nothing_from_the_engine_or_the_quant_core():
    for source in REFERENCE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in ("app", "torch")], f"{source.name} imports {names}"


# ---- primitives on random inputs -------------------------------------------------------------------------


def test_requantization_rounds_half_up_and_saturates_as_the_reference_on_random_accumulators_and_exact_ties():
    gen = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**31), 2**31, (4000, 8), generator=gen)
    m0 = torch.randint(2**14, 2**15, (8,), generator=gen)
    shift = torch.tensor([1, 2, 15, 16, 20, 29, 33, 40])
    for lo, hi in ((-128, 127), (-(2**15), 2**15 - 1), (-(2**31), 2**31 - 1)):
        assert_same(
            requantize(acc, m0, shift, lo, hi),
            ref.requantize(acc.numpy(), m0.numpy(), shift.numpy(), lo, hi),
            f"[{lo}, {hi}]",
        )
    ties = torch.arange(-41, 42)  # x * 2^14 / 2^15 = x / 2: every odd x is a tie, on both signs
    half = torch.tensor([2**14])
    assert_same(
        requantize(ties, half, torch.tensor([15]), -128, 127),
        ref.requantize(ties.numpy(), 2**14, 15, -128, 127),
        "ties",
    )
    assert ref.requantize(np.array([-5, -3, 3, 5]), 2**14, 15, -128, 127).tolist() == [-2, -1, 2, 3]  # half up


def test_rounding_shifts_equal_the_reference_for_every_shift():
    x = torch.randint(-(2**40), 2**40, (5000,), generator=torch.Generator().manual_seed(1))
    for s in range(1, 24):
        assert_same(rounding_right_shift(x, s), ref.round_shift(x.numpy(), s), f"shift {s}")
        assert_same(rounding_right_shift(x, torch.full_like(x, s)), ref.round_shift(x.numpy(), s), f"tensor shift {s}")
    for s in range(-6, 7):
        assert_same(shift_round(x >> 8, s), ref.rescale((x >> 8).numpy(), s), f"shift_round {s}")


@pytest.mark.parametrize("kind,in_frac", [("sigmoid", 12), ("tanh", 12), ("tanh", 11), ("exp", 10)])
def test_pwl_tables_equal_the_reference_evaluation_on_their_whole_domain(kind, in_frac):
    for segments in (4, 16, 32):
        table = fit_pwl(kind, in_frac, 15, segments).table
        reference = ref.PWL(
            table.boundaries.numpy(),
            table.slopes.numpy(),
            table.intercepts.numpy(),
            table.slope_frac_bits,
            table.in_min,
            table.in_max,
            table.out_min,
            table.out_max,
        )
        x = torch.arange(table.in_min, table.in_max + 1)
        expected = reference(x.numpy())
        assert_same(table(x), expected, f"{kind} {segments} PWLTable")
        assert_same(LookupActivation(table)(x), expected, f"{kind} {segments} lookup table")


def test_integer_square_root_equals_pythons_exact_isqrt():
    gen = torch.Generator().manual_seed(2)
    n = torch.cat(
        [torch.arange(0, 5000), torch.randint(0, 2**62, (5000,), generator=gen), torch.arange(1, 3000).pow(2) - 1]
    )
    assert_same(isqrt(n), ref.isqrt(n.numpy()), "isqrt")


def test_integer_layer_norm_equals_the_reference_on_random_rows():
    gen = torch.Generator().manual_seed(3)
    for n, spread in ((4, 3), (16, 2**14), (33, 40), (64, 2**15 - 1)):
        x = torch.randint(-spread, spread + 1, (50, n), generator=gen)
        x[0] = 7  # a constant row: variance = eps only
        gamma = torch.randint(-(2**15), 2**15, (n,), generator=gen)
        beta = torch.randint(-2000, 2000, (n,), generator=gen)
        for out_frac, eps_s in ((12, 10995116), (11, 1)):
            got = layer_norm_int(x, gamma, beta, 12, out_frac, eps_s)
            assert_same(got, ref.layer_norm(x.numpy(), gamma.numpy(), beta.numpy(), out_frac, eps_s), f"N={n}")


def test_integer_softmax_equals_the_reference_with_masks_and_extreme_scores():
    _, exp, _ = attention_activations(16)
    exp_ref = ref.PWL(
        exp.boundaries.numpy(),
        exp.slopes.numpy(),
        exp.intercepts.numpy(),
        exp.slope_frac_bits,
        exp.in_min,
        exp.in_max,
        exp.out_min,
        exp.out_max,
    )
    gen = torch.Generator().manual_seed(4)
    scores = torch.randint(-(2**20), 2**20, (64, 19), generator=gen)
    scores[:8] = torch.randint(-3, 3, (8, 19), generator=gen)  # near-uniform rows: many ties
    mask = torch.rand(64, 19, generator=gen) < 0.8
    mask[:, 0] = True
    assert_same(
        softmax_int(scores, mask, LookupActivation(exp)), ref.softmax(scores.numpy(), mask.numpy(), exp_ref), "masked"
    )
    assert_same(
        softmax_int(scores, None, LookupActivation(exp)), ref.softmax(scores.numpy(), None, exp_ref), "unmasked"
    )


def test_quantized_residual_add_equals_the_reference_on_every_grid_pair():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randint(-128, 128, (2, 2000), generator=gen)
    for a_frac, b_frac, out_frac in ((7, 6, 6), (7, 7, 6), (5, 7, 8), (7, 4, 3)):
        got = residual_add(a, a_frac, b, b_frac, out_frac, 8)
        assert_same(
            got, ref.residual_add(a.numpy(), a_frac, b.numpy(), b_frac, out_frac, 8), f"{a_frac},{b_frac}->{out_frac}"
        )


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_denseshift_packing_and_the_shift_kernel_equal_the_reference_decode(bits):
    gen = torch.Generator().manual_seed(bits)
    sign = torch.randint(0, 2, (13, 29), generator=gen, dtype=torch.uint8)  # 377 codes: a padded last group
    exponent = torch.randint(0, 2 ** (bits - 1), (13, 29), generator=gen)
    packed = pack_codes(sign, exponent, bits)
    weights = ref.unpack_denseshift(packed.numpy().tobytes(), bits, [13, 29])
    assert np.array_equal(weights, np.where(sign.numpy() == 1, -1, 1) << exponent.numpy())
    x = torch.randint(-128, 128, (5, 29), generator=gen, dtype=torch.int8)
    assert_same(shift_matmul(x, sign, exponent), ref.dot(x.numpy(), weights), "shift kernel")
    if bits <= 3:
        assert_same(ShiftCodes(packed, bits, [13, 29]).to_int8(), weights, "int8 decode")


# ---- the LSTM: QAT forward, engine and reference on random integer inputs --------------------------------

LSTM_VARIANTS = {
    "irnn": {"mode": "irnn"},
    "irnn_layer_norm": {"mode": "irnn", "layer_norm": True},
    "irnn_denseshift_3bit": {"mode": "irnn_denseshift", "weight_bits": 3},
    "irnn_4bit_weights_6bit_h": {
        "mode": "irnn",
        "weight_bits": 4,
        "act_bits": 6,
        "cell_int_bits": 2,
        "pwl_segments": 8,
    },
}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
def test_lstm_with_lengths_equals_the_reference_in_qat_and_engine(variant, bidirectional, tmp_path):
    torch.manual_seed(6)
    quant = LSTM_VARIANTS[variant]
    lstm = QuantLSTM(12, 8, num_layers=2, bidirectional=bidirectional, quant=_quant(quant)).eval()
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("ln_"):  # gamma in [0.5, 2), beta in [-0.5, 0.5): not the identity
                param.uniform_(0.5, 2.0) if "weight" in name else param.uniform_(-0.5, 0.5)
            else:
                param.uniform_(-1.0, 1.0)  # large gates: the int16 and PWL saturations are reached
    in_frac = 5
    x_q = torch.randint(-128, 128, (3, 7, 12), generator=torch.Generator().manual_seed(7))
    lengths = torch.tensor([7, 4, 1])
    with torch.no_grad():
        qat_out, (qat_h, qat_c) = lstm(x_q.float() * 2.0**-in_frac, in_frac=in_frac, lengths=lengths)
    engine = lstm.export(in_frac)
    path = tmp_path / "lstm.int.safetensors"  # through the file, so the reference reads it independently
    save_integer_checkpoint(path, _lm_around(engine, 12), kind="lm", vocab=None, info={})
    reference = load_reference(path).lstm
    want_out, (want_h, want_c) = reference(x_q.numpy(), lengths=lengths.numpy())
    out, (h, c) = engine(x_q.to(torch.int8), lengths=lengths)
    fmt = engine.formats[-1]
    assert_same(out, want_out, "engine outputs")
    assert_same(h, want_h, "engine h_n")
    assert_same(c, want_c, "engine c_n")
    assert_same(to_q(qat_out, fmt.h_frac), want_out, "QAT outputs")
    assert_same(to_q(qat_h, fmt.h_frac), want_h, "QAT h_n")
    assert_same(to_q(qat_c, fmt.cell_frac), want_c, "QAT c_n")


def _quant(fields: dict):
    from app.quant.config import QuantConfig

    return QuantConfig.from_dict({"name": fields["mode"], **fields})


def _lm_around(lstm, width: int):
    """An integer LM around ``lstm`` (the checkpoint format stores whole models), its other layers zeros."""
    from app.engine.layers import IntEmbedding, IntLinear
    from app.engine.lm import IntegerLanguageModel

    hidden = lstm.layers[-1][0].hidden_size * len(lstm.layers[0])
    ones = lambda n: torch.full((n,), 2**14, dtype=torch.int64)  # noqa: E731
    embedding = IntEmbedding(torch.zeros(2, width, dtype=torch.int8), ones(2), torch.full((2,), 20), 5, 8)
    decoder = IntLinear(torch.zeros(2, hidden, dtype=torch.int8), ones(2), torch.full((2,), 20), None, 7, 16, 32)
    return IntegerLanguageModel(embedding, lstm, decoder, vocab=[])


# ---- whole models on real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptb_sentences() -> tuple[list[str], torch.Tensor]:
    """The PTB training vocabulary and the first four test sentences as token ids (4, 20), <eos>-terminated."""
    if not PTB_DIR.is_dir():
        pytest.fail(f"PTB not found at {PTB_DIR}: set QRNN_DATA_ROOT to the folder holding ptb/")
    vocab = sorted(
        {w for line in (PTB_DIR / "ptb.train.txt").read_text().splitlines() for w in line.split()} | {"<eos>"}
    )
    index = {w: i for i, w in enumerate(vocab)}
    lines = (PTB_DIR / "ptb.test.txt").read_text().splitlines()[:4]
    rows = [[index.get(w, index["<unk>"]) for w in line.split()] + [index["<eos>"]] for line in lines]
    return vocab, torch.tensor([(row * 20)[:20] for row in rows])


LM_VARIANTS = {
    "irnn": {"mode": "irnn"},
    "irnn_layer_norm": {"mode": "irnn", "layer_norm": True},
    "irnn_denseshift_3bit": {"mode": "irnn_denseshift", "weight_bits": 3},
    "irnn_denseshift_2bit_layer_norm": {"mode": "irnn_denseshift", "weight_bits": 2, "layer_norm": True},
}


@pytest.mark.parametrize("variant", sorted(LM_VARIANTS))
def test_lm_on_real_ptb_sentences_qat_engine_and_reference_give_the_same_logits_and_state(
    variant, ptb_sentences, tmp_path
):
    vocab, tokens = ptb_sentences
    torch.manual_seed(8)
    model = LSTMLanguageModel(len(vocab), 16, 16, 2, 0.0, True, {"name": variant, **LM_VARIANTS[variant]})
    with torch.no_grad():
        model.train()(tokens)  # the activation ranges, from the same text
        model.eval()
        qat_logits, (qat_h, qat_c) = model(tokens[:, :12])
        qat_next, _ = model(tokens[:, 12:], (qat_h, qat_c))  # the state carried into a second window
    path = tmp_path / "lm.int.safetensors"
    save_integer_checkpoint(path, model.export_integer(vocab), kind="lm", vocab=vocab, info={})
    reference = load_reference(path)
    want, want_state = reference(tokens[:, :12].numpy())
    want_next, _ = reference(tokens[:, 12:].numpy(), want_state)
    engine, _ = load_integer_checkpoint(path)
    kernels = ["int8 GEMM", "shift kernel"] if "denseshift" in variant else ["int8 GEMM"]
    for kernel in kernels:
        use_shift_kernel(engine, kernel == "shift kernel")
        logits, state = engine(tokens[:, :12])
        assert_same(logits, want, f"engine logits ({kernel})")
        assert_same(state[0], want_state[0], f"engine h ({kernel})")
        assert_same(state[1], want_state[1], f"engine c ({kernel})")
        assert_same(engine(tokens[:, 12:], state)[0], want_next, f"engine second window ({kernel})")
    assert_same(to_q(qat_logits, engine.logit_frac), want, "QAT logits")
    assert_same(to_q(qat_h, model.quant.h_frac), want_state[0], "QAT h")
    assert_same(to_q(qat_c, model.quant.cell_frac), want_state[1], "QAT c")
    assert_same(to_q(qat_next, engine.logit_frac), want_next, "QAT second window")


@pytest.fixture(scope="module")
def fsdd_utterances(fsdd_batch):
    """Three real FSDD test utterances of different lengths (features as training sees them), the vocabulary
    size and the tiny ASR preset."""
    batch, datamodule = fsdd_batch
    keep = torch.argsort(batch["feat_lens"])[[0, 2, -1]]
    short = {"feats": batch["feats"][keep], "feat_lens": batch["feat_lens"][keep], "tokens": batch["tokens"][keep]}
    assert short["feat_lens"].min() < short["feat_lens"].max()  # really padded
    return short, datamodule.tokenizer.vocab_size, dict(compose_config("train", ["model=tiny"]).model.asr)


# The ASR paths: one decoder layer (model=tiny), two (the decoder residual, as conf/model/espresso_wsj has),
# layer norm, DenseShift weights on the shift kernel, 6-bit activations.
ASR_VARIANTS = {
    "irnn": ({"mode": "irnn"}, 1),
    "irnn_2_decoder_layers": ({"mode": "irnn"}, 2),
    "irnn_layer_norm_2_decoder_layers": ({"mode": "irnn", "layer_norm": True}, 2),
    "irnn_denseshift_3bit_shift_kernel": ({"mode": "irnn_denseshift", "weight_bits": 3}, 2),
    "irnn_6bit_activations": ({"mode": "irnn", "act_bits": 6}, 1),
}


@pytest.mark.parametrize("variant", sorted(ASR_VARIANTS))
def test_asr_on_real_fsdd_speech_qat_engine_and_reference_agree_on_keys_ctc_attention_and_logits(
    variant, fsdd_utterances, tmp_path
):
    batch, vocab_size, tiny = fsdd_utterances
    quant, decoder_layers = ASR_VARIANTS[variant]
    torch.manual_seed(9)
    preset = {"name": "tiny", "asr": {**tiny, "decoder_layers": decoder_layers}}
    model = build_asr(preset, {"name": variant, **quant}, batch["feats"].shape[-1], vocab_size)
    with torch.no_grad():  # activation ranges from the same speech, as QAT sets them
        model.train()(batch["feats"], batch["feat_lens"], batch["tokens"][:, :-1])
    model.eval()
    path = tmp_path / "asr.int.safetensors"
    save_integer_checkpoint(path, model.export_integer(), kind="asr", vocab=None, info={})
    reference = load_reference(path)
    engine, _ = load_integer_checkpoint(path)
    if "shift_kernel" in variant:
        assert use_shift_kernel(engine) > 0
    feats_q = np.clip(np.floor(batch["feats"].double().numpy() * 2.0**reference.feat_frac + 0.5), -128, 127).astype(
        np.int64
    )
    assert_same(quantize_features(batch["feats"], engine.feat_frac), feats_q, "host feature rounding")
    lengths = batch["feat_lens"]

    want = reference.encode(feats_q, lengths.numpy())
    memory = engine.encode(torch.from_numpy(feats_q).to(torch.int8), lengths)
    with torch.no_grad():
        encoded = model.encode(batch["feats"], lengths)
    assert_same(memory.keys, want.keys, "engine encoder output")
    assert_same(memory.keys_proj, want.keys_proj, "engine attention keys")
    assert_same(to_q(encoded.output, model.key_frac), want.keys, "QAT encoder output")
    if model.ctc is not None:
        assert_same(engine.ctc_logits(memory), reference.ctc_logits(want), "engine CTC logits")
        with torch.no_grad():
            assert_same(
                to_q(model.ctc_logits(encoded), engine.ctc.out_frac), reference.ctc_logits(want), "QAT CTC logits"
            )

    tokens = torch.tensor([1, 5, 9])
    state, want_state, qat_state = engine.init_state(3), reference.init_state(3), None
    for step in range(3):
        logits, state = engine.decode_step(tokens, state, memory)
        want_logits, want_state, want_probs = reference.decode_step(tokens.numpy(), want_state, want)
        with torch.no_grad():
            qat_logits, qat_state = model.decode_step(tokens, qat_state, encoded.memory)
            query = qat_state[-1][0][-1]  # the last decoder layer's h (without a residual: its output)
        assert_same(logits, want_logits, f"engine logits, step {step}")
        assert_same(to_q(qat_logits, engine.logit_frac), want_logits, f"QAT logits, step {step}")
        for layer, ((h, c), (want_h, want_c)) in enumerate(zip(state, want_state)):
            assert_same(h, want_h, f"engine decoder h, layer {layer}")
            assert_same(c, want_c, f"engine decoder c, layer {layer}")
        if decoder_layers == 1:  # the query is h itself: the engine's and the QAT attention probabilities
            query_q = query.mul(2.0**model.quant.h_frac).round().to(torch.int8)
            _, probs = engine.attention(query_q, memory.keys, memory.keys_proj, memory.mask)
            assert_same(probs, want_probs, f"engine attention probabilities, step {step}")
            with torch.no_grad():
                _, qat_probs = model.attention(query, encoded.memory, model.query_frac)
            assert_same(to_q(qat_probs, 15), want_probs, f"QAT attention probabilities, step {step}")
        tokens = logits.argmax(dim=-1)
