"""The attention ASR model: padding and attention masks, QAT == integer engine bit for bit, search, WER."""

import jiwer
import pytest
import torch

from app.data.text import BOS_ID, EOS_ID, PAD_ID, normalize_text
from app.decode.options import DecodingOptions
from app.decode.search import (
    beam_search,
    ctc_greedy_search,
    greedy_search,
    integer_decoder,
    max_decode_length,
    qat_decoder,
)
from app.decode.wer import corpus_wer
from app.engine.checkpoint import load_integer_checkpoint, save_integer_checkpoint
from app.engine.guard import IntegerOnlyGuard
from app.errors import UserInputError
from app.export.asr import quantize_features, transcribe_integer
from app.models.asr import build_asr
from app.tasks.asr import SpeechRecognitionTask
from tests.conftest import compose_config

TINY = {"name": "tiny", "asr": compose_config("train", ["model=tiny"]).model.asr}


def _model(mode: str, batch, vocab_size: int, seed: int = 0, conv_layers: int | None = None, quantile: float = 1.0):
    torch.manual_seed(seed)
    preset = TINY if conv_layers is None else {"name": "tiny", "asr": {**TINY["asr"], "conv_layers": conv_layers}}
    model = build_asr(preset, {"name": mode, "mode": mode, "observer_quantile": quantile}, 80, vocab_size)
    if model.quant.integer_activations:  # calibrate the activation grids on real features, as QAT does
        model.train()
        with torch.no_grad():
            model(batch["feats"], batch["feat_lens"], batch["tokens"][:, :-1])
    return model.eval()


@pytest.mark.parametrize("mode", ["float", "irnn"])
def test_padding_does_not_change_an_utterance_and_attention_ignores_padded_frames(fsdd_batch, mode):
    batch, datamodule = fsdd_batch
    model = _model(mode, batch, datamodule.vocab_size)
    short = int(batch["feat_lens"].argmin())
    with torch.no_grad():
        together = model.encode(batch["feats"], batch["feat_lens"])
        alone = model.encode(
            batch["feats"][short : short + 1, : batch["feat_lens"][short]], batch["feat_lens"][short : short + 1]
        )
        frames = int(alone.lengths[0])
        assert int(together.lengths[short]) == frames < together.output.shape[1]
        assert torch.allclose(together.output[short, :frames], alone.output[0], atol=1e-6)
        assert not together.memory.mask[short, frames:].any() and together.memory.mask[short, :frames].all()
        query = torch.randn(len(batch["texts"]), TINY["asr"]["decoder_hidden"]).clamp(-0.99, 0.99)
        args = (model.query_frac,) if mode == "irnn" else ()
        context, probs = model.attention(query, together.memory, *args)
    assert (probs[short, frames:] == 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(len(batch["texts"]), dtype=probs.dtype), atol=1e-3)


# 4x (model=tiny) and 8x subsampling; ranges from the |max| and from a quantile (values above it saturate)
@pytest.mark.parametrize("conv_layers, quantile", [(2, 1.0), (3, 1.0), (2, 0.99)])
def test_integer_engine_equals_the_qat_model_bit_for_bit_under_the_integer_guard(
    fsdd_batch, tmp_path, conv_layers, quantile
):
    batch, datamodule = fsdd_batch
    model = _model("irnn", batch, datamodule.vocab_size, conv_layers=conv_layers, quantile=quantile)
    assert len(model.conv) == conv_layers
    path = tmp_path / "model.int.safetensors"
    save_integer_checkpoint(path, model.export_integer(), kind="asr", vocab=None, info={})
    engine, _ = load_integer_checkpoint(path)
    feats_q = quantize_features(batch["feats"], engine.feat_frac)
    tokens = batch["tokens"][:, :-1]
    with torch.no_grad():
        logits, encoded = model(batch["feats"], batch["feat_lens"], tokens)  # the teacher-forced decoder, all steps
        state = None
        for step in range(tokens.shape[1]):  # the same decoder one step at a time
            step_logits, state = model.decode_step(tokens[:, step], state, encoded.memory)
            assert torch.equal(step_logits, logits[:, step])
    if quantile < 1.0:  # values above the range saturate: the path is exercised, and still equal below
        assert all(conv.observer.pop_saturation_rate() > 0 for conv in model.conv)
    with IntegerOnlyGuard() as guard:
        memory = engine.encode(feats_q, batch["feat_lens"])
        int_state = engine.init_state(len(batch["texts"]))
        steps = []
        for step in range(tokens.shape[1]):
            step_logits, int_state = engine.decode_step(tokens[:, step], int_state, memory)
            steps.append(step_logits)
    assert (
        guard.ops > 10
    )  # the LSTM steps may run in csrc/int_lstm.c, which the guard does not see (no float type there: test_int8_gemm)
    assert torch.equal(memory.keys.long(), torch.round(encoded.output * 2**model.key_frac).long())
    with IntegerOnlyGuard():
        ctc_logits = engine.ctc_logits(memory)  # joint CTC/attention decoding scores these on both engines
    assert ctc_logits.dtype == torch.int32
    assert torch.equal(
        ctc_logits.long(), torch.round(model.ctc_logits(encoded).double() * 2**engine.ctc.out_frac).long()
    )
    int_logits = torch.stack(steps, 1)
    assert int_logits.dtype == torch.int32
    assert torch.equal(int_logits.long(), torch.round(logits.double() * 2**engine.logit_frac).long())


