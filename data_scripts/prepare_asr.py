"""Manifests for the real speech sets, and the sentencepiece tokenizer for conf/data/asr_synth.yaml.

    python data_scripts/synthesize_corpus.py   # first: the synthetic corpus (its train text feeds the tokenizer)
    python data_scripts/prepare_asr.py         # then: this, ~10 s

Writes under --out (paths.asr_root, default outputs/cache/asr):

    fsdd/{train,valid,test}.jsonl   FSDD: test = the official test split (takes 0-4); the official train
                                    split is cut into valid (takes 5-9) and train (takes 10-49)
    yesno/test.jsonl                Kaldi yesno, all 60 files
    pocketsphinx/test.jsonl         the 11 pocketsphinx-testdata utterances (goforward.raw, headerless, is
                                    written as pocketsphinx/wav/goforward.wav)
    tokenizer/spm.model, .vocab     sentencepiece (unigram) on the synthetic train text + FSDD train text
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from app.data.manifest import fsdd_utterances, pocketsphinx_utterances, read_manifest, write_manifest, yesno_utterances
from app.data.text import train_tokenizer
from app.errors import UserInputError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        default=os.environ.get("QRNN_DATA_ROOT", "../shared/data"),
        help="holds fsdd/, yesno/, pocketsphinx_testdata/ (paths.data_root)",
    )
    parser.add_argument("--out", default="outputs/cache/asr", help="paths.asr_root")
    parser.add_argument(
        "--cache-dir", default="outputs/cache", help="the datasets library's Arrow cache (paths.cache_dir)"
    )
    parser.add_argument(
        "--synth",
        default=None,
        help="synthetic corpus folder (default <out>/synth); its train.jsonl text trains the tokenizer",
    )
    parser.add_argument("--vocab-size", type=int, default=256, help="sentencepiece pieces, including pad/unk/bos/eos")
    parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    args = parser.parse_args(argv)
    data_root, out = Path(args.data_root), Path(args.out)
    synth = Path(args.synth) if args.synth else out / "synth"
    try:
        fsdd = fsdd_utterances(data_root / "fsdd")
        for split, utterances in fsdd.items():
            write_manifest(out / "fsdd" / f"{split}.jsonl", utterances)
        yesno = yesno_utterances(data_root / "yesno")
        write_manifest(out / "yesno" / "test.jsonl", yesno)
        pocketsphinx = pocketsphinx_utterances(data_root / "pocketsphinx_testdata", out / "pocketsphinx" / "wav")
        write_manifest(out / "pocketsphinx" / "test.jsonl", pocketsphinx)
        fsdd_counts = ", ".join(f"{split} {len(rows)}" for split, rows in fsdd.items())
        print(f"fsdd {fsdd_counts}; yesno {len(yesno)}; pocketsphinx {len(pocketsphinx)}")

        synth_train = synth / "train.jsonl"
        if not synth_train.is_file():
            raise UserInputError(
                f"{synth_train} does not exist: run `python data_scripts/synthesize_corpus.py` first (or pass --synth)"
            )
        texts = [u.text for u in read_manifest(synth_train, "synth_train", args.cache_dir, 16000, float("inf"))]
        texts += [u.text for u in fsdd["train"]]
        model = train_tokenizer(texts, out / "tokenizer" / "spm", args.vocab_size, args.model_type)
        print(f"tokenizer {model}: {args.vocab_size} pieces from {len(texts)} transcripts")
    except UserInputError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
