"""PocketSphinx, an off-the-shelf offline recognizer, on our ASR test sets: the peer row of the ASR tables.

    pip install -e '.[peers]'
    python -m app.peers [--sets fsdd pocketsphinx yesno asterisk] [--out outputs/bench/peers.json]

PocketSphinx 5 with its default config and bundled en-US model (continuous triphone HMM, 3-gram LM, CMU
dictionary), fed 16 kHz 16-bit mono (FSDD's 8 kHz resampled as our loader does: app.data.audio.load_waveform),
and scored exactly like our models: normalize_text on both sides and jiwer corpus WER (app.decode.wer.corpus_wer).
FSDD also gets a row decoded with a one-digit grammar (zero ... nine), PocketSphinx's way to know the task.

The sets are the real test sets of conf/data/asr_voices.yaml, built from the corpora under --data-root by the
functions data_scripts/prepare_asr.py writes their manifests with (FSDD: the official test split, takes 0-4),
plus the Asterisk dev prompts from their prepared manifest under --asr-root (by default when it exists),
and labelled by that config's `speech:` (real / real_non_english). Writes --out as

    {"machine": str,
     "rows": [{"system": "PocketSphinx 5.1.1 (en-US default model)", "set": "fsdd", "wer": float (percent),
               "words": int, "utterances": int, "real_speech": bool, "speech": "real"}, ...],
     "real_speech": {"system", "wer", "errors", "words", "sets"}}  # default-model rows of the `real` sets pooled

and every utterance's reference and hypothesis to <out without .json>_decoded/<set>[_digits].jsonl.
"""

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from app.data.audio import INT16_SCALE, load_waveform
from app.data.manifest import Utterance, fsdd_utterances, pocketsphinx_utterances, read_manifest, yesno_utterances
from app.decode.wer import add_batch, corpus_wer, new_record, speech_wer_summary, write_test_record
from app.errors import UserInputError
from app.files import write_text_atomic
from app.runs.directory import machine_text

SAMPLE_RATE = 16000  # the en-US model's rate
DATA_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "data" / "asr_synth.yaml"  # its `speech:` labels
DIGITS_GRAMMAR = (
    "#JSGF V1.0;\ngrammar digits;\n"
    "public <digit> = zero | one | two | three | four | five | six | seven | eight | nine;\n"
)  # one FSDD utterance is one digit, spelled as app.data.text.number_to_words spells it
INSTALL_HINT = "pip install -e '.[peers]'"

ASTERISK_DEV = Path("asterisk") / "dev.jsonl"  # under paths.asr_root, from data_scripts/prepare_asterisk.py
MAX_DURATION_S = 20.0  # as conf/data/asr_synth.yaml: the same utterances our models are tested on


def _asterisk_dev(asr_root: Path) -> list[Utterance]:
    manifest = asr_root / ASTERISK_DEV
    if not manifest.is_file():
        raise UserInputError(f"{manifest} does not exist: run `python data_scripts/prepare_asterisk.py` first")
    return read_manifest(manifest, "asterisk", asr_root.parent, SAMPLE_RATE, MAX_DURATION_S)


# set name (as in our ASR metrics) -> its test utterances, from (data root, a folder for converted audio, asr root)
TEST_SETS: dict[str, Callable[[Path, Path, Path], list[Utterance]]] = {
    "fsdd": lambda root, work, asr_root: fsdd_utterances(root / "fsdd")["test"],
    "pocketsphinx": lambda root, work, asr_root: pocketsphinx_utterances(root / "pocketsphinx_testdata", work),
    "yesno": lambda root, work, asr_root: yesno_utterances(root / "yesno"),
    "asterisk": lambda root, work, asr_root: _asterisk_dev(asr_root),
}