def test_greedy_search_and_beam_search_decode_the_same_words_on_both_engines(fsdd_batch):
    batch, datamodule = fsdd_batch
    model = _model("irnn", batch, datamodule.vocab_size, seed=3)
    engine = model.export_integer()
    size = len(batch["texts"])
    with torch.no_grad():
        encoded = model.encode(batch["feats"], batch["feat_lens"])
        lengths = max_decode_length(encoded.lengths, 0.3)
        greedy = greedy_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID)
        one, three, joint_options = (
            DecodingOptions(beam_size=1, length_norm=0.0),
            DecodingOptions(beam_size=3),
            DecodingOptions(beam_size=3, ctc_weight=0.5),
        )
        beam1 = beam_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID, one)
        beam3 = beam_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID, three)
        joint = beam_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID, joint_options, PAD_ID)
    memory = engine.encode(quantize_features(batch["feats"], engine.feat_frac), batch["feat_lens"])
    assert greedy == beam1  # a beam of one is greedy search
    assert greedy == greedy_search(integer_decoder(engine), memory, size, lengths, BOS_ID, EOS_ID)
    assert beam3 == beam_search(integer_decoder(engine), memory, size, lengths, BOS_ID, EOS_ID, three)
    assert joint == beam_search(integer_decoder(engine), memory, size, lengths, BOS_ID, EOS_ID, joint_options, PAD_ID)
    assert all(len(h) <= n for h, n in zip(greedy + beam3, lengths))
    assert all(EOS_ID not in h and BOS_ID not in h for h in greedy + beam3)


def test_a_beam_of_one_with_ctc_is_a_joint_search_on_both_engines_not_the_attention_argmax(fsdd_batch):
    """beam_size=1 with ctc_weight > 0 keeps the best joint CTC/attention hypothesis per step (ESPnet's beam of
    one); the integer engine's transcribe_integer takes that path too and decodes the same words as QAT."""
    batch, datamodule = fsdd_batch
    model = _model("irnn", batch, datamodule.vocab_size, seed=3)
    engine = model.export_integer()
    size, tokenizer = len(batch["texts"]), datamodule.tokenizer
    joint_one = DecodingOptions(beam_size=1, ctc_weight=0.5)
    assert not joint_one.greedy and joint_one.attention_greedy().greedy
    with torch.no_grad():
        encoded = model.encode(batch["feats"], batch["feat_lens"])
        lengths = max_decode_length(encoded.lengths, 1.0)
        greedy = greedy_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID)
        joint = beam_search(qat_decoder(model), encoded.memory, size, lengths, BOS_ID, EOS_ID, joint_one, PAD_ID)
    assert joint != greedy  # CTC changed at least one utterance's words
    words = [tokenizer.decode(h) for h in joint]
    assert transcribe_integer(engine, batch, tokenizer, joint_one) == words
    assert transcribe_integer(engine, batch, tokenizer, joint_one.attention_greedy()) == [
        tokenizer.decode(h) for h in greedy
    ]


def test_ctc_best_path_merges_repeats_then_drops_blanks_and_stops_at_each_length():
    frames = torch.tensor([[3, 3, 0, 3, 5, 5, 0, 0, 7], [0, 4, 4, 4, 0, 0, 0, 0, 9]])
    logits = torch.nn.functional.one_hot(frames, 10).to(torch.int32) * 7 - 3  # the argmax of each frame is `frames`
    logits[1, 1, 2] = 4  # equal maxima: the first wins, as torch.argmax and the C runtime take it
    assert ctc_greedy_search(logits, torch.tensor([9, 8]), blank=0) == [[3, 3, 5, 7], [2, 4]]
    assert ctc_greedy_search(logits.float() / 8, torch.tensor([3, 0]), blank=0) == [[3], []]


