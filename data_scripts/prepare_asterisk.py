"""Real training speech and a real-speech dev set from Debian's Asterisk core sound prompts (CC-BY-SA-3.0): the
English prompts of one speaker, Allison Smith, and on request two more speakers in other languages.

    python data_scripts/prepare_asterisk.py                        # ~20 s; needs apt-get (Debian main) the first time
    python data_scripts/prepare_asterisk.py --languages en fr it   # + June (fr-CA) and Carlo (it-IT), ~1 min

Downloads with `apt-get download` into --cache-dir/asterisk/ (once) two Debian bookworm packages per language (see
VOICES), checks each .deb against the SHA-256 recorded here every time it is used, unpacks the WAV prompts (8 kHz
16-bit mono) and writes under --out (paths.asr_root):

    asterisk/train.jsonl  about 85 % of the prompts, by a hash of the prompt name (conf/data/asr_voices.yaml trains
                          on it)
    asterisk/dev.jsonl    the other 15 %: a real-speech dev set (same speaker as train: it measures the telephone
                          band and the prompt vocabulary, not a new voice)
    asterisk_fr/, asterisk_it/  the same split of the French and Italian prompts
                          (conf/data/asr_voices_multilingual.yaml trains on their train.jsonl)

one row per prompt with speech; text = the transcript in core-sounds-<lang>.txt ("name: text"), annotations in [..]
or (..) removed, "*" / "#" read as star / pound. Left out, counted by reason: prompts whose whole transcript is an
annotation ("[ascending tones]", "(1 second of silence)"), unreadable or silent recordings, recordings whose
length cannot hold their transcript (under 0.08 s or over 2 s per word: a transcript that belongs to another file),
and in French and Italian, prompts with digits or * / # (their words would be read in English).
Licence and provenance: data_scripts/README_asterisk.md. Use the dev set as an extra real-speech test set:

    python evaluate.py task=asr ckpt=... +data.test.asterisk=asterisk/dev.jsonl
"""

import argparse
import gzip
import hashlib
import io
import math
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from app.data.manifest import Utterance, probe_audio, write_manifest
from app.data.text import normalize_text
from app.errors import UserInputError


@dataclass(frozen=True)
class Voice:
    """One speaker's prompts: the Debian packages (name -> (version, SHA-256)), where the recordings and the
    transcripts unpack, and the manifest folder under --out."""

    speaker: str
    packages: dict[str, tuple[str, str]]
    sounds_dir: str
    transcripts: str
    folder: str


