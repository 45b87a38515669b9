"""Transcript text for ASR: one normalizer for training targets and WER scoring, word error rate, tokenizer.

`normalize_text` is applied to every transcript when a manifest is read and to both sides before WER is
counted, so a model is never scored on casing, punctuation or number formatting (as Whisper ships its
normalizer so that WER figures are comparable). Normalized text is lowercase words of `[a-z']`,
separated by single spaces.

The tokenizer is a sentencepiece model trained by `data_scripts/prepare_asr.py` on the normalized
training transcripts, with fixed special ids: pad 0 (also usable as the CTC / RNN-T blank: it never
occurs in a target), unk 1, bos 2, eos 3.
"""

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from app.errors import UserInputError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
ALPHABET = "abcdefghijklmnopqrstuvwxyz'"  # every character normalized text can hold, besides the space

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))

# Tokenized text (PTB, WikiText, LibriSpeech-style) splits clitics off: "do n't", "company 's".
_CLITIC = re.compile(r"(\w) +(n't|'s|'re|'ve|'ll|'d|'m)\b")
MARKUP = re.compile(r"<[^>]*>")  # <unk>, <s>, </s>, <noise>: not spoken words
_NUMBER = re.compile(r"\d+(?:,\d{3})*")
_WORD_BREAK = re.compile(r"[-_/@.,;:!?\"()\[\]{}]+")
_NOT_WORD = re.compile(r"[^a-z' ]+")
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def number_to_words(number: int) -> str:
    """English words for 0 <= number < 10**12: 1905 -> "one thousand nine hundred five" (no "and")."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for scale, name in _SCALES:
        if number >= scale:
            high, low = divmod(number, scale)
            return number_to_words(high) + " " + name + ("" if low == 0 else " " + number_to_words(low))
    raise AssertionError("unreachable")


def join_clitics(text: str) -> str:
    """Re-join clitics that tokenized text splits off: "do n't" -> "don't", "company 's" -> "company's"."""
    return _CLITIC.sub(r"\1\2", text)


def normalize_text(text: str) -> str:
    """Lowercase words of [a-z'] separated by single spaces; idempotent.

    Unicode is NFKD-folded with accents dropped ("café" -> "cafe"); markup tokens (`<unk>`, `<s>`) are
    dropped; split clitics are re-joined ("do n't" -> "don't"); integers become words ("42" -> "forty two",
    "1,000" -> "one thousand"); hyphens, slashes and punctuation separate words; any other character is removed.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(char for char in text if not unicodedata.combining(char)).lower().replace("\u2019", "'")
    text = MARKUP.sub(" ", text)
    text = join_clitics(text)
    text = _NUMBER.sub(lambda match: " " + _spell_number(match.group()) + " ", text)
    text = _WORD_BREAK.sub(" ", text)
    text = _NOT_WORD.sub("", text)
    text = _STRAY_APOSTROPHE.sub("", text)
    return " ".join(text.split())


def _spell_number(digits: str) -> str:
    digits = digits.replace(",", "")
    if len(digits) > 12:  # longer than any count: read it digit by digit
        return " ".join(_ONES[int(digit)] for digit in digits)
    return number_to_words(int(digits))


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two word sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) of one utterance, both sides normalized: sum these over a set for WER."""
    ref_words, hyp_words = normalize_text(reference).split(), normalize_text(hypothesis).split()
    return edit_distance(ref_words, hyp_words), len(ref_words)


def wer(references: Iterable[str], hypotheses: Iterable[str]) -> float:
    """Corpus word error rate: total word errors / total reference words (not a mean of per-utterance rates)."""
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"wer needs one hypothesis per reference, got {len(hypotheses)} for {len(references)}")
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        utterance_errors, utterance_words = word_errors(reference, hypothesis)
        errors, words = errors + utterance_errors, words + utterance_words
    if words == 0:
        raise ValueError("wer needs at least one reference word after normalization")
    return errors / words


class Tokenizer:
    """A trained sentencepiece model: normalized text <-> token ids (pad 0, unk 1, bos 2, eos 3)."""

    def __init__(self, model_path: str | Path) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise UserInputError(
                f"tokenizer {model_path} does not exist: build it with `python data_scripts/prepare_asr.py` "
                "(or point data.tokenizer at a sentencepiece .model)"
            )
        self.path = model_path
        self.processor = spm.SentencePieceProcessor(model_file=str(model_path))
        special = (self.processor.pad_id(), self.processor.unk_id(), self.processor.bos_id(), self.processor.eos_id())
        if special != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise UserInputError(
                f"tokenizer {model_path} has pad/unk/bos/eos ids {special}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}: "
                "train it with app.data.text.train_tokenizer (data_scripts/prepare_asr.py)"
            )
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = special

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def sha256(self) -> str:
        """Identifies the tokenizer: a checkpoint only fits data tokenized with the same model."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` after normalize_text, without bos/eos."""
        return self.processor.encode(normalize_text(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; pad, bos and eos ids are skipped, so a padded row decodes as its tokens."""
        skip = (self.pad_id, self.bos_id, self.eos_id)
        return self.processor.decode([int(token) for token in ids if int(token) not in skip])


def train_tokenizer(
    texts: Iterable[str], model_prefix: str | Path, vocab_size: int, model_type: str = "unigram"
) -> Path:
    """Train a sentencepiece model on normalized `texts`; writes `<model_prefix>.model` / `.vocab`, returns the .model.

    The text is normalized here, so sentencepiece's own normalization is off (`identity`).
    """
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (normalize_text(text) for text in texts) if line]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            required_chars=ALPHABET,  # every letter gets a piece, so any normalized text encodes without <unk>
            normalization_rule_name="identity",
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise UserInputError(
            f"sentencepiece could not train a {vocab_size}-piece {model_type} tokenizer on {len(lines)} lines "
            f"({str(err).strip()}): lower the vocabulary size or give it more text"
        ) from err
    return model_prefix.with_suffix(".model")
