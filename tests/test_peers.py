"""``python -m app.peers``: PocketSphinx decodes our real test sets and is scored exactly as our models are."""

import builtins
import importlib.util
import json

import pytest

import app.reporting.peers as peers
from app.data.manifest import fsdd_utterances, pocketsphinx_utterances
from app.decode.wer import corpus_wer
from app.errors import UserInputError
from tests.conftest import DATA_ROOT, run_script


def test_the_peers_extra_is_installed_where_the_suite_runs():
    # .ci/run and the README's test command install .[test,bench,peers]: the decoding tests below must run, not skip
    assert importlib.util.find_spec("pocketsphinx") is not None, "pip install -e '.[peers]'"


def test_pocketsphinx_on_real_read_speech_is_scored_like_our_models(tmp_path):
    cards = [u for u in pocketsphinx_utterances(DATA_ROOT / "pocketsphinx_testdata", tmp_path) if u.speaker == "cards"]
    utterances = cards[:3]  # "ten of clubs", "four queen of clubs", "seven of clubs"
    record = peers.decode_set(peers.new_decoder(), "pocketsphinx", utterances, progress=False)
    assert record["refs"] == [u.text for u in utterances] and record["utterances"] == 3
    assert record["hyps"][0] == "ten of clubs"  # the en-US model reads clear English speech
    row = peers.score_row("PocketSphinx", "pocketsphinx", record, "real")
    assert row["wer"] == corpus_wer(record["refs"], record["hyps"])[0] and row["words"] == 10
    assert row["real_speech"] is True and row["utterances"] == 3


def test_cli_writes_the_rows_the_report_reads_and_pools_the_real_english_sets(tmp_path):
    out = tmp_path / "bench" / "peers.json"
    done = run_script("-m", "app.peers", "--sets", "fsdd", "yesno", "--limit", "1", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    version = peers.pocketsphinx_version()
    assert [(row["system"], row["set"]) for row in result["rows"]] == [
        (f"PocketSphinx {version} (en-US default model)", "fsdd"),
        (f"PocketSphinx {version} (en-US default model, digits grammar)", "fsdd"),
        (f"PocketSphinx {version} (en-US default model)", "yesno"),
    ]
    for row in result["rows"]:
        assert {"system", "set", "wer", "words", "utterances", "real_speech"} <= set(row)
        assert row["utterances"] == 1 and row["real_speech"] is True and row["wer"] >= 0
    assert [row["speech"] for row in result["rows"]] == ["real", "real", "real_non_english"]
    assert result["real_speech"]["sets"] == ["fsdd"]  # yesno is Hebrew: in no aggregate
    assert result["machine"] and "PocketSphinx" in done.stdout
    decoded = [
        json.loads(line) for line in (tmp_path / "bench" / "peers_decoded" / "fsdd.jsonl").read_text().splitlines()
    ]
    assert [row["audio"] for row in decoded] == [u.audio for u in fsdd_utterances(DATA_ROOT / "fsdd")["test"][:1]]


def test_digits_grammar_decodes_fsdd_as_one_digit_word(tmp_path):
    utterances = fsdd_utterances(DATA_ROOT / "fsdd")["test"][::60][:3]  # 8 kHz files, resampled to 16 kHz
    record = peers.decode_set(peers.new_decoder(peers.DIGITS_GRAMMAR), "fsdd", utterances, progress=False)
    digits = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert all(hyp in digits | {""} for hyp in record["hyps"])


def test_missing_pocketsphinx_or_unknown_set_fails_with_one_clear_line(monkeypatch, tmp_path):
    with pytest.raises(UserInputError, match="PocketSphinx decodes fsdd, pocketsphinx, yesno"):
        peers.run_peers(DATA_ROOT, ["synth"], tmp_path / "peers.json")
    real_import = builtins.__import__

    def no_pocketsphinx(name, *args, **kwargs):
        if name == "pocketsphinx":
            raise ImportError("No module named 'pocketsphinx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pocketsphinx)
    with pytest.raises(SystemExit, match=r"error: pocketsphinx is not installed: pip install -e '\.\[peers\]'"):
        peers.main(["--sets", "fsdd", "--out", str(tmp_path / "peers.json")])


def test_the_asterisk_set_is_read_from_its_prepared_manifest_or_named_as_missing(asr_root, tmp_path):
    result = peers.run_peers(
        DATA_ROOT, ["asterisk"], tmp_path / "peers.json", limit=2, progress=False, asr_root=asr_root
    )
    assert [(row["set"], row["utterances"], row["speech"]) for row in result["rows"]] == [("asterisk", 2, "real")]
    with pytest.raises(UserInputError, match=r"asterisk/dev.jsonl does not exist: run `python data_scripts/prepare_a"):
        peers.run_peers(DATA_ROOT, ["asterisk"], tmp_path / "peers.json", asr_root=tmp_path)
