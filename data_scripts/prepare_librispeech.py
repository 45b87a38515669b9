"""Manifests (and a tokenizer) for a LibriSpeech copy on disk, for conf/data/asr_librispeech.yaml.

    python data_scripts/prepare_librispeech.py /data/LibriSpeech      # every subset found under it
    python data_scripts/prepare_librispeech.py /data/LibriSpeech/dev-clean --vocab-size 0   # one subset, no tokenizer

The layout is LibriSpeech's: <subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac next to
<speaker>-<chapter>.trans.txt (one `ID TRANSCRIPT` line per utterance). Writes <out>/<subset>.jsonl per
subset (app/data/manifest.py format; bad files and lines are named and left out) and, from the train-*
subsets' text, <out>/tokenizer/spm.model. The datamodule also reads a subset directory directly (it scans
it into its cache at start-up); a manifest written here skips that scan.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.data.manifest import report_rejected, scan_librispeech, write_manifest
from app.data.text import train_tokenizer
from app.errors import UserInputError


def subsets(root: Path) -> list[Path]:
    """The subset folders under root (folders whose children hold *.trans.txt two levels down), or [root]."""
    if any(root.glob("*/*/*.trans.txt")):
        return [root]
    found = [folder for folder in sorted(root.iterdir()) if folder.is_dir() and any(folder.glob("*/*/*.trans.txt"))]
    if not found:
        raise UserInputError(
            f"{root} has no LibriSpeech subset (<subset>/<speaker>/<chapter>/*.trans.txt): pass the LibriSpeech folder"
        )
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a LibriSpeech folder (holding train-clean-100/, dev-clean/, ...) or one subset")
    parser.add_argument(
        "--out", default="outputs/cache/asr/librispeech", help="where the manifests go (paths.asr_root/librispeech)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=1024, help="sentencepiece pieces from the train-* text; 0: no tokenizer"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        train_texts = []
        for subset in subsets(Path(args.root)):
            utterances, rejected = scan_librispeech(subset)
            report_rejected(subset.name, rejected)
            manifest = out / f"{subset.name}.jsonl"
            count = write_manifest(manifest, utterances)
            hours = sum(u.duration for u in utterances) / 3600
            print(f"{subset.name}: {count} utterances, {hours:.2f} h, {len(rejected)} skipped -> {manifest}")
            if subset.name.startswith("train"):
                train_texts += [u.text for u in utterances]
        if args.vocab_size > 0:
            if not train_texts:
                raise UserInputError(
                    "no train-* subset to train the tokenizer on: pass the LibriSpeech folder, or --vocab-size 0"
                )
            model = train_tokenizer(train_texts, out / "tokenizer" / "spm", args.vocab_size)
            print(f"tokenizer {model}: {args.vocab_size} pieces from {len(train_texts)} transcripts")
    except UserInputError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
