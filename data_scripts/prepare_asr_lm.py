"""Text for a token-level language model that the ASR beam search can fuse (docs/asr.md).

    python data_scripts/prepare_asr_lm.py        # after synthesize_corpus.py and prepare_asr.py, ~5 s
    python data_scripts/prepare_asr_lm.py --name lm_text --text ../shared/data/wikitext-2/train.txt  # + general text

Writes <out>/lm/{train,valid,test}.txt (paths.asr_root, default outputs/cache/asr): one transcript per line,
as the ASR tokenizer's pieces separated by spaces (e.g. "▁the ▁s ale s"), so `task=lm data=asr_lm` trains
an LM whose words are exactly the ASR model's output tokens. train: the synthetic train transcripts and
FSDD train; valid / test: the synthetic valid / test transcripts (held-out sentences: the LM never sees
them). The tokenizer is read, never retrained: the LM must fit the ASR models already trained with it.

--text adds general text (WikiText-2 or PTB train, one paragraph or sentence per line) to train.txt, so the LM
knows more English than the acoustic model heard. Each line is cut at its markup tokens (``<unk>``: a word
we cannot spell) and normalized as transcripts are; runs of under 3 words are dropped. A run that
contains any held-out transcript of 4 or more words (every valid / test / dev manifest of the corpus, real
speech included) is dropped too and counted, so the LM never learns a sentence it is tested on: the
synthetic test sentences are cut from PTB train, and WikiText-2 feeds the Piper voice.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.data.manifest import read_manifest
from app.data.text import MARKUP, Tokenizer, normalize_text
from app.errors import UserInputError
from app.files import write_text_atomic

HELD_OUT = (
    "synth/valid.jsonl",
    "synth/test.jsonl",
    "piper/valid.jsonl",
    "piper/test.jsonl",
    "asterisk/dev.jsonl",
    "pocketsphinx/test.jsonl",
    "fsdd/valid.jsonl",
    "fsdd/test.jsonl",
)
MIN_HELD_OUT_WORDS = 4  # shorter transcripts ("yes no", "five") occur in any text by chance
MIN_TEXT_WORDS = 3
SOURCES = {
    "train": ("synth/train.jsonl", "fsdd/train.jsonl"),
    "valid": ("synth/valid.jsonl",),
    "test": ("synth/test.jsonl",),
}


def piece_lines(manifests: Sequence[Path], tokenizer: Tokenizer, cache_dir: str) -> list[str]:
    """Each transcript of ``manifests`` as its tokenizer pieces joined by spaces (empty transcripts dropped)."""
    lines = []
    for manifest in manifests:
        if not manifest.is_file():
            raise UserInputError(
                f"{manifest} does not exist: run `python data_scripts/synthesize_corpus.py` and "
                "`python data_scripts/prepare_asr.py` first (or pass --out)"
            )
        for utterance in read_manifest(
            manifest, manifest.parent.name + "_" + manifest.stem, cache_dir, 16000, float("inf")
        ):
            pieces = tokenizer.processor.id_to_piece(tokenizer.encode(utterance.text))
            if pieces:
                lines.append(" ".join(pieces))
    return lines


def text_lines(path: Path, held_out: Sequence[str]) -> tuple[list[str], int]:
    """The normalized word runs of the text file ``path`` (module docstring) and how many were dropped
    because they contain one of ``held_out`` (normalized transcripts)."""
    if not path.is_file():
        raise UserInputError(f"--text {path} does not exist: point it at ptb/ptb.train.txt or wikitext-2/train.txt")
    padded = [f" {text} " for text in held_out if len(text.split()) >= MIN_HELD_OUT_WORDS]
    kept, dropped = [], 0
    with path.open(encoding="utf-8") as text_file:
        for line in text_file:
            for run in MARKUP.split(line):
                words = normalize_text(run)
                if len(words.split()) < MIN_TEXT_WORDS:
                    continue
                if any(text in f" {words} " for text in padded):
                    dropped += 1
                else:
                    kept.append(words)
    return kept, dropped


def held_out_texts(out: Path, cache_dir: str) -> list[str]:
    """Every transcript of the corpus's held-out manifests that exist under ``out``."""
    texts = []
    for manifest in HELD_OUT:
        if (out / manifest).is_file() and (out / manifest).stat().st_size:
            utterances = read_manifest(out / manifest, "held_out", cache_dir, 16000, float("inf"))
            texts.extend(utterance.text for utterance in utterances)
    return texts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="outputs/cache/asr", help="paths.asr_root (holds the manifests and tokenizer/)"
    )
    parser.add_argument(
        "--cache-dir", default="outputs/cache", help="the datasets library's Arrow cache (paths.cache_dir)"
    )
    parser.add_argument(
        "--text", type=Path, action="append", default=[], help="general text for train.txt (repeatable; docstring)"
    )
    parser.add_argument(
        "--name", default="lm", help="output folder under --out (conf/data/asr_lm_text.yaml reads lm_text)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        tokenizer = Tokenizer(out / "tokenizer" / "spm.model")
        held_out = held_out_texts(out, args.cache_dir) if args.text else []
        for split, manifests in SOURCES.items():
            lines = piece_lines([out / manifest for manifest in manifests], tokenizer, args.cache_dir)
            if split == "train":
                for path in args.text:
                    texts, dropped = text_lines(path, held_out)
                    lines += [" ".join(tokenizer.processor.id_to_piece(tokenizer.encode(text))) for text in texts]
                    print(f"{path}: {len(texts)} word runs added, {dropped} dropped for holding a held-out transcript")
            write_text_atomic(out / args.name / f"{split}.txt", "".join(line + "\n" for line in lines))
            print(f"{args.name}/{split}.txt: {len(lines)} lines, {sum(len(line.split()) for line in lines)} tokens")
    except UserInputError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