def test_ctc_best_path_decodes_the_same_words_on_both_engines_the_integer_one_under_the_guard(fsdd_batch):
    """ctc_weight=1: the CTC layer alone (transcribe and transcribe_integer); the QAT model's float logits and the
    engine's int32 ones are the same values, so their argmax per frame is the same; no decoder step runs."""
    batch, datamodule = fsdd_batch
    model = _model("irnn", batch, datamodule.vocab_size, seed=3)
    engine = model.export_integer()
    tokenizer, options = datamodule.tokenizer, DecodingOptions(beam_size=1, ctc_weight=1.0)
    with torch.no_grad():
        encoded = model.encode(batch["feats"], batch["feat_lens"])
        best = ctc_greedy_search(model.ctc_logits(encoded), encoded.lengths, PAD_ID)
    assert any(best) and all(PAD_ID not in h for h in best)
    words = [tokenizer.decode(h) for h in best]
    engine.decode_step = None  # the best path never calls the decoder
    assert transcribe_integer(engine, batch, tokenizer, options, guard=IntegerOnlyGuard()) == words


def test_corpus_wer_is_jiwer_on_normalized_text():
    references = ["The cat sat on the mat.", "Seven 7", "yes no yes"]
    hypotheses = ["the cat sat on mat", "seven seven", "yes yes no yes"]
    rate, errors, words = corpus_wer(references, hypotheses)
    expected = jiwer.wer([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])
    assert rate == pytest.approx(100 * expected) and (errors, words) == (2, 11)
    assert corpus_wer(["one two"], [""])[:2] == (100.0, 2)  # an empty hypothesis deletes every word


def test_a_front_end_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="conv_layers=0"):
        build_asr({"name": "tiny", "asr": {**TINY["asr"], "conv_layers": 0}}, None, 80, 16)


def test_an_lm_model_preset_without_an_asr_section_is_refused():
    with pytest.raises(ValueError, match="no asr section"):
        build_asr({"name": "medium", "lm": {}}, None, 80, 40)


def _task(vocab_size: int, **options):
    torch.manual_seed(0)
    return SpeechRecognitionTask(
        TINY,
        {"name": "float", "mode": "float"},
        vocab_size,
        80,
        {"name": "adam", "lr": 1e-3},
        {"name": "none"},
        5.0,
        **options,
    )


def test_scheduled_sampling_feeds_the_decoder_its_own_predictions_in_training_only(fsdd_batch):
    batch, datamodule = fsdd_batch
    vocab = datamodule.vocab_size
    tokens_in = batch["tokens"][:, :-1]
    always = _task(vocab, sampling_prob=1.0).train()
    encoded = always.model.encode(batch["feats"], batch["feat_lens"])
    mixed = always._sampled_inputs(tokens_in, encoded)
    predicted = always.model.decode_sequence(tokens_in, encoded).argmax(-1)  # dropout is 0 in the tiny preset
    real = tokens_in[:, 1:] != PAD_ID
    assert torch.equal(mixed[:, 0], tokens_in[:, 0]) and (mixed[:, 0] == BOS_ID).all()
    assert torch.equal(mixed[:, 1:][~real], tokens_in[:, 1:][~real])  # padding stays padding
    assert torch.equal(mixed[:, 1:][real], predicted[:, :-1][real])  # every real input is the model's guess
    assert not torch.equal(mixed, tokens_in)  # an untrained model guesses wrong

    half = _task(vocab, sampling_prob=0.5).train()
    torch.manual_seed(1)
    replaced = (half._sampled_inputs(tokens_in, encoded) != tokens_in)[:, 1:][real].float().mean()
    assert 0.05 < replaced < 0.6  # about half are replaced, fewer where the guess happens to be right

    def loss(task):
        torch.manual_seed(2)
        return task._losses(batch)[0]

    teacher = _task(vocab).train()
    sampled = loss(always)
    assert not torch.allclose(sampled, loss(teacher))
    sampled.backward()  # the loss is taken on the second pass, which has gradients
    assert always.model.embedding.weight.grad.abs().sum() > 0
    assert torch.equal(loss(_task(vocab, sampling_prob=1.0, sampling_start_epoch=1).train()), loss(teacher))
    with torch.no_grad():  # validation and test losses are teacher-forced whatever the setting
        assert torch.equal(loss(always.eval()), loss(teacher.eval()))


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_a_sampling_probability_outside_0_1_is_refused(prob):
    with pytest.raises(UserInputError, match=f"task.module.sampling_prob={prob}: must be in"):
        _task(40, sampling_prob=prob)
