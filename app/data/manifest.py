"""ASR manifests: one utterance per row, written by `data_scripts/`, read here through the datasets library.

Format: JSON lines (`.jsonl`) or CSV with a header (`.csv`), one row per utterance:

    audio        path of a wav/flac file (soundfile reads it); a relative path is relative to the manifest
    duration     seconds (informative: the reader measures every file again)
    speaker      speaker (or voice) id
    text         transcript; normalized on reading (app.data.text.normalize_text)
    sample_rate  Hz (informative); other columns are ignored

`read_manifest` also accepts a LibriSpeech-layout directory (`<speaker>/<chapter>/<id>.flac` next to
`<speaker>-<chapter>.trans.txt`), scanned into a manifest in the cache first.

Bad input never stops a run: a corrupt or empty audio file, a missing or non-UTF-8 transcript, or an
utterance longer than the maximum, or audio recorded below 8 kHz is named in one warning line and left out;
audio at another sample rate is kept (resampled by the loader) and named in one line per set and rate.
"""

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The datasets library reads these when it is imported: it must never try the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import soundfile as sf  # noqa: E402

from app.data.text import normalize_text, number_to_words  # noqa: E402
from app.errors import UserInputError  # noqa: E402
from app.files import write_text_atomic  # noqa: E402

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
MANIFEST_SUFFIXES = (".jsonl", ".csv")
# The lowest recording rate read: telephone band (8 kHz) carries speech up to 4 kHz; below it the features'
# upper mel bands would be empty, so such a file is skipped rather than silently upsampled.
MIN_SAMPLE_RATE = 8000
MAX_LINES_PER_REASON = 20  # warning lines per set and reason; the rest are counted in one summary line
FSDD_SPLITS = {"test": range(0, 5), "valid": range(5, 10), "train": range(10, 50)}  # by take index
# What a set's audio is (conf/data/asr_*.yaml `speech:`, set name -> kind): the headline "real speech" WER
# pools the `real` sets, "synthetic" WER the `synthetic` ones; a `real_non_english` set is reported alone.
SPEECH_KINDS = {
    "synthetic": "text-to-speech voices",
    "real": "recorded English speech",
    "real_non_english": "recorded speech, not English, scored against English words (yesno: Hebrew 'ken'/'lo' as yes/no)",
}


@dataclass(frozen=True)
class Utterance:
    audio: str  # absolute path
    duration: float  # seconds, measured from the file
    speaker: str
    text: str  # normalized
    sample_rate: int  # of the file; the loader resamples to its own rate