# Debian bookworm main, version 1.6.1-1 (apt-cache show <package>: SHA256). In each pair, -<lang>-wav holds the
# recordings and -<lang> their transcripts. en is the default; fr and it are two more real speakers in other
# languages (the Spanish set is Allison again; the Russian transcripts are Cyrillic, which normalize_text drops).
VOICES = {
    "en": Voice(
        "allison",
        {
            "asterisk-core-sounds-en-wav": (
                "1.6.1-1",
                "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
            ),
            "asterisk-core-sounds-en": ("1.6.1-1", "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
        },
        "usr/share/asterisk/sounds/en_US_f_Allison",
        "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz",
        "asterisk",
    ),
    "fr": Voice(
        "june",
        {
            "asterisk-core-sounds-fr-wav": (
                "1.6.1-1",
                "8d4e1bc32ed5ba7fbda40841ca1825ed20cc6232724a473c90f8bb0e53e6073e",
            ),
            "asterisk-core-sounds-fr": ("1.6.1-1", "04c82c78c570c43a7136cbc5e2488d0c470b775468dff9fbce4a131b18cf1056"),
        },
        "usr/share/asterisk/sounds/fr_CA_f_June",
        "usr/share/doc/asterisk-core-sounds-fr/core-sounds-fr.txt.gz",
        "asterisk_fr",
    ),
    "it": Voice(
        "carlo",
        {
            "asterisk-core-sounds-it-wav": (
                "1.6.1-1",
                "5a26638089e134b8ac39363fe249c5c93c50cd8bfdc9b2499ae61ec4a35e2fcb",
            ),
            "asterisk-core-sounds-it": ("1.6.1-1", "3884d9457e12f21caa018c18f0d587df5d53ebea14b673d8453a134c5941ab3b"),
        },
        "usr/share/asterisk/sounds/it_IT_m_Carlo",
        "usr/share/doc/asterisk-core-sounds-it/core-sounds-it.txt.gz",
        "asterisk_it",
    ),
}
PACKAGES = {package: pin for voice in VOICES.values() for package, pin in voice.packages.items()}
POOL_URL = "http://deb.debian.org/debian/pool/main/a/asterisk-core-sounds/"
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_SPOKEN_SYMBOLS = {"*": " star ", "#": " pound "}
_ENGLISH_ONLY = re.compile(r"[0-9*#]")  # normalize_text reads digits, and we read * and #, in English
SECONDS_PER_WORD = (0.08, 2.0)  # a recording outside this range for its transcript is not that transcript's
SILENT_PEAK = 1e-3  # full scale 1.0: a prompt whose loudest sample is below this is silent


def deb_path(cache: Path, package: str) -> Path:
    version, _ = PACKAGES[package]
    return cache / f"{package}_{version}_all.deb"


def fetch_package(cache: Path, package: str) -> Path:
    """The package's .deb in `cache`, downloaded by apt-get when missing; UserInputError unless its SHA-256 is
    the recorded one."""
    version, sha256 = PACKAGES[package]
    path = deb_path(cache, package)
    if not path.is_file():
        if shutil.which("apt-get") is None:
            raise UserInputError(f"apt-get not found: download {POOL_URL}{path.name} into {cache} and run this again")
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["apt-get", "download", f"{package}={version}"], cwd=cache, capture_output=True, text=True
        )
        if done.returncode != 0 or not path.is_file():
            raise UserInputError(
                f"apt-get download {package}={version} failed ({done.stderr.strip().splitlines()[-1:] or 'no output'}): "
                f"download {POOL_URL}{path.name} into {cache} by hand"
            )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise UserInputError(f"{path} has SHA-256 {digest}, not the recorded {sha256}: delete it and run this again")
    return path


def deb_data(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an `ar` archive: 8-byte magic, then 60-byte headers, 2-byte aligned)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise UserInputError(f"{deb} is not a Debian package (no ar header): delete it and run this again")
    offset = 8
    while offset + 60 <= len(blob):
        name, size = blob[offset : offset + 16].decode().strip().rstrip("/"), int(blob[offset + 48 : offset + 58])
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(blob[offset + 60 : offset + 60 + size]))
        offset += 60 + size + size % 2
    raise UserInputError(f"{deb} has no data.tar member: delete it and run this again")


def spoken_text(transcript: str) -> str:
    """What the prompt says: annotations in [..] / (..) removed, * and # as the words a caller hears."""
    text = _ANNOTATION.sub(" ", transcript)
    for symbol, word in _SPOKEN_SYMBOLS.items():
        text = text.replace(symbol, word)
    return normalize_text(text)


def read_in_english(transcript: str) -> bool:
    """Whether the spoken text would hold English words the speaker did not say: digits (normalize_text spells
    them in English) or * / # (read "star" / "pound"). Annotations do not count."""
    return bool(_ENGLISH_ONLY.search(_ANNOTATION.sub(" ", transcript)))


def read_transcripts(lines: Sequence[str]) -> dict[str, str]:
    """prompt name (path under the sounds folder, no suffix) -> transcript, from core-sounds-<lang>.txt lines."""
    transcripts = {}
    for line in lines:
        if line.strip() and not line.startswith(";"):
            name, _, text = line.partition(":")
            transcripts[name.strip()] = text.strip()
    return transcripts


