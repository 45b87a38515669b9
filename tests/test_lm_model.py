"""LSTMLanguageModel: the interface the quantized layers will plug into."""

import pytest
import torch

from app.models.lm import LSTMLanguageModel, build_lm


def _model(**overrides) -> LSTMLanguageModel:
    settings = dict(vocab_size=50, embed_dim=16, hidden_dim=16, num_layers=2, dropout=0.0, tie_weights=True)
    return LSTMLanguageModel(**{**settings, **overrides})


def test_forward_returns_logits_per_token_and_a_state_per_layer() -> None:
    model = _model()
    tokens = torch.randint(0, 50, (3, 7))
    logits, (h, c) = model(tokens)
    assert logits.shape == (3, 7, 50) and logits.dtype == torch.float32
    assert h.shape == c.shape == (2, 3, 16)
    zero_h, zero_c = model.init_state(3, "cpu")
    assert torch.equal(model(tokens, (zero_h, zero_c))[0], logits)  # state=None means a zero state


def test_carrying_the_state_across_windows_equals_one_long_window() -> None:
    model = _model().eval()
    tokens = torch.randint(0, 50, (2, 12))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :5])
    second, _ = model(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_tied_decoder_shares_the_embedding_weight_and_untied_does_not() -> None:
    tied = _model()
    assert tied.decoder.weight is tied.embedding.weight
    untied = _model(tie_weights=False, embed_dim=8)
    assert untied.decoder.weight is not untied.embedding.weight
    assert isinstance(tied.lstm, torch.nn.LSTM) and tied.lstm.batch_first
    assert isinstance(tied.drop, torch.nn.Dropout)


def test_tying_weights_with_different_embed_and_hidden_dims_is_refused() -> None:
    with pytest.raises(ValueError, match="embed_dim=8, hidden_dim=16"):
        _model(embed_dim=8)


def test_build_lm_reads_the_lm_section_of_a_model_preset() -> None:
    preset = {
        "name": "x",
        "lm": {"embed_dim": 12, "hidden_dim": 12, "num_layers": 2, "dropout": 0.1, "tie_weights": True},
    }
    quant = {"name": "float", "mode": "float"}
    model = build_lm(preset, quant, vocab_size=30)
    assert model.embedding.num_embeddings == 30 and model.lstm.hidden_size == 12 and model.lstm.num_layers == 2
