"""data_scripts/: the synthetic TTS corpus (held-out voices and sentences) and the real-set manifests + tokenizer.

These need espeak-ng, flite, festival (+ its kal, ked and HTS slt voices) and sox from Debian main; `.ci/run` installs them.
A missing tool fails the test with the install command: it is never skipped.
"""

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from app.data.manifest import read_manifest
from app.data.text import Tokenizer, normalize_text
from tests.conftest import ROOT, run_script

DATA_ROOT = Path(os.environ.get("QRNN_DATA_ROOT", ROOT.parent / "shared" / "data"))
INSTALL = "apt-get install -y espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
FESTIVAL_VOICE_DIRS = {
    "festvox-kallpc16k": "/usr/share/festival/voices/english/kal_diphone",
    "festvox-kdlpc16k": "/usr/share/festival/voices/english/ked_diphone",
    "festvox-us-slt-hts": "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
}


def _synthesize_corpus_module():
    spec = importlib.util.spec_from_file_location("synthesize_corpus", ROOT / "data_scripts" / "synthesize_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_tts_tools() -> None:
    missing = [program for program in ("espeak-ng", "sox", "flite", "festival") if shutil.which(program) is None]
    missing += [
        f"{package} (a festival voice)" for package, path in FESTIVAL_VOICE_DIRS.items() if not Path(path).is_dir()
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `{INSTALL}` (Debian main; .ci/run does this)")


def _run_script(script: str, *args: str) -> str:
    result = run_script(f"data_scripts/{script}", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """A 30-utterance corpus from PTB valid text, every engine present, made once for this module."""
    _require_tts_tools()
    out = tmp_path_factory.mktemp("asr") / "synth"
    args = [
        "--text",
        str(DATA_ROOT / "ptb" / "ptb.valid.txt"),
        "--out",
        str(out),
        "--train",
        "18",
        "--valid",
        "4",
        "--test",
        "8",
        "--shares",
        "espeak=0.3,flite=0.2,festival=0.5",
        "--word-vocab",
        "500",
    ]
    _run_script("synthesize_corpus.py", *args)
    return out, args


def _rows(corpus: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (corpus / f"{split}.jsonl").read_text().splitlines()]


def test_synthetic_corpus_is_16khz_with_held_out_voices_and_sentences(tiny_corpus):
    corpus, _ = tiny_corpus
    rows = {split: _rows(corpus, split) for split in ("train", "valid", "test")}
    assert {split: len(r) for split, r in rows.items()} == {"train": 18, "valid": 4, "test": 8}
    for split_rows in rows.values():
        for row in split_rows:
            info = sf.info(str(corpus / row["audio"]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert 0.2 < info.frames / info.samplerate == pytest.approx(row["duration"], abs=1e-3)
            assert row["text"] == normalize_text(row["text"]) and row["text"]
    assert {row["engine"] for row in rows["train"]} == {"espeak", "flite", "festival"}
    festival_voices = {
        row["speaker"].split(":")[1].split("@")[0] for row in rows["train"] if row["engine"] == "festival"
    }
    assert festival_voices == {"kal", "ked", "slt_hts"}  # every festival voice synthesizes
    assert {row["kind"] for row in rows["train"]} == {"sentence", "digits", "yesno"}
    train_speakers = {row["speaker"] for row in rows["train"]}
    train_texts = {row["text"] for row in rows["train"]}
    for split in ("valid", "test"):
        assert not train_speakers & {row["speaker"] for row in rows[split]}  # held-out voices
        assert not train_texts & {row["text"] for row in rows[split]}  # held-out sentences
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["utterances"] == {"train": 18, "valid": 4, "test": 8} and meta["synthesis_seconds"]
    # the loader reads it as is: nothing skipped, nothing resampled
    assert len(read_manifest(corpus / "test.jsonl", "synth_test", corpus.parent / "cache", 16000, 20.0)) == 8


def test_synthesis_with_the_same_arguments_is_a_no_op(tiny_corpus):
    corpus, args = tiny_corpus
    assert "is up to date" in _run_script("synthesize_corpus.py", *args)


def test_prepare_asr_writes_real_set_manifests_and_a_tokenizer(tiny_corpus):
    corpus, _ = tiny_corpus
    out = corpus.parent
    output = _run_script(
        "prepare_asr.py",
        "--data-root",
        str(DATA_ROOT),
        "--out",
        str(out),
        "--cache-dir",
        str(out / "cache"),
        "--vocab-size",
        "60",
    )
    assert "fsdd test 300, valid 300, train 2400; yesno 60; pocketsphinx 11" in output
    counts = {path.relative_to(out).as_posix(): len(path.read_text().splitlines()) for path in out.glob("*/*.jsonl")}
    assert {k: v for k, v in counts.items() if not k.startswith("synth/")} == {
        "fsdd/train.jsonl": 2400,
        "fsdd/valid.jsonl": 300,
        "fsdd/test.jsonl": 300,
        "yesno/test.jsonl": 60,
        "pocketsphinx/test.jsonl": 11,
    }
    tokenizer = Tokenizer(out / "tokenizer" / "spm.model")
    assert tokenizer.vocab_size == 60
    for row in _rows(corpus, "test"):
        assert tokenizer.decode(tokenizer.encode(row["text"])) == row["text"]


def test_held_out_splits_do_not_move_with_the_train_voices_or_shares():
    """Valid / test draw from their own generators: a bigger train split with other engine shares (a
    recipe change) leaves every held-out utterance as it was, so test WERs stay comparable."""
    corpus = _synthesize_corpus_module()
    lines = (DATA_ROOT / "ptb" / "ptb.valid.txt").read_text().splitlines()
    common = dict(
        word_vocab=500,
        min_words=5,
        max_words=12,
        seed=0,
        engines=list(corpus.ENGINES),
        valid=6,
        test=10,
        digit_share=0.0,
        yesno_share=0.0,
        augment=True,
        held_out_shares="espeak=0.8,flite=0.12",
    )
    small = corpus.plan(argparse.Namespace(train=20, shares="espeak=0.8,flite=0.12,festival=0.08", **common), lines)
    large = corpus.plan(argparse.Namespace(train=60, shares="espeak=0.5,flite=0.3,festival=0.2", **common), lines)

    def held_out(items):
        return [
            (i.id, i.text, i.speaker.name, i.pitch, i.speed, i.effects, i.noise) for i in items if i.split != "train"
        ]

    assert len(held_out(small)) == 16 and held_out(small) == held_out(large)
    assert [i.text for i in small if i.split == "train"] != [i.text for i in large if i.split == "train"]
    train_names = {item.speaker.name for item in large if item.split == "train"}
    assert {"flite:slt@125Hz", "flite:slt"} <= train_names  # a flite voice at its own and a second pitch
    assert "flite:rms" in {item.speaker.name for item in small if item.split == "test"}


def test_the_piper_voice_synthesizes_offline_into_train_pseudo_speakers(tmp_path):
    """The Piper voice (pip extra `voices`) runs in-process, offline: 16 kHz files, pitch-shifted pseudo-speakers."""
    out = tmp_path / "piper"
    args = [
        "--preset",
        "piper",
        "--train",
        "6",
        "--out",
        str(out),
        "--text",
        str(DATA_ROOT / "wikitext-2" / "valid.txt"),
    ]
    output = _run_script("synthesize_corpus.py", *args, "--word-vocab", "2000", "--digit-share", "0.2")
    assert "piper: 6 utterances" in output
    rows = _rows(out, "train")
    assert len(rows) == 6 and {row["engine"] for row in rows} == {"piper"}
    assert all(row["speaker"].startswith("piper:joe") for row in rows)
    for row in rows:
        info = sf.info(str(out / row["audio"]))
        assert info.samplerate == 16000 and 0.3 < info.frames / 16000 < 15
    pitched = [row for row in rows if not row["speaker"].startswith("piper:joe+0c")]
    assert all(row["augment"].startswith("pitch ") for row in pitched)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tools"]["piper"].startswith("piper-tts 1.8")
    request = meta["request"]  # the preset's values, bar the flags given as well
    assert (request["engines"], request["valid"], request["test"], request["max_words"]) == (["piper"], 0, 0, 16)
    assert (request["train"], request["word_vocab"], request["digit_share"]) == (6, 2000, 0.2)


def test_a_piper_voice_file_that_does_not_match_its_checksum_is_refused(monkeypatch):
    corpus = _synthesize_corpus_module()
    monkeypatch.setitem(corpus.PIPER_VOICE_FILES, "en_US-joe-medium.onnx.json", "0" * 64)
    with pytest.raises(SystemExit) as err:
        corpus.piper_voice_files()
    assert "en_US-joe-medium.onnx.json: SHA-256 differs" in str(err.value) and "reinstall" in str(err.value)


def test_lm_text_is_cut_at_unknown_words_and_drops_every_run_that_holds_a_held_out_transcript(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_asr_lm", ROOT / "data_scripts" / "prepare_asr_lm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lines = (DATA_ROOT / "ptb" / "ptb.train.txt").read_text(encoding="utf-8").splitlines()[:300]
    text = tmp_path / "ptb_head.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    clean = [line for line in lines if "<unk>" not in line and len(normalize_text(line).split()) >= 8]
    held_out = " ".join(normalize_text(clean[0]).split()[2:7])  # 5 words from inside a sentence
    kept, dropped = script.text_lines(text, [held_out, "the"])  # "the": too short to hold out
    assert dropped >= 1 and not any(f" {held_out} " in f" {run} " for run in kept)
    assert normalize_text(clean[1]) in kept  # a sentence without the held-out words stays whole
    assert all(len(run.split()) >= script.MIN_TEXT_WORDS and "unk" not in run.split() for run in kept)
    unk_line = next(line for line in lines if line.count("<unk>") == 1 and len(line.split()) > 12)
    before, after = (normalize_text(part) for part in unk_line.split("<unk>"))
    assert {run for run in (before, after) if len(run.split()) >= 3} <= set(kept)  # cut there, never joined
    assert f"{before} {after}" not in kept
    with pytest.raises(script.UserInputError, match="does not exist"):
        script.text_lines(tmp_path / "missing.txt", [])