def split_of(name: str, dev_share: float) -> str:
    """ "dev" for about dev_share of the prompt names (a stable hash), else "train"."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "dev" if bucket < dev_share else "train"


def check_recording(wav: Path, text: str) -> str | None:
    """Why this recording cannot be used with this transcript (unreadable, silent, length does not fit), or None."""
    try:
        duration, _ = probe_audio(wav)
        samples, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    except (ValueError, sf.LibsndfileError, RuntimeError) as err:
        return f"unreadable ({err})"
    if not samples.size or float(np.abs(samples).max()) < SILENT_PEAK or not math.isfinite(float(samples.sum())):
        return "silent"
    low, high = SECONDS_PER_WORD
    if not low * len(text.split()) <= duration <= high * len(text.split()) + 1.0:
        return "length does not fit the transcript"
    return None


def prepare(
    cache: Path, out: Path, dev_share: float = 0.15, language: str = "en"
) -> tuple[dict[str, list[Utterance]], dict[str, int]]:
    """Unpack the language's verified packages into cache/extracted and write out/<folder>/{train,dev}.jsonl;
    returns the rows per split and counts of the prompts left out by reason."""
    voice = VOICES[language]
    extracted = cache / "extracted"
    for package in voice.packages:
        with deb_data(fetch_package(cache, package)) as data:
            data.extractall(extracted, filter="data")
    raw = gzip.decompress((extracted / voice.transcripts).read_bytes()).decode("utf-8-sig")
    transcripts = read_transcripts(raw.splitlines())
    sounds = extracted / voice.sounds_dir
    rows: dict[str, list[Utterance]] = {"train": [], "dev": []}
    skipped = {"annotation only": 0, "no transcript": 0, "no recording": 0}
    foreign = language != "en"
    if foreign:
        skipped["digits or symbols"] = 0
    for wav in sorted(sounds.rglob("*.wav")):
        name = wav.relative_to(sounds).with_suffix("").as_posix()
        if name not in transcripts:
            skipped["no transcript"] += 1
            continue
        if foreign and read_in_english(transcripts[name]):
            skipped["digits or symbols"] += 1
            continue
        text = spoken_text(transcripts[name])
        if not text:
            skipped["annotation only"] += 1
            continue
        if problem := check_recording(wav, text):
            reason = problem.split(" (")[0]
            skipped[reason] = skipped.get(reason, 0) + 1
            print(f"skipped {wav}: {problem}", file=sys.stderr)
            continue
        duration, rate = probe_audio(wav)
        rows[split_of(name, dev_share)].append(Utterance(str(wav.resolve()), duration, voice.speaker, text, rate))
    skipped["no recording"] = len(
        set(transcripts) - {w.relative_to(sounds).with_suffix("").as_posix() for w in sounds.rglob("*.wav")}
    )
    for split, utterances in rows.items():
        write_manifest(out / voice.folder / f"{split}.jsonl", utterances)
    return rows, skipped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/cache/asr"), help="paths.asr_root")
    parser.add_argument("--cache-dir", type=Path, default=Path("outputs/cache"), help="paths.cache_dir")
    parser.add_argument("--dev-share", type=float, default=0.15, help="share of prompts in dev.jsonl (by name hash)")
    parser.add_argument(
        "--languages",
        nargs="+",
        choices=sorted(VOICES),
        default=["en"],
        help="whose prompts: en (Allison, the default), fr (June, fr-CA), it (Carlo, it-IT); "
        "fr and it go to asterisk_fr/ and asterisk_it/",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.dev_share <= 1.0:
        sys.exit(f"error: --dev-share {args.dev_share} must be within [0, 1]")
    for language in args.languages:
        try:
            by_split, skipped = prepare(args.cache_dir / "asterisk", args.out, args.dev_share, language)
        except UserInputError as err:
            sys.exit(f"error: {err}")
        folder = VOICES[language].folder
        rows = [row for split in by_split.values() for row in split]
        durations = sorted(row.duration for row in rows)
        words = sum(len(row.text.split()) for row in rows)
        print(
            f"{folder}: {len(rows)} prompts (train {len(by_split['train'])}, dev {len(by_split['dev'])}), "
            f"{words} words, {sum(durations) / 60:.1f} min ({durations[0]:.2f}-{durations[-1]:.2f} s, "
            f"{sum(d > 20 for d in durations)} over 20 s), "
            f"{', '.join(sorted({f'{row.sample_rate} Hz' for row in rows}))}; left out: "
            + ", ".join(f"{count} {reason}" for reason, count in skipped.items())
            + f" -> {args.out / folder}/{{train,dev}}.jsonl"
        )


if __name__ == "__main__":
    main()