def pocketsphinx_version() -> str:
    """The installed pocketsphinx's version; UserInputError with the install command when it is missing."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        raise UserInputError(f"pocketsphinx is not installed: {INSTALL_HINT}") from None
    return importlib.metadata.version("pocketsphinx")


def new_decoder(grammar: str | None = None) -> Any:
    """A pocketsphinx.Decoder with the default config and en-US model, quiet; with `grammar` (JSGF) searched
    instead of the language model."""
    pocketsphinx_version()
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")
    if grammar is not None:
        decoder.add_jsgf_string("grammar", grammar)
        decoder.activate_search("grammar")
    return decoder


def transcribe(decoder: Any, audio: str | Path) -> str:
    """The decoder's best hypothesis for one file ("" when it finds no word), fed as 16 kHz int16 mono PCM."""
    wave = load_waveform(audio, SAMPLE_RATE)
    pcm = (wave * INT16_SCALE).round().clamp(-32768, 32767).to(torch.int16)
    decoder.start_utt()
    decoder.process_raw(pcm.numpy().tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def decode_set(decoder: Any, set_name: str, utterances: Sequence[Utterance], progress: bool = True) -> dict[str, Any]:
    """Every utterance decoded: a record (app.decode.wer.new_record) with references and hypotheses."""
    record = new_record()
    for utterance in tqdm(utterances, desc=set_name, unit="utt", disable=not progress, file=sys.stderr):
        batch = {"texts": [utterance.text], "speakers": [utterance.speaker], "audio": [utterance.audio]}
        add_batch(record, batch, [transcribe(decoder, utterance.audio)])
    record["utterances"] = len(utterances)
    return record


def score_row(system: str, set_name: str, record: dict[str, Any], speech: str | None) -> dict[str, Any]:
    """One row of peers.json: corpus WER (%) of the record as our ASR metrics compute it."""
    wer, _, words = corpus_wer(record["refs"], record["hyps"])
    real = speech is not None and speech.startswith("real")
    return {
        "system": system,
        "set": set_name,
        "wer": wer,
        "words": words,
        "utterances": record["utterances"],
        "real_speech": real,
        "speech": speech,
    }


def speech_labels(config: Path = DATA_CONFIG) -> dict[str, str]:
    """set name -> SPEECH_KINDS label, from the data config's `speech:`."""
    return dict(OmegaConf.to_container(OmegaConf.load(config)["speech"]))


def run_peers(
    data_root: Path,
    set_names: Sequence[str],
    out: Path,
    digits: bool = True,
    limit: int | None = None,
    progress: bool = True,
    asr_root: Path = Path("outputs/cache/asr"),
) -> dict[str, Any]:
    """Decode `set_names` (TEST_SETS) with PocketSphinx, write `out` (module docstring) and return its content.

    digits: also decode fsdd with the one-digit grammar. limit: the first `limit` utterances of each set only.
    asr_root: where data_scripts/ wrote the prepared manifests (the asterisk dev set).
    """
    unknown = [name for name in set_names if name not in TEST_SETS]
    if unknown:
        raise UserInputError(f"--sets {unknown[0]}: PocketSphinx decodes {', '.join(TEST_SETS)}")
    version = pocketsphinx_version()
    system = f"PocketSphinx {version} (en-US default model)"
    speech = speech_labels()
    decoded_dir = out.parent / f"{out.stem}_decoded"
    rows, counts = [], {}
    decoder = new_decoder()
    with tempfile.TemporaryDirectory() as work:
        for set_name in set_names:
            utterances = TEST_SETS[set_name](data_root, Path(work), asr_root)[:limit]
            record = decode_set(decoder, set_name, utterances, progress)
            write_test_record(decoded_dir, set_name, record)
            rows.append(score_row(system, set_name, record, speech.get(set_name)))
            counts[set_name] = corpus_wer(record["refs"], record["hyps"])[1:]
            if digits and set_name == "fsdd":
                record = decode_set(new_decoder(DIGITS_GRAMMAR), f"{set_name} (digits grammar)", utterances, progress)
                write_test_record(decoded_dir, f"{set_name}_digits", record)
                rows.append(
                    score_row(
                        f"PocketSphinx {version} (en-US default model, digits grammar)",
                        set_name,
                        record,
                        speech.get(set_name),
                    )
                )
    real = speech_wer_summary(counts, speech)["real_speech"]
    result = {
        "machine": machine_text("cpu"),
        "rows": rows,
        "real_speech": None if real is None else {"system": system, **real},
    }
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    """The rows as an aligned text table, then the pooled real-speech WER."""
    lines = [f"{'system':<58} {'set':<13} {'WER %':>7} {'words':>6} {'utts':>5}  speech"]
    for row in result["rows"]:
        lines.append(
            f"{row['system']:<58} {row['set']:<13} {row['wer']:>7.2f} {row['words']:>6} "
            f"{row['utterances']:>5}  {row['speech']}"
        )
    real = result["real_speech"]
    if real:
        alone = sorted({row["set"] for row in result["rows"] if row["speech"] not in ("real", "synthetic")})
        lines.append(
            f"real speech ({' + '.join(real['sets'])}, {real['words']} words): {real['wer']:.2f}% WER"
            + (f"; not in it: {', '.join(alone)} (not English: yesno is Hebrew 'ken'/'lo')" if alone else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets",
        nargs="+",
        default=None,
        choices=list(TEST_SETS),
        help="test sets to decode (default: all; asterisk when data_scripts/prepare_asterisk.py has run)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/peers.json"))
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("QRNN_DATA_ROOT", "../shared/data")),
        help="holds fsdd/, yesno/, pocketsphinx_testdata/ (paths.data_root)",
    )
    parser.add_argument(
        "--asr-root", type=Path, default=Path("outputs/cache/asr"), help="prepared manifests (paths.asr_root)"
    )
    parser.add_argument("--no-digits", action="store_true", help="skip the FSDD digits-grammar row")
    parser.add_argument("--limit", type=int, default=None, help="decode the first N utterances of each set only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.sets is None:
        args.sets = [name for name in TEST_SETS if name != "asterisk" or (args.asr_root / ASTERISK_DEV).is_file()]
    try:
        result = run_peers(
            args.data_root, args.sets, args.out, not args.no_digits, args.limit, not args.no_progress, args.asr_root
        )
    except UserInputError as err:
        sys.exit(f"error: {err}")
    print(table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
