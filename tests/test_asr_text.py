"""Transcript normalization (shared by targets and WER), WER against jiwer, sentencepiece tokenizer round trip."""

import jiwer
import pytest

from app.data.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Tokenizer,
    edit_distance,
    normalize_text,
    number_to_words,
    train_tokenizer,
    wer,
)
from app.errors import UserInputError


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Hello, World!", "hello world"),
        ("the company 's shares do n't move", "the company's shares don't move"),  # PTB / WikiText clitics
        ("<s> ten of clubs  </s>", "ten of clubs"),  # sphinx transcript markup
        ("HE WAS NOT AN ILL DISPOSED YOUNG MAN", "he was not an ill disposed young man"),  # LibriSpeech casing
        ("state @-@ of @-@ the @-@ art", "state of the art"),  # WikiText hyphens
        ("It costs 1,905 dollars, 42 cents", "it costs one thousand nine hundred five dollars forty two cents"),
        ("Café “quoted” naïve", "cafe quoted naive"),
        ("   ", ""),
    ],
)
def test_normalize_text_gives_lowercase_words(raw, normalized):
    assert normalize_text(raw) == normalized
    assert normalize_text(normalized) == normalized  # idempotent: targets are normalized once more at scoring


def test_number_to_words_reads_counts():
    assert [number_to_words(n) for n in (0, 13, 40, 115, 2000000)] == [
        "zero",
        "thirteen",
        "forty",
        "one hundred fifteen",
        "two million",
    ]


def test_wer_matches_jiwer_on_a_hand_example():
    references = ["The cat sat on the mat.", "yes no yes", "seven"]
    hypotheses = ["the cat sit on mat", "yes yes no no", "seven"]
    # by hand: sat->sit and a deleted "the": 2 errors; "yes no yes" -> "yes yes no no": an inserted "yes"
    # and yes->no: 2 errors; "seven": 0. 4 errors over 10 reference words.
    assert edit_distance("yes no yes".split(), "yes yes no no".split()) == 2
    normalized = jiwer.wer([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])
    assert wer(references, hypotheses) == pytest.approx(normalized)
    assert wer(references, hypotheses) == pytest.approx(0.4)


def test_wer_is_corpus_level_not_a_mean_of_utterances():
    # 1 error in 1 word + 0 errors in 9 words: 1/10, not (1 + 0) / 2
    assert wer(["one", "a b c d e f g h i"], ["two", "a b c d e f g h i"]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        wer(["a"], [])


def _sentences():
    words = "the market said shares of new york company rose fell in trading yes no one two three four".split()
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)) for i in range(300)]


def test_tokenizer_round_trips_normalized_text(tmp_path):
    model = train_tokenizer(_sentences(), tmp_path / "spm", vocab_size=48)
    tokenizer = Tokenizer(model)
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 2, 3)
    assert tokenizer.vocab_size == 48
    # the last text has letters the training text lacks: every letter has a piece, so none becomes <unk>
    for text in ["the market rose in new york trading", "Yes, no: 4 shares!", "unseen words like zebra's jukebox"]:
        ids = tokenizer.encode(text)
        assert ids and all(0 <= token < 48 for token in ids) and PAD_ID not in ids
        assert tokenizer.decode(ids) == normalize_text(text)
        assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == normalize_text(text)


def test_tokenizer_errors_name_the_fix(tmp_path):
    with pytest.raises(UserInputError, match="prepare_asr.py"):
        Tokenizer(tmp_path / "missing.model")
    with pytest.raises(UserInputError, match="lower the vocabulary size"):
        train_tokenizer(["yes no"] * 10, tmp_path / "tiny", vocab_size=5000)
