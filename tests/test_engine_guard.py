"""The guard that proves integer-only execution catches floats."""

import pytest
import torch

from app.engine.guard import FloatOperationError, IntegerOnlyGuard


def test_guard_rejects_float_tensor_creation_and_float_ops():
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            torch.ones(3)
    x = torch.arange(4)
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            _ = x * 0.5
    y = torch.ones(2)
    with pytest.raises(FloatOperationError):
        with IntegerOnlyGuard():
            _ = y + 1


def test_guard_allows_integer_ops():
    with IntegerOnlyGuard() as guard:
        x = torch.arange(10, dtype=torch.int64)
        _ = torch._int_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(3, 2, dtype=torch.int8))
        _ = (x * 3 + 1) >> 1
    assert guard.ops >= 4


# ---- the guard fires on floats slipped into real engine paths -------------------------------------------


def _tiny_lm_engine():
    from app.models.lm import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 16, 16, 2, 0.0, True, {"mode": "irnn"})
    with torch.no_grad():
        model.train()(torch.randint(0, 30, (2, 8)))
    return model.eval().export_integer([str(i) for i in range(30)])


def test_guard_fails_when_a_float_is_slipped_into_the_lm_engine(monkeypatch):
    import pytest

    from app.engine import fixed_point
    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    engine = _tiny_lm_engine()
    tokens = torch.randint(0, 30, (2, 5))
    with IntegerOnlyGuard() as guard:
        engine(tokens)  # the real path passes
    assert guard.ops > 0
    real = fixed_point.Requantizer.__call__

    def float_rounding(self, acc):  # the same result through float math: exactly what must be caught
        return torch.round(acc.double() * self.m0 / 2.0**self.shift).long().clamp(self.lo, self.hi)

    monkeypatch.setattr(fixed_point.Requantizer, "__call__", float_rounding)
    with pytest.raises(FloatOperationError), IntegerOnlyGuard():
        engine(tokens)
    monkeypatch.setattr(fixed_point.Requantizer, "__call__", real)
    from app.engine.layers import IntLinear

    monkeypatch.setattr(IntLinear, "from_accumulator", lambda self, acc: (acc * 0.5).long())  # a Python float scalar
    with pytest.raises(FloatOperationError), IntegerOnlyGuard():
        engine(tokens)


def test_guard_refuses_a_registered_op_that_computes_in_float_inside():
    import pytest

    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    lib = torch.library.Library("qrnn_guard_test", "DEF")
    lib.define("hidden_float(Tensor x) -> Tensor")
    lib.impl("hidden_float", lambda x: (x.double() * 1.5).long(), "CPU")  # integer in, integer out, float inside
    x = torch.arange(4)
    assert torch.equal(torch.ops.qrnn_guard_test.hidden_float(x), torch.tensor([0, 1, 3, 4]))
    with pytest.raises(FloatOperationError, match="not a vetted integer kernel"), IntegerOnlyGuard():
        torch.ops.qrnn_guard_test.hidden_float(x)


# ---- Python numbers, registered ops, the ASR engine, and the whole integer ASR decode -----------------------


def test_guard_refuses_python_float_arguments_and_float_math_on_values_taken_out_of_tensors():
    import math

    import pytest

    from app.engine.guard import FloatOperationError, GuardedInt, IntegerOnlyGuard

    t = torch.arange(5)
    slips = {
        "a Python float argument": lambda: torch.full_like(t, 2.5),  # truncates into an int64 tensor
        "float(tensor)": lambda: float(t.sum()),
        "a numpy view": lambda: t.numpy(),
        "item() times a float": lambda: t.max().item() * 0.5,
        "item() divided": lambda: t.max().item() / 2,
        "tolist() divided": lambda: t.tolist()[3] / 3,
        "math.sqrt of item()": lambda: math.sqrt(t.max().item()),
        "a negative power": lambda: t.max().item() ** -1,
        "float math two steps later": lambda: ((t.max().item() + 3) * 2) / 7,
    }
    for name, slip in slips.items():
        with pytest.raises(FloatOperationError, match=".") as error, IntegerOnlyGuard():
            slip()
        assert "\n" not in str(error.value), name
    with IntegerOnlyGuard():  # integer math on the same values passes and stays watched
        n = (t.max().item() + 3) // 2 << 1
        assert n == 6 and isinstance(n, GuardedInt)
        assert [int(v) for v in t.tolist()] == [0, 1, 2, 3, 4]
    assert t.max().item() / 2 == 2.0  # outside the guard, Python math is the caller's business


