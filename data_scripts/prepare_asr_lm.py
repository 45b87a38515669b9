"""Text for a token-level language model that the ASR beam search can fuse (docs/asr.md).

    python data_scripts/prepare_asr_lm.py        # after synthesize_corpus.py and prepare_asr.py, ~5 s

Writes <out>/lm/{train,valid,test}.txt (paths.asr_root, default outputs/cache/asr): one transcript per line,
as the ASR tokenizer's pieces separated by spaces (e.g. "▁the ▁s ale s"), so `task=lm data=asr_lm` trains
an LM whose words are exactly the ASR model's output tokens. train: the synthetic train transcripts and
FSDD train; valid / test: the synthetic valid / test transcripts (held-out sentences: the LM never sees
them). The tokenizer is read, never retrained: the LM must fit the ASR models already trained with it.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.data.manifest import read_manifest
from app.data.text import Tokenizer
from app.errors import UserInputError
from app.files import write_text_atomic

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="outputs/cache/asr", help="paths.asr_root (holds the manifests and tokenizer/)"
    )
    parser.add_argument(
        "--cache-dir", default="outputs/cache", help="the datasets library's Arrow cache (paths.cache_dir)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        tokenizer = Tokenizer(out / "tokenizer" / "spm.model")
        for split, manifests in SOURCES.items():
            lines = piece_lines([out / manifest for manifest in manifests], tokenizer, args.cache_dir)
            write_text_atomic(out / "lm" / f"{split}.txt", "".join(line + "\n" for line in lines))
            print(f"lm/{split}.txt: {len(lines)} lines, {sum(len(line.split()) for line in lines)} tokens")
    except UserInputError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