def probe_audio(path: Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the file header; ValueError names what is wrong with the file."""
    if not path.is_file():
        raise ValueError("audio file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise ValueError(f"corrupt audio ({str(err).splitlines()[0]})") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("empty audio (0 samples)")
    return info.frames / info.samplerate, info.samplerate


def write_manifest(path: str | Path, rows: Iterable[Mapping[str, Any] | Utterance]) -> int:
    """Write rows (Utterance or dicts with audio/duration/speaker/text) as JSON lines; returns the row count.

    Audio paths under the manifest's directory are written relative to it, so a corpus folder can move.
    """
    path = Path(path).absolute()
    lines = []
    for row in rows:
        row = asdict(row) if isinstance(row, Utterance) else dict(row)
        audio = Path(row["audio"]).absolute()
        row["audio"] = str(audio.relative_to(path.parent)) if audio.is_relative_to(path.parent) else str(audio)
        lines.append(json.dumps(row) + "\n")
    write_text_atomic(path, "".join(lines))
    return len(lines)


def read_manifest(
    source: str | Path, set_name: str, cache_dir: str | Path, sample_rate: int, max_duration_s: float
) -> list[Utterance]:
    """The usable utterances of a manifest (.jsonl/.csv) or LibriSpeech-layout directory, in file order.

    Each bad row is named in one warning and skipped (module docstring); raises UserInputError when the
    source is missing or no row is usable. cache_dir: scanned LibriSpeech manifests and the Arrow cache.
    """
    source, cache_dir = Path(source), Path(cache_dir)
    rejected: list[tuple[str, str]] = []
    if source.is_dir():
        manifest = cache_dir / "asr_manifests" / f"{set_name}-{_path_digest(source)}.jsonl"
        utterances, rejected = scan_librispeech(source)
        if not utterances and not rejected:
            raise UserInputError(
                f"{set_name}: {source} has no LibriSpeech-layout transcripts (<speaker>-<chapter>.trans.txt): "
                "pass a manifest (.jsonl/.csv) or a LibriSpeech subset directory such as LibriSpeech/dev-clean"
            )
        write_manifest(manifest, utterances)
        base_dir = manifest.parent
    elif source.is_file() and source.suffix in MANIFEST_SUFFIXES:
        manifest, base_dir = source, source.parent
    else:
        raise UserInputError(
            f"{set_name}: {source} is not a manifest (.jsonl/.csv) or a directory: build the ASR data with "
            "`python data_scripts/synthesize_corpus.py` and `python data_scripts/prepare_asr.py`, or fix the path"
        )
    manifest, undecodable = _utf8_lines_only(manifest, cache_dir / "asr_manifests", set_name)
    rejected += undecodable
    rows = _load_rows(manifest, cache_dir / "hf")
    missing = {"audio", "text"} - set(rows.column_names)
    if missing:
        raise UserInputError(
            f"{set_name}: {source} has no {'/'.join(sorted(missing))} column: see app/data/manifest.py"
        )

    utterances: list[Utterance] = []
    resampled: Counter[int] = Counter()
    example: dict[int, str] = {}
    for row in rows:
        audio = base_dir / str(row["audio"])
        text = row["text"]
        if text is None or (isinstance(text, float) and math.isnan(text)) or not normalize_text(str(text)):
            rejected.append((str(audio), "missing transcript"))
            continue
        if "\ufffd" in str(text):  # U+FFFD: bytes that were not UTF-8, replaced when the manifest was written
            rejected.append((str(audio), "non-UTF-8 transcript"))
            continue
        try:
            duration, rate = probe_audio(audio)
        except ValueError as err:
            rejected.append((str(audio), str(err)))
            continue
        if duration > max_duration_s:
            rejected.append((str(audio), f"longer than max_duration_s={max_duration_s:g} ({duration:.2f} s)"))
            continue
        if rate < MIN_SAMPLE_RATE:
            rejected.append(
                (
                    str(audio),
                    f"unsupported sample rate {rate} Hz (below {MIN_SAMPLE_RATE} Hz): use a recording made at 8 kHz or more",
                )
            )
            continue
        if rate != sample_rate:
            resampled[rate] += 1
            example.setdefault(rate, str(audio))
        speaker = row.get("speaker")
        utterances.append(
            Utterance(
                str(audio.resolve()),
                duration,
                "unknown" if speaker is None else str(speaker),
                normalize_text(str(text)),
                rate,
            )
        )

    report_rejected(set_name, rejected)
    for rate, count in sorted(resampled.items()):
        log.warning(
            "%s: %d of %d files are %d Hz, resampled to %d Hz (e.g. %s)",
            set_name,
            count,
            len(utterances),
            rate,
            sample_rate,
            example[rate],
        )
    if not utterances:
        raise UserInputError(f"{set_name}: no usable utterance in {source} (see the warnings above): fix the data")
    return utterances


def report_rejected(set_name: str, rejected: list[tuple[str, str]]) -> None:
    """One warning line per rejected item (`<set>: skipped <path>: <reason>`), up to MAX_LINES_PER_REASON per reason.

    A reason's details go in brackets at its end: the part before them is what the cap counts.
    """
    shown: Counter[str] = Counter()
    for item, reason in rejected:
        kind = reason.split(" (")[0]
        shown[kind] += 1
        if shown[kind] <= MAX_LINES_PER_REASON:
            log.warning("%s: skipped %s: %s", set_name, item, reason)
    for kind, count in shown.items():
        if count > MAX_LINES_PER_REASON:
            log.warning("%s: skipped %d more (%s)", set_name, count - MAX_LINES_PER_REASON, kind)


def scan_librispeech(root: str | Path) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances of a LibriSpeech-layout tree (any depth: LibriSpeech/, or one subset such as dev-clean).

    Returns (utterances sorted by id, rejected (item, reason) pairs): audio without a transcript line,
    transcript lines that are not UTF-8 or have no audio, and unreadable audio are rejected.
    """
    root = Path(root)
    audio_by_id = {path.stem: path for path in sorted(root.rglob("*")) if path.suffix in AUDIO_SUFFIXES}
    texts: dict[str, str] = {}
    undecodable: set[str] = set()
    rejected: list[tuple[str, str]] = []
    for transcript_file in sorted(root.rglob("*.trans.txt")):
        for number, raw_line in enumerate(transcript_file.read_bytes().splitlines(), start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                utterance_id = raw_line.split(b" ", 1)[0].decode("ascii", errors="replace")
                rejected.append((f"{transcript_file}:{number} ({utterance_id})", "non-UTF-8 transcript"))
                undecodable.add(utterance_id)  # reported here, not again as a missing transcript
                continue
            utterance_id, _, text = line.strip().partition(" ")
            if utterance_id:
                texts[utterance_id] = text
    utterances = []
    for utterance_id, audio in audio_by_id.items():
        if utterance_id in undecodable:
            continue
        if not texts.get(utterance_id):
            rejected.append((str(audio), "missing transcript"))
            continue
        try:
            duration, rate = probe_audio(audio)
        except ValueError as err:
            rejected.append((str(audio), str(err)))
            continue
        speaker = utterance_id.split("-")[0]
        utterances.append(Utterance(str(audio.resolve()), duration, speaker, normalize_text(texts[utterance_id]), rate))
    for utterance_id in sorted((set(texts) | undecodable) - set(audio_by_id)):
        rejected.append((utterance_id, "transcript without an audio file"))
    return utterances, rejected


def fsdd_utterances(fsdd_dir: str | Path) -> dict[str, list[Utterance]]:
    """FSDD by split: the official test split (takes 0-4), and the official train split cut into valid
    (takes 5-9) and train (takes 10-49). Files are `{digit}_{speaker}_{take}.wav`; the text is the digit's word."""
    recordings = Path(fsdd_dir) / "recordings"
    if not recordings.is_dir():
        raise UserInputError(
            f"{recordings} does not exist: set --data-root (paths.data_root) to the folder holding fsdd/"
        )
    splits: dict[str, list[Utterance]] = {split: [] for split in FSDD_SPLITS}
    rejected = []
    for path in sorted(recordings.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        split = next(name for name, takes in FSDD_SPLITS.items() if int(take) in takes)
        try:
            duration, rate = probe_audio(path)
        except ValueError as err:
            rejected.append((str(path), str(err)))
            continue
        splits[split].append(Utterance(str(path.resolve()), duration, speaker, number_to_words(int(digit)), rate))
    report_rejected("fsdd", rejected)
    return splits


def yesno_utterances(yesno_dir: str | Path) -> list[Utterance]:
    """Kaldi yesno: 60 files named by their 8 words (`0_1_..._1.wav`, 1 = yes, 0 = no), one speaker."""
    waves = Path(yesno_dir) / "waves_yesno"
    if not waves.is_dir():
        raise UserInputError(f"{waves} does not exist: set --data-root (paths.data_root) to the folder holding yesno/")
    utterances, rejected = [], []
    for path in sorted(waves.glob("*.wav")):
        text = " ".join("yes" if bit == "1" else "no" for bit in path.stem.split("_"))
        try:
            duration, rate = probe_audio(path)
        except ValueError as err:
            rejected.append((str(path), str(err)))
            continue
        utterances.append(Utterance(str(path.resolve()), duration, "yesno", text, rate))
    report_rejected("yesno", rejected)
    return utterances


def pocketsphinx_utterances(testdata_dir: str | Path, wav_dir: str | Path) -> list[Utterance]:
    """The 11 transcribed pocketsphinx-testdata utterances: librivox (5), cards (5), goforward (1).

    Transcripts are sphinx lines `<s> words </s> (id)`. goforward.raw (headerless 16 kHz 16-bit mono) is
    written as `<wav_dir>/goforward.wav` so every manifest row is a file soundfile can open.
    """
    testdata_dir, wav_dir = Path(testdata_dir), Path(wav_dir)
    if not testdata_dir.is_dir():
        raise UserInputError(
            f"{testdata_dir} does not exist: "
            "set --data-root (paths.data_root) to the folder holding pocketsphinx_testdata/"
        )
    utterances = []
    for folder, transcript_name in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (testdata_dir / folder / transcript_name).read_text().splitlines():
            words, _, utterance_id = line.rpartition("(")
            path = testdata_dir / folder / f"{utterance_id.strip(') ')}.wav"
            duration, rate = probe_audio(path)
            utterances.append(Utterance(str(path.resolve()), duration, folder, normalize_text(words), rate))
    samples, _ = sf.read(
        str(testdata_dir / "goforward.raw"), samplerate=16000, channels=1, format="RAW", subtype="PCM_16", dtype="int16"
    )
    goforward = wav_dir / "goforward.wav"
    goforward.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(goforward), samples, 16000, subtype="PCM_16")
    utterances.append(
        Utterance(str(goforward.resolve()), len(samples) / 16000, "goforward", "go forward ten meters", 16000)
    )
    return utterances


def _load_rows(manifest: Path, hf_cache: Path) -> datasets.Dataset:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    builder = "csv" if manifest.suffix == ".csv" else "json"
    options = {"keep_default_na": False} if builder == "csv" else {}  # an empty CSV text cell stays "", not NaN
    try:
        return datasets.load_dataset(
            builder, data_files=str(manifest), split="train", cache_dir=str(hf_cache), **options
        )
    except Exception as err:  # the builders raise many types for a malformed file: all mean "unreadable"
        raise UserInputError(
            f"cannot read manifest {manifest}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
            "rows must be JSON lines or CSV with the columns audio, duration, speaker, text"
        ) from err


def _utf8_lines_only(manifest: Path, copy_dir: Path, set_name: str) -> tuple[Path, list[tuple[str, str]]]:
    """The manifest itself if it is valid UTF-8, else a copy (in copy_dir) without its undecodable lines."""
    data = manifest.read_bytes()
    try:
        data.decode("utf-8")
        return manifest, []
    except UnicodeDecodeError:
        pass
    kept, rejected = [], []
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            kept.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            rejected.append((f"{manifest}:{number}", "non-UTF-8 transcript"))
    copy = copy_dir / f"{set_name}-{_path_digest(manifest)}-utf8{manifest.suffix}"
    write_text_atomic(copy, "".join(kept))
    return copy, rejected


def _path_digest(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