def _hidden_float_gemm_library():
    """A registered op ``qrnn_guard_gemm::gemm`` with integer inputs and outputs that computes in float64 inside."""
    lib = torch.library.Library("qrnn_guard_gemm", "DEF")
    lib.define("gemm(Tensor x, Tensor w) -> Tensor")
    lib.impl("gemm", lambda x, w: (x.double() @ w.double().t()).to(torch.int32), "CPU")
    return lib


def test_guard_looks_inside_the_python_wrapper_of_a_vetted_kernel_on_the_real_lm_path(monkeypatch):
    import pytest

    from app.engine import kernels
    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    engine = _tiny_lm_engine()
    tokens = torch.randint(0, 30, (2, 5))
    with IntegerOnlyGuard() as guard:
        want, _ = engine(tokens)
    lib = _hidden_float_gemm_library()
    try:
        monkeypatch.setattr(kernels, "tiled_matmul", lambda x, tiled: torch.ops.qrnn_guard_gemm.gemm(x, tiled.weight))
        got, _ = engine(tokens)
        assert torch.equal(got, want)  # the same integers: only the guard can tell
        with pytest.raises(FloatOperationError, match="not a vetted integer kernel"), IntegerOnlyGuard():
            engine(tokens)
        # even vetted by name, its float inside is found: the guard runs a vetted op's wrapper under itself
        monkeypatch.setattr(
            IntegerOnlyGuard, "INTEGER_KERNELS", IntegerOnlyGuard.INTEGER_KERNELS | {"qrnn_guard_gemm::gemm"}
        )
        with pytest.raises(FloatOperationError, match="float64"), IntegerOnlyGuard():
            engine(tokens)
    finally:
        lib._destroy()
    assert guard.ops > 0


def _tiny_asr_engine():
    from app.models.asr import AttentionASR

    torch.manual_seed(0)
    model = AttentionASR(10, 12, 8, 8, 2, 8, 8, 2, 8, 0.0, True, True, {"name": "irnn", "mode": "irnn"})
    with torch.no_grad():
        model.train()(torch.randn(2, 20, 10), torch.tensor([20, 13]), torch.randint(0, 12, (2, 4)))
    return model.eval().export_integer()


def test_guard_fails_when_a_float_is_slipped_into_the_asr_engine(monkeypatch):
    import pytest

    from app.engine import asr, attention
    from app.engine.guard import FloatOperationError, IntegerOnlyGuard

    engine = _tiny_asr_engine()
    feats = torch.randint(-128, 128, (2, 20, 10), dtype=torch.int8)
    lengths = torch.tensor([20, 13])

    def run() -> torch.Tensor:
        memory = engine.encode(feats, lengths)
        logits, _ = engine.decode_step(torch.tensor([1, 2]), engine.init_state(2), memory)
        return logits

    with IntegerOnlyGuard():
        want = run()
    real_softmax = attention.softmax_int

    def float_softmax(scores, mask, exp_lut):  # probabilities normalized by a float division
        e = real_softmax(scores, mask, exp_lut)
        return (e * 32768 / e.sum(dim=-1, keepdim=True)).floor().long()

    monkeypatch.setattr(attention, "softmax_int", float_softmax)
    with pytest.raises(FloatOperationError), IntegerOnlyGuard():
        run()
    monkeypatch.setattr(attention, "softmax_int", real_softmax)
    monkeypatch.setattr(
        asr, "conv_lengths", lambda n: torch.tensor([(int_n - 3) / 2 + 1 for int_n in n.tolist()]).long()
    )
    assert torch.equal(run(), want)  # (n - 3) / 2 + 1 floored: the same frames
    with pytest.raises(FloatOperationError, match="true division"), IntegerOnlyGuard():
        run()


