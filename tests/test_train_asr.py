"""task=asr end to end on real recordings: train, beam-decode every test set, integer export, evaluate.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from app.data.text import train_tokenizer
from app.decode.wer import corpus_wer
from app.errors import UserInputError
from evaluate import evaluate
from tests.conftest import compose_config, run_script
from train import train

TEST_SETS = ["synth", "fsdd", "yesno", "pocketsphinx"]


def _overrides(asr_root, *extra: str) -> list[str]:
    return [
        "task=asr",
        "model=tiny",
        f"+paths.asr_root={asr_root}",
        f"paths.cache_dir={asr_root / 'cache'}",
        "data.num_workers=0",
        "data.max_batch_size=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "task.module.beam_size=2",
        "task.module.max_len_ratio=0.3",
        *extra,
    ]


@pytest.fixture(scope="module")
def irnn_asr_run(asr_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("asr_irnn")
    return run_dir, train(compose_config("train", _overrides(asr_root, "quant=irnn"), run_dir))


def test_float_asr_trains_and_reports_wer_per_test_set(asr_root, tmp_path):
    metrics = train(compose_config("train", _overrides(asr_root, "quant=float"), tmp_path))
    assert metrics["task"] == "asr" and metrics["engine"] == "float" and metrics["integer"] is None
    assert list(metrics["test_wer"]) == TEST_SETS and list(metrics["val_wer"]) == ["synth", "fsdd"]
    assert all(rate >= 0 for rate in metrics["test_wer"].values())
    assert metrics["val_ppl"] is None and metrics["test_ppl"] is None
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["test_wer"] == metrics["test_wer"]
    # real English speech (fsdd + pocketsphinx) and synthetic speech pooled apart; yesno (Hebrew) in neither
    summary = on_disk["test_wer_summary"]
    assert summary["real_speech"]["sets"] == ["fsdd", "pocketsphinx"] and summary["synthetic"]["sets"] == ["synth"]
    assert list(summary["not_aggregated"]) == ["yesno"] and "Hebrew" in summary["not_aggregated"]["yesno"]
    real = summary["real_speech"]
    assert real["words"] == summary["words"]["fsdd"] + summary["words"]["pocketsphinx"]
    assert real["wer"] == pytest.approx(
        sum(metrics["test_wer"][s] * summary["words"][s] for s in real["sets"]) / real["words"]
    )
    epoch = json.loads((tmp_path / "epochs.jsonl").read_text().splitlines()[0])
    assert epoch["train_loss"] > 0 and set(epoch["val_wer_sets"]) == {"synth", "fsdd"}
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_irnn_asr_integer_engine_decodes_the_same_words_as_qat(irnn_asr_run):
    run_dir, metrics = irnn_asr_run
    integer = metrics["integer"]
    assert integer["integer_checkpoint"] == str(run_dir / "model.int.safetensors")
    assert integer["test_wer"] == metrics["test_wer"]  # equal, not close: same logits, same search
    assert all(diff == 0 for diff in integer["test_wer_abs_diff_vs_qat"].values())
    assert integer["integer_param_bytes"] < 0.35 * integer["float_param_bytes"]
    assert metrics["quant_metrics"]["conv.0.frac_bits"] >= 0
    # every test utterance's reference and hypothesis, as the WER was computed from them, on both engines
    for folder, wers in (("decoded", metrics["test_wer"]), ("decoded_integer", integer["test_wer"])):
        assert sorted(path.stem for path in (run_dir / folder).iterdir()) == sorted(TEST_SETS)
        for set_name, wer in wers.items():
            rows = [json.loads(line) for line in (run_dir / folder / f"{set_name}.jsonl").read_text().splitlines()]
            assert rows and all(Path(row["audio"]).is_file() and row["speaker"] for row in rows)
            assert 100.0 * sum(r["errors"] for r in rows) / sum(r["words"] for r in rows) == pytest.approx(wer)
            assert corpus_wer([r["ref"] for r in rows], [r["hyp"] for r in rows])[0] == pytest.approx(wer)
    assert (run_dir / "decoded" / "synth.jsonl").read_text() == (
        run_dir / "decoded_integer" / "synth.jsonl"
    ).read_text()


def test_evaluate_reruns_the_checkpoint_and_the_integer_checkpoint(irnn_asr_run, asr_root, tmp_path):
    run_dir, metrics = irnn_asr_run
    common = [
        o
        for o in _overrides(asr_root)
        if not o.startswith(("model=", "trainer.limit_train", "trainer.max_epochs", "task.module"))
    ]
    qat = evaluate(
        compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", "beam_size=2"], tmp_path / "q")
    )
    assert qat["test_wer"] == metrics["test_wer"] and qat["engine"] == "qat"
    integer = evaluate(
        compose_config(
            "evaluate", [*common, f"ckpt={run_dir / 'model.int.safetensors'}", "engine=integer"], tmp_path / "i"
        )
    )
    assert integer["engine"] == "integer" and integer["test_wer"] == metrics["test_wer"]
    assert integer["test_wer_summary"] == metrics["test_wer_summary"] == qat["test_wer_summary"]
    assert (tmp_path / "i" / "decoded" / "fsdd.jsonl").read_text() == (run_dir / "decoded" / "fsdd.jsonl").read_text()
    # decoding options tuned at evaluation time reach both engines' searches alike
    tuned = ["beam_size=3", "length_norm=0.0", "ctc_weight=0.2"]
    qat_tuned = evaluate(
        compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", *tuned], tmp_path / "qt")
    )
    integer_tuned = evaluate(
        compose_config(
            "evaluate",
            [*common, f"ckpt={run_dir / 'model.int.safetensors'}", "engine=integer", *tuned],
            tmp_path / "it",
        )
    )
    assert integer_tuned["integer"]["length_norm"] == 0.0 and integer_tuned["integer"]["beam_size"] == 3
    assert integer_tuned["test_wer"] == qat_tuned["test_wer"]
    for set_name in metrics["test_wer"]:
        assert (tmp_path / "it" / "decoded" / f"{set_name}.jsonl").read_text() == (
            tmp_path / "qt" / "decoded" / f"{set_name}.jsonl"
        ).read_text()
    with pytest.raises(UserInputError, match="task=asr"):
        evaluate(compose_config("evaluate", [f"ckpt={metrics['checkpoint']}"], tmp_path / "lm"))
    for engine, ckpt in (("qat", metrics["checkpoint"]), ("integer", run_dir / "model.int.safetensors")):
        with pytest.raises(UserInputError, match="ctc_weight=1.5: must be in"):
            evaluate(
                compose_config(
                    "evaluate", [*common, f"ckpt={ckpt}", f"engine={engine}", "ctc_weight=1.5"], tmp_path / "w"
                )
            )
        with pytest.raises(UserInputError, match=r"ctc_weight=1 decodes with the CTC layer alone.*set beam_size=1"):
            evaluate(
                compose_config(
                    "evaluate", [*common, f"ckpt={ckpt}", f"engine={engine}", "ctc_weight=1"], tmp_path / "w"
                )
            )
    # ctc_weight=1: the CTC layer's best path, the same words on both engines
    best_path = ["beam_size=1", "ctc_weight=1"]
    for engine, ckpt in (("qat", metrics["checkpoint"]), ("integer", run_dir / "model.int.safetensors")):
        done = evaluate(
            compose_config(
                "evaluate", [*common, f"ckpt={ckpt}", f"engine={engine}", *best_path], tmp_path / f"c{engine}"
            )
        )
        assert set(done["test_wer"]) == set(metrics["test_wer"])
    for set_name in metrics["test_wer"]:
        assert (tmp_path / "cinteger" / "decoded" / f"{set_name}.jsonl").read_text() == (
            tmp_path / "cqat" / "decoded" / f"{set_name}.jsonl"
        ).read_text()


def test_validation_by_the_joint_search_ranks_epochs_as_the_test_decodes_on_both_engines(asr_root, tmp_path):
    """task.module.val_beam_size / val_decode_ctc_weight: validation decodes by that search (not greedily), and
    evaluate.py validates the integer checkpoint the same way. The val sets decoded as test sets by that search give
    the validation WER; by greedy search they give another."""
    search = ["task.module.val_beam_size=2", "task.module.val_decode_ctc_weight=0.3"]
    run = train(compose_config("train", _overrides(asr_root, "quant=irnn", *search), tmp_path / "run"))
    common = [
        o
        for o in _overrides(asr_root)
        if not o.startswith(("model=", "trainer.limit_train", "trainer.max_epochs", "task.module"))
    ]
    as_test = ["~data.test", "+data.test={synth: synth/valid.jsonl, fsdd: fsdd/valid.jsonl}"]
    joint, greedy = (
        evaluate(
            compose_config(
                "evaluate", [*common, f"ckpt={run['checkpoint']}", *as_test, *options], tmp_path / f"e{number}"
            )
        )
        for number, options in enumerate((["beam_size=2", "ctc_weight=0.3"], ["beam_size=1", "ctc_weight=0"]))
    )
    assert joint["val_wer"] == joint["test_wer"] == greedy["val_wer"] == run["val_wer"]
    assert greedy["test_wer"] != joint["test_wer"]  # the two searches differ on these sets: the check above could fail
    integer = evaluate(
        compose_config(
            "evaluate",
            [*common, f"ckpt={tmp_path / 'run' / 'model.int.safetensors'}", "engine=integer", *as_test, "ctc_weight=0"],
            tmp_path / "i",
        )
    )
    assert integer["val_wer"] == joint["val_wer"] and integer["test_wer"] == greedy["test_wer"]


def test_evaluate_over_several_dithers_reports_the_mean_and_every_pass(irnn_asr_run, asr_root, tmp_path):
    run_dir, metrics = irnn_asr_run
    common = [o for o in _overrides(asr_root) if not o.startswith(("model=", "trainer.limit_train", "task.module"))]
    seeds = "eval_seeds=[1234,7]"
    qat = evaluate(
        compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", "beam_size=2", seeds], tmp_path / "q")
    )
    integer = evaluate(
        compose_config(
            "evaluate", [*common, f"ckpt={run_dir / 'model.int.safetensors'}", "engine=integer", seeds], tmp_path / "i"
        )
    )
    assert list(qat["dither_passes"]) == ["1234", "7"]
    # the pass at the default eval_seed is the run's own test; the headline is the passes' mean per set
    assert qat["dither_passes"]["1234"]["test_wer"] == metrics["test_wer"]
    passes = [one["test_wer"] for one in qat["dither_passes"].values()]
    assert qat["test_wer"] == {name: pytest.approx((passes[0][name] + passes[1][name]) / 2) for name in TEST_SETS}
    real = qat["test_wer_summary"]["real_speech"]
    assert real["words"] == 2 * metrics["test_wer_summary"]["real_speech"]["words"]
    assert real["wer"] == pytest.approx(sum(one["real_speech"] for one in qat["dither_passes"].values()) / 2)
    # every pass decodes into its own folder, and the integer engine matches the QAT model pass by pass
    assert integer["dither_passes"] == qat["dither_passes"] and integer["engine"] == "integer"
    for seed in ("1234", "7"):
        assert (tmp_path / "i" / f"eval_seed-{seed}" / "decoded" / "fsdd.jsonl").read_text() == (
            tmp_path / "q" / f"eval_seed-{seed}" / "decoded" / "fsdd.jsonl"
        ).read_text()
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["dither_passes"] == qat["dither_passes"]
    for bad, message in (("eval_seeds=[3]", "at least two"), ("eval_seeds=[3,3]", "distinct whole numbers")):
        with pytest.raises(UserInputError, match=message):
            evaluate(compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", bad], tmp_path / "b"))


def test_bad_asr_settings_fail_with_one_clear_line(asr_root, tmp_path):
    with pytest.raises(UserInputError, match="no asr section"):
        train(compose_config("train", _overrides(asr_root, "model=medium"), tmp_path / "a"))
    with pytest.raises(UserInputError, match="model.asr.ctc=true"):
        train(compose_config("train", _overrides(asr_root, "model.asr.ctc=false"), tmp_path / "b"))
    with pytest.raises(UserInputError, match="decode_ctc_weight=0.3 needs a CTC layer"):  # joint decoding needs it too
        train(
            compose_config(
                "train", _overrides(asr_root, "model.asr.ctc=false", "task.module.ctc_weight=0"), tmp_path / "b2"
            )
        )
    with pytest.raises(UserInputError, match="data.bos_eos=true"):
        train(compose_config("train", _overrides(asr_root, "data.bos_eos=false"), tmp_path / "c"))
    with pytest.raises(UserInputError, match="cannot train on data=asr_synth"):
        lm_on_speech = [o for o in _overrides(asr_root, "task=lm", "data=asr_synth") if not o.startswith("task.module")]
        train(compose_config("train", lm_on_speech, tmp_path / "d"))


def test_fast_dev_run_trains_one_batch_and_beam_decodes_every_test_set(asr_root, tmp_path):
    overrides = [o for o in _overrides(asr_root, "quant=float") if not o.startswith("trainer.limit_")]
    metrics = train(compose_config("train", [*overrides, "trainer.fast_dev_run=true"], tmp_path))
    assert metrics["checkpoint"] is None  # fast_dev_run saves nothing: the weights in memory are tested
    assert list(metrics["test_wer"]) == TEST_SETS


@pytest.mark.parametrize("quant", [["quant=irnn_denseshift"], ["quant=denseshift", "quant.decomposition=false"]])
def test_denseshift_asr_trains_and_irnn_denseshift_exports_packed_codes(asr_root, tmp_path, quant):
    metrics = train(compose_config("train", _overrides(asr_root, *quant, "trainer.limit_test_batches=1"), tmp_path))
    assert list(metrics["test_wer"]) == TEST_SETS
    if quant[0] == "quant=irnn_denseshift":
        assert metrics["integer"]["test_wer"] == metrics["test_wer"]
        assert metrics["integer"]["integer_param_bytes"] < 0.25 * metrics["integer"]["float_param_bytes"]
    else:
        assert metrics["integer"] is None and any(key.startswith("freeze/") for key in metrics["quant_metrics"])


def test_lm_fusion_with_an_lm_trained_on_the_asr_pieces_decodes_the_same_words_on_both_engines(
    irnn_asr_run, asr_root, tmp_path
):
    run_dir, metrics = irnn_asr_run
    cache = asr_root / "cache"
    done = run_script("data_scripts/prepare_asr_lm.py", "--out", str(asr_root), "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    lines = (asr_root / "lm" / "train.txt").read_text(encoding="utf-8").splitlines()
    assert lines and all(
        piece.startswith("▁") for piece in lines[0].split()[:1]
    )  # tokenizer pieces, word starts marked
    lm_overrides = [
        "experiment=asr_lm",
        "model=tiny",
        f"+paths.asr_root={asr_root}",
        f"paths.cache_dir={cache}",
        "task.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
    ]
    train(compose_config("train", lm_overrides, tmp_path / "lm"))
    lm = tmp_path / "lm" / "model.int.safetensors"
    common = [
        o
        for o in _overrides(asr_root)
        if not o.startswith(("model=", "trainer.limit_train", "trainer.max_epochs", "task.module"))
    ]
    fused = [f"lm={lm}", "lm_weight=2.0", "beam_size=2"]
    qat = evaluate(compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", *fused], tmp_path / "q"))
    integer = evaluate(
        compose_config(
            "evaluate", [*common, f"ckpt={run_dir / 'model.int.safetensors'}", "engine=integer", *fused], tmp_path / "i"
        )
    )
    assert integer["test_wer"] == pytest.approx(
        qat["test_wer"], abs=1e-4
    )  # the same LM (integer) and the same search on both engines
    for wrong, message in (
        (metrics["checkpoint"], "integer LM checkpoint"),
        (run_dir / "model.int.safetensors", "not a language model"),
    ):
        with pytest.raises(UserInputError, match=message):
            evaluate(
                compose_config("evaluate", [*common, f"ckpt={metrics['checkpoint']}", f"lm={wrong}"], tmp_path / "w")
            )


def _manifest_audio(manifest: Path) -> list[Path]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [(manifest.parent / row["audio"]).resolve() for row in rows]


def test_transcribe_gives_a_test_sets_files_the_words_the_run_decoded_on_both_engines(irnn_asr_run, asr_root):
    from app.transcribe import transcribe

    run_dir, metrics = irnn_asr_run
    for set_name in ("fsdd", "pocketsphinx"):
        audio = _manifest_audio(asr_root / set_name / "test.jsonl")  # in manifest order: the run's dither per file
        decoded = {
            str(Path(row["audio"]).resolve()): row["hyp"]
            for row in map(json.loads, (run_dir / "decoded" / f"{set_name}.jsonl").read_text().splitlines())
        }
        assert decoded, set_name  # the run decoded a batch of this set (trainer.limit_test_batches=1)
        for checkpoint in (Path(metrics["checkpoint"]), run_dir / "model.int.safetensors"):
            emitted: list[tuple[str, str]] = []
            words = transcribe(checkpoint, audio, emit=lambda path, text, out=emitted: out.append((path, text)))
            assert emitted == list(zip(map(str, audio), words, strict=True))
            by_file = dict(zip(map(str, audio), words, strict=True))
            assert {path: by_file[path] for path in decoded} == decoded, (set_name, checkpoint.name)


def test_transcribe_from_the_command_line_and_its_one_line_refusals(irnn_asr_run, asr_root, tmp_path, capsys):
    from app.transcribe import main

    run_dir, metrics = irnn_asr_run
    integer = run_dir / "model.int.safetensors"
    audio = _manifest_audio(asr_root / "fsdd" / "test.jsonl")[:2]
    main([str(integer), *map(str, audio), "--jsonl", "--beam-size", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["audio"] for row in rows] == list(map(str, audio)) and all(isinstance(r["text"], str) for r in rows)
    samples, rate = sf.read(str(audio[0]))
    stereo = tmp_path / "stereo_22k.wav"  # another rate and two channels: resampled and averaged, not refused
    sf.write(str(stereo), np.stack([samples, samples], axis=1), 22050)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0), rate)
    lm_config = tmp_path / "lm.yaml"
    lm_config.write_text("task:\n  name: lm\ndata:\n  name: ptb\n")
    for args, message in (
        ([integer, tmp_path / "missing.wav"], "missing.wav: audio file not found"),
        ([integer, audio[0], corrupt], "corrupt.wav: corrupt audio"),
        ([integer, empty], "empty.wav: empty audio"),
        ([integer], "no audio files given"),
        ([run_dir, audio[0]], "is not a file (a run folder: pass <run>/checkpoints/best.ckpt"),
        (
            [integer, audio[0], "--ctc-weight", "1", "--beam-size", "3"],
            "--ctc-weight=1 decodes with the CTC layer alone",
        ),
        ([integer, audio[0], "--config", tmp_path / "none.yaml"], "none.yaml does not exist"),
        ([integer, audio[0], "--config", corrupt], "is not a readable run config"),
        ([integer, audio[0], "--config", lm_config], "is not the config of a task=asr run"),
    ):
        with pytest.raises(SystemExit) as refused:  # `error: <one line>` on stderr, exit status 1, nothing decoded
            main(list(map(str, args)))
        assert refused.value.code.startswith("error: ") and "\n" not in refused.value.code
        assert message in refused.value.code and capsys.readouterr().out == ""
    other = train_tokenizer(["one two three four five six seven eight nine"] * 20, tmp_path / "other", 34)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["tokenizer"] = str(other)
    other_config = tmp_path / "other_tokenizer.yaml"
    other_config.write_text(yaml.safe_dump(config))
    for checkpoint in (integer, Path(metrics["checkpoint"])):  # named by its path, not by evaluate.py's ckpt=
        with pytest.raises(SystemExit) as refused:
            main([str(checkpoint), str(audio[0]), "--config", str(other_config)])
        assert refused.value.code.startswith(f"error: {checkpoint} was trained with another tokenizer")
        assert "pass its run's config.yaml" in refused.value.code and capsys.readouterr().out == ""
    lone = tmp_path / "lone.ckpt"  # a checkpoint copied away from its run: its config must be named
    lone.write_bytes(Path(metrics["checkpoint"]).read_bytes())
    with pytest.raises(SystemExit, match=r"pass the run's config with --config <run>/config\.yaml"):
        main([str(lone), str(audio[0])])
    done = run_script("-m", "app.transcribe", str(lone), str(stereo), "--config", str(run_dir / "config.yaml"))
    assert done.returncode == 0 and done.stdout.startswith(f"{stereo}\t"), done.stderr