def test_the_whole_integer_asr_decode_runs_under_the_guard_from_int8_features_on(fsdd_batch, monkeypatch):
    """Greedy search whole (an argmax of int32 logits), and beam search with CTC and a fused integer LM in every
    engine call, run under the guard on real FSDD speech and decode the same words as without it (greedy: as the
    QAT model too); a float slipped into the engine stops the decode."""
    import pytest

    from app.data.text import BOS_ID, EOS_ID
    from app.decode.options import DecodingOptions
    from app.decode.search import LanguageModelFusion, greedy_search, max_decode_length, qat_decoder
    from app.engine import attention
    from app.engine.guard import FloatOperationError, IntegerOnlyGuard
    from app.export.asr import transcribe_integer
    from app.models.asr import build_asr
    from app.models.lm import LSTMLanguageModel
    from tests.conftest import compose_config

    batch, datamodule = fsdd_batch
    tokenizer = datamodule.tokenizer
    torch.manual_seed(0)
    tiny = {"name": "tiny", "asr": compose_config("train", ["model=tiny"]).model.asr}
    model = build_asr(tiny, {"name": "irnn", "mode": "irnn"}, batch["feats"].shape[-1], tokenizer.vocab_size)
    with torch.no_grad():
        model.train()(batch["feats"], batch["feat_lens"], batch["tokens"][:, :-1])
    model.eval()
    engine = model.export_integer()
    pieces = [tokenizer.processor.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    lm_model = LSTMLanguageModel(len(pieces) + 2, 16, 16, 1, 0.0, True, {"name": "irnn", "mode": "irnn"})
    with torch.no_grad():
        lm_model.train()(torch.randint(0, len(pieces) + 2, (2, 6)))
    lm_vocab = [*pieces, "<eos>", "<unk>"]
    lm = LanguageModelFusion.build(lm_model.eval().export_integer(lm_vocab), pieces, BOS_ID, EOS_ID, 0.3)
    options = (tokenizer, DecodingOptions(beam_size=1))

    guard = IntegerOnlyGuard()  # entered by transcribe_integer after the host's feature rounding
    greedy = transcribe_integer(engine, batch, *options, guard=guard)
    assert guard.ops > 1000
    assert greedy == transcribe_integer(engine, batch, *options)
    with torch.no_grad():
        encoded = model.encode(batch["feats"], batch["feat_lens"])
        max_lengths = max_decode_length(encoded.lengths, 1.0)
        qat = greedy_search(qat_decoder(model), encoded.memory, len(batch["texts"]), max_lengths, BOS_ID, EOS_ID)
    assert greedy == [tokenizer.decode(h) for h in qat]

    beam = (tokenizer, DecodingOptions(beam_size=3, ctc_weight=0.3, lm=lm))
    beam_guard = IntegerOnlyGuard()
    assert transcribe_integer(engine, batch, *beam, guard=beam_guard) == transcribe_integer(engine, batch, *beam)
    assert beam_guard.ops > 1000

    real_softmax = attention.softmax_int
    monkeypatch.setattr(attention, "softmax_int", lambda s, m, e: (real_softmax(s, m, e) * 1.0).long())
    for size in (1, 3):
        with pytest.raises(FloatOperationError):
            options = DecodingOptions(beam_size=size, ctc_weight=0.3 if size > 1 else 0.0, lm=lm)
            transcribe_integer(engine, batch, tokenizer, options, guard=IntegerOnlyGuard())
