"""python -m app.report: tables, CSVs and plots from run directories; bad metrics.json files are named and skipped."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from app.reporting import plots
from app.reporting.report import SPEED_END, SPEED_START, block_markers, main, merge_block, relative_command
from evaluate import evaluate
from tests.conftest import compose_config, eval_overrides
from train import train

# Benchmarks in app.bench's format (their timings are not what is tested here)
ENGINE_BENCH = {
    "machine": "Test CPU, torch x, 2 threads",
    "rows": [
        {
            "size": "small",
            "hidden": 200,
            "batch": 1,
            "method": "float nn.LSTM",
            "latency_ms_per_token": 3.0,
            "speedup_vs_float": 1.0,
        },
        {
            "size": "small",
            "hidden": 200,
            "batch": 1,
            "method": "integer engine",
            "latency_ms_per_token": 1.5,
            "speedup_vs_float": 2.0,
        },
        {
            "size": "small",
            "hidden": 200,
            "batch": 1,
            "method": "DenseShift shift-add",
            "weight_bits": 3,
            "weight_path": "shift_kernel",
            "latency_ms_per_token": 2.0,
            "speedup_vs_float": 1.5,
        },
        {
            "size": "small",
            "hidden": 200,
            "batch": 1,
            "method": "DenseShift int8 decode",
            "weight_bits": 3,
            "weight_path": "int8_decode",
            "latency_ms_per_token": 1.0,
            "speedup_vs_float": 3.0,
        },
    ],
}
TRAIN_BENCH = {
    "machine": "Test CPU",
    "size": "small",
    "batch": 20,
    "bptt": 35,
    "float_tokens_per_s": 5000.0,
    "irnn_tokens_per_s": 2000.0,
    "irnn_slowdown": 2.5,
}


@pytest.fixture(scope="module")
def outputs(ptb_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """outputs/ with real tiny runs: a DenseShift sweep point and its float control (2 epochs each, same
    recipe), a re-evaluation of the DenseShift run with 8-piece PWLs, and two benchmark files."""
    root = tmp_path_factory.mktemp("outputs")
    two_epochs = [*ptb_overrides, "task.max_epochs=2"]
    for mode in ("float_adam", "irnn_denseshift_3bit"):
        train(compose_config("train", [*two_epochs, f"+mode={mode}"], root / "sweeps" / "test" / f"+mode-{mode}"))
    checkpoint = root / "sweeps" / "test" / "+mode-irnn_denseshift_3bit" / "checkpoints" / "best.ckpt"
    evaluate(
        compose_config(
            "evaluate",
            [*eval_overrides(ptb_overrides), f"ckpt={checkpoint}", "pwl_segments=8"],
            root / "evals" / "ptb" / "pwl8",
        )
    )
    (root / "bench").mkdir()
    (root / "bench" / "engine.json").write_text(json.dumps(ENGINE_BENCH))
    (root / "bench" / "train.json").write_text(json.dumps(TRAIN_BENCH))
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_report_compares_real_runs_with_their_float_control_and_draws_the_plots(outputs: Path, monkeypatch) -> None:
    monkeypatch.setattr(plots, "PWL_SEGMENTS", (4, 8, 16, 32))  # 64 pieces: a slow fit that adds nothing here
    results_md = outputs.parent / "results.md"
    results_md.write_text(
        "intro\n"
        + "".join(f"{start}\nold\n{end}\n" for start, end in map(block_markers, ("accuracy", "peers")))
        + "outro\n"
    )
    main(["--outputs", str(outputs), "--results", str(results_md)])
    reports = outputs / "reports"
    metrics = {
        mode: json.loads((outputs / "sweeps" / "test" / f"+mode-{mode}" / "metrics.json").read_text())
        for mode in ("float_adam", "irnn_denseshift_3bit")
    }
    float_ppl, shift = metrics["float_adam"]["test_ppl"], metrics["irnn_denseshift_3bit"]

    accuracy = {(r["quant"], r["engine"], r["settings"]): r for r in _csv(reports / "accuracy.csv")}
    trained = accuracy[("irnn_denseshift", "qat", "pwl_segments=32")]
    assert float(trained["change"]) == pytest.approx(100 * (shift["test_ppl"] / float_ppl - 1))
    assert float(trained["integer_test"]) == pytest.approx(shift["integer"]["test_ppl"])
    evaluated = accuracy[("irnn_denseshift", "qat", "pwl_segments=8")]  # the evaluation is matched to its run's recipe
    assert float(evaluated["float_test"]) == pytest.approx(float_ppl)
    assert f"% (vs {float_ppl:.2f})" in (reports / "accuracy.md").read_text()
    assert trained["hardware"] == shift["hardware"] and trained["hardware"].endswith("threads")  # recorded by train.py

    (size,) = _csv(reports / "size.csv")
    assert size["weights_stored_as"] == "packed 3-bit shift codes"
    assert int(size["integer_bytes"]) == shift["integer"]["integer_param_bytes"]
    assert float(size["ratio"]) == pytest.approx(shift["integer"]["integer_size_ratio"])

    sweep = {r["quant"]: r for r in _csv(reports / "sweeps.csv")}  # each point vs its sweep's float point
    assert float(sweep["irnn_denseshift"]["test_ppl"]) == pytest.approx(shift["test_ppl"])  # not the pwl8 re-evaluation
    assert float(sweep["irnn_denseshift"]["float_test_ppl"]) == pytest.approx(float_ppl)
    assert float(sweep["irnn_denseshift"]["integer_test_ppl"]) == pytest.approx(shift["integer"]["test_ppl"])
    epochs = [
        json.loads(line)
        for line in (outputs / "sweeps/test/+mode-irnn_denseshift_3bit/epochs.jsonl").read_text().splitlines()
    ]
    assert float(sweep["irnn_denseshift"]["train_loop_s"]) == pytest.approx(sum(e["train_seconds"] for e in epochs))
    assert (
        "| +mode-irnn_denseshift_3bit | irnn_denseshift 3-bit |" in (reports / "sweeps.md").read_text()
    )  # whole names

    speed = (reports / "speed.md").read_text()
    assert (
        "`python -m app.bench engine` on Test CPU, torch x, 2 threads" in speed and "| DenseShift shift-add |" in speed
    )
    assert "| 2.50x |" in speed  # train.json's irnn_slowdown

    ablations = _csv(reports / "ablations.csv")
    assert sorted((r["axis"], r["value"]) for r in ablations) == [
        ("quant.pwl_segments", "32"),
        ("quant.pwl_segments", "8"),
    ]
    assert all(float(r["frozen_fraction"]) >= 0 for r in ablations if r["command"].startswith("python train.py"))

    results = (reports / "results.md").read_text()
    assert "1.6x over existing methods" in results and "ARM Cortex-A57" in results  # the paper's, labelled
    assert "shift-add kernel vs the same codes decoded to int8: 0.50x (small, batch 1), Test CPU" in results
    for png in ("pwl_error_vs_segments", "learning_curves", "denseshift_freezing"):
        assert (reports / f"{png}.png").read_bytes()[:4] == b"\x89PNG" and f"]({png}.png)" in results
    assert not (reports / "accuracy_vs_bits.png").exists()  # no runs that differ in bits

    text = results_md.read_text()  # the accuracy block rewritten; the peers block (no peers.json here) kept
    assert text.startswith("intro\n") and text.endswith("outro\n") and text.count("old") == 1
    assert f"| {float_ppl:.2f} |" in text.split(block_markers("accuracy")[1])[0] and ".png" not in text


def _fake_run(root: Path, where: str, config: dict | None, metrics: dict | str, epochs: list[dict] = ()) -> Path:
    directory = root / where
    directory.mkdir(parents=True)
    if config is not None:
        (directory / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (directory / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    (directory / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return directory


def _asr_metrics(quant: str, wer: dict[str, float], **fields) -> dict:
    return {
        "command": f"python train.py task=asr quant={quant}",
        "task": "asr",
        "quant": quant,
        "model": "small",
        "data": "asr_synth",
        "val_ppl": None,
        "test_ppl": None,
        "val_wer": wer,
        "test_wer": wer,
        "engine": "float" if quant == "float" else "qat",
        "integer": None,
        **fields,
    }


def test_asr_wer_is_compared_in_absolute_points_per_set_and_bits_are_plotted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(plots, "PWL_SEGMENTS", (4, 8))
    recipe = {"task": {"name": "asr", "max_epochs": 3}, "model": {"name": "small"}, "seed": 1}
    _fake_run(
        tmp_path,
        "sweeps/asr/quant=float",
        {**recipe, "quant": {"name": "float"}},
        _asr_metrics("float", {"synth": 10.0, "fsdd": 20.0}),
        [{"epoch": 0, "val_wer": {"synth": 30.0}}],
    )
    for bits, wer in ((4, 14.0), (8, 11.5)):
        _fake_run(
            tmp_path,
            f"sweeps/asr/quant.weight_bits={bits}",
            {**recipe, "quant": {"name": "irnn", "weight_bits": bits}},
            _asr_metrics(
                "irnn",
                {"synth": wer, "fsdd": 21.0},
                integer={"test_wer": {"synth": wer}},
                command=f"python train.py task=asr quant=irnn quant.weight_bits={bits}",
            ),
        )
    # the float point re-decoded by `evaluate.py sweep_dir=` (e.g. another search): the sweeps table uses that
    float_ckpt = tmp_path / "sweeps/asr/quant=float/checkpoints/best.ckpt"
    _fake_run(
        tmp_path,
        "sweeps/asr/quant=float/evals/qat",
        None,
        _asr_metrics(
            "float", {"synth": 9.0, "fsdd": 19.0}, command="python evaluate.py sweep_dir=x", checkpoint=str(float_ckpt)
        ),
    )
    main(["--outputs", str(tmp_path)])
    reports = tmp_path / "reports"
    rows = {
        (r["settings"], r["set"]): r
        for r in _csv(reports / "accuracy.csv")
        if r["command"].startswith("python train.py")
    }
    assert float(rows[("weight_bits=8", "synth")]["change"]) == pytest.approx(1.5)
    assert rows[("weight_bits=8", "synth")]["change_unit"] == "points"
    assert "| +1.50 pts (vs 10.00) |" in (reports / "accuracy.md").read_text()
    sweep = {r["settings"]: r for r in _csv(reports / "sweeps.csv")}
    assert json.loads(sweep["weight_bits=8"]["float_test_wer"]) == {"synth": 9.0, "fsdd": 19.0}
    assert "| 11.50 / 21.00 | +2.50 / +2.00 | 11.50 /  |" in (reports / "sweeps.md").read_text()  # engine: synth only
    assert "| quant=float | float | 9.00 / 19.00 |" in (reports / "sweeps.md").read_text()
    assert "**`asr`** (3 points):" in (reports / "sweeps.md").read_text()  # no epoch times: no total
    assert (reports / "accuracy_vs_bits.png").read_bytes()[:4] == b"\x89PNG"
    assert "quant.weight_bits" in (reports / "ablations.md").read_text()
    assert {r["hardware"] for r in rows.values()} == {"the CPU (model not recorded)"}  # metrics.json without the field


def test_a_missing_or_corrupt_metrics_json_is_skipped_with_a_warning_naming_it(tmp_path: Path) -> None:
    config = {"task": {"name": "lm"}, "quant": {"name": "float"}}
    good = {"command": "python train.py quant=float", "task": "lm", "quant": "float", "data": "ptb", "test_ppl": 100.0}
    _fake_run(tmp_path, "runs/lm/good/t0", config, good)
    _fake_run(tmp_path, "runs/lm/stopped/t0", config, None)
    _fake_run(tmp_path, "runs/lm/torn/t0", config, '{"command": "python train.py", "test_')
    _fake_run(tmp_path, "evals/ptb/t1", None, "[1, 2]")
    with pytest.warns(UserWarning) as caught:
        main(["--outputs", str(tmp_path), "--no-plots"])
    messages = "\n".join(str(w.message) for w in caught)
    assert "runs/lm/stopped/t0: no metrics.json" in messages
    assert "runs/lm/torn/t0/metrics.json: unreadable metrics.json" in messages
    assert "evals/ptb/t1/metrics.json: not a metrics.json written by train.py or evaluate.py" in messages
    assert [r["command"] for r in _csv(tmp_path / "reports" / "accuracy.csv")] == [good["command"]]


def _lm_metrics(command: str, test_ppl: float, **fields) -> dict:
    return {
        "command": command,
        "task": "lm",
        "quant": "irnn",
        "model": "small",
        "data": "ptb",
        "engine": "qat",
        "val_ppl": test_ppl + 2,
        "test_ppl": test_ppl,
        "integer": {"float_param_bytes": 1000, "integer_param_bytes": 250, "integer_size_ratio": 0.25},
        **fields,
    }


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_one_row_per_distinct_run_with_commands_free_of_machine_paths(tmp_path: Path) -> None:
    """A command run twice is reported once (its latest run), sizes shared by several runs are one row, and the
    absolute paths of the machine it ran on are shown relative to the folder the output root is in."""
    import os

    outputs = tmp_path / "outputs"
    config = {"task": {"name": "lm"}, "quant": {"name": "irnn"}, "model": {"name": "small"}}
    command = f"python train.py quant=irnn quant.init_from={outputs}/runs/lm/float/t0/checkpoints/best.ckpt"
    older = _fake_run(outputs, "runs/lm/irnn/t1", config, _lm_metrics(command, 120.0))
    newer = _fake_run(outputs, "runs/lm/irnn/t2", config, _lm_metrics(command, 110.0))
    os.utime(older / "metrics.json", (1_000, 1_000))
    os.utime(newer / "metrics.json", (2_000, 2_000))
    elsewhere = {**config, "paths": {"output_root": str(tmp_path / "gout")}}  # paths.output_root=<repo>/gout
    _fake_run(
        outputs,
        "runs/lm/irnn-gpu/t3",
        elsewhere,
        _lm_metrics(
            f"python train.py quant=irnn paths.output_root={tmp_path}/gout quant.init_from=/opt/ckpts/x/best.ckpt",
            105.0,
        ),
    )
    repository_results = Path(__file__).resolve().parents[1] / "docs" / "results.md"
    before = repository_results.read_text()
    main(["--outputs", str(outputs), "--no-plots"])
    assert repository_results.read_text() == before  # another outputs folder never rewrites the repository's results
    reports = outputs / "reports"
    accuracy = (reports / "accuracy.md").read_text()
    assert "| 110.00 |" in accuracy and "| 120.00 |" not in accuracy  # the latest of the two runs of one command
    assert "quant.init_from=outputs/runs/lm/float/t0/checkpoints/best.ckpt" in accuracy
    assert "paths.output_root=gout quant.init_from=.../x/best.ckpt" in accuracy
    assert str(tmp_path) not in accuracy and "/opt/" not in accuracy
    size_rows = _table_rows((reports / "size.md").read_text())
    assert (
        len(size_rows) == 2 and "| 2 | `python train.py quant=irnn paths.output_root=gout" in size_rows[1]
    )  # 2 runs, latest
    results = (reports / "results.md").read_text()
    rows = _table_rows(results)
    assert len(rows) == len(set(rows)), "a row appears twice in results.md"
    assert results.count("25.0% (4.0x smaller; ptb small)") == 1  # the claims cell names each size once


def test_relative_command_keeps_relative_paths_and_shortens_paths_outside_the_repository() -> None:
    bases = [Path("/srv/repo")]
    assert relative_command("python evaluate.py sweep_dir=outputs/sweeps/cpu beam_size=10", bases) == (
        "python evaluate.py sweep_dir=outputs/sweeps/cpu beam_size=10"
    )
    assert relative_command("python train.py a=/srv/repo/.devdata/f.ckpt b=/srv/repo", bases) == (
        "python train.py a=.devdata/f.ckpt b=."
    )
    assert relative_command("python evaluate.py '+data.test={synth: /data/c/synth/test.jsonl}'", bases) == (
        "python evaluate.py '+data.test={synth: .../synth/test.jsonl}'"
    )


PEERS_BENCH = {
    "machine": "Test CPU, 2 threads",
    "rows": [
        {
            "system": "PocketSphinx 5.x (en-US default model)",
            "set": "pocketsphinx",
            "wer": 21.875,
            "words": 96,
            "utterances": 11,
            "real_speech": True,
            "speech": "real",
        },
        {
            "system": "PocketSphinx 5.x (en-US default model)",
            "set": "yesno",
            "wer": 89.5833,
            "words": 480,
            "real_speech": False,
        },
    ],
    "real_speech": {
        "system": "PocketSphinx 5.x (en-US default model)",
        "wer": 21.875,
        "errors": 21,
        "words": 96,
        "sets": ["pocketsphinx"],
    },
}
# app.bench engine|asr today: 1 and 2 threads per method, speed-ups against the best float row of any runtime
ENGINE_BENCH_THREADS = {
    "machine": "Test CPU",
    "rows": [
        {
            "size": "small",
            "hidden": 200,
            "batch": 1,
            "method": method,
            "threads": threads,
            "latency_ms_per_token": ms,
            "speedup_vs_best_float": 2.0 / ms,
            "speedup_vs_float": 2.0 / ms,
            "speedup_vs_ort_int8": 1.0 / ms,
        }
        for method, threads, ms in (
            ("torch float nn.LSTM", 1, 3.0),
            ("torch float nn.LSTM", 2, 2.0),
            ("ONNX Runtime int8", 2, 1.0),
            ("integer engine", 1, 0.8),
            ("integer engine", 2, 0.5),
            ("DenseShift packed 3-bit", 2, 0.4),
        )
    ],
}
ASR_BENCH = {
    "machine": "Test CPU",
    "rows": [
        {
            "method": "torch float nn.LSTM (oneDNN on)",
            "threads": 2,
            "latency_ms": 40.0,
            "real_time_factor": 0.02,
            "speedup_vs_best_float": 1.0,
            "speedup_vs_float": 1.0,
        },
        {
            "method": "integer engine",
            "threads": 2,
            "latency_ms": 10.0,
            "real_time_factor": 0.005,
            "speedup_vs_best_float": 4.0,
            "speedup_vs_float": 4.0,
        },
    ],
}


def test_peer_rows_and_threaded_benchmarks_fill_their_blocks_and_measured_tables_without_rows_are_kept(
    tmp_path: Path,
) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "bench").mkdir(parents=True)
    for name, content in (("peers", PEERS_BENCH), ("engine", ENGINE_BENCH_THREADS), ("asr", ASR_BENCH)):
        (outputs / "bench" / f"{name}.json").write_text(json.dumps(content))
    results_md, readme = tmp_path / "results.md", tmp_path / "README.md"
    measured = "| measured earlier | 101.53 |"
    results_md.write_text(
        "".join(
            f"{s}\n{measured if n == 'accuracy' else 'old'}\n{e}\n"
            for n, (s, e) in ((n, block_markers(n)) for n in ("accuracy", "peers", "speed"))
        )
    )
    readme.write_text(
        f"| irnn | <!--speed:irnn-->pending<!--/speed--> |\n| float | <!--speed:float-->pending<!--/speed--> |\n"
        f"{SPEED_START}\nold\n{SPEED_END}\n"
    )
    main(["--outputs", str(outputs), "--no-plots", "--results", str(results_md), "--readme", str(readme)])

    text = results_md.read_text()
    assert measured in text and "old" not in text  # no run directories: the accuracy block keeps its measured rows
    peers = text.split(block_markers("peers")[0])[1].split(block_markers("peers")[1])[0]
    assert "| PocketSphinx 5.x (en-US default model) | pocketsphinx | real | 96 | 21.88 |" in peers
    assert "| yesno | real_non_english |" not in peers and "| yesno |  | 480 | 89.58 |" in peers  # no `speech` label
    assert "Real English speech pooled (pocketsphinx): 21.88% (21 errors / 96 words)" in peers
    speed = text.split(block_markers("speed")[0])[1]
    assert "speed-up vs best float" in speed and "speed-up vs float" not in speed  # the copy of the key shown once
    assert "| small | 200 | 1 | integer engine | 2 |" in speed and "python -m app.bench asr" in speed
    assert "PocketSphinx" not in speed  # peers.json is no timing

    readme_text = readme.read_text()
    assert "<!--speed:irnn-->0.50 ms/token, 4.00x<!--/speed-->" in readme_text  # the faster thread count
    assert "<!--speed:float-->2.00 ms/token, 1.00x<!--/speed-->" in readme_text
    summary = readme_text.split(SPEED_START)[1]
    assert (
        "| integer engine | 0.50 (4.00x, 2 threads) |  |" in summary
        and "| integer engine | 10.0 (4.00x, 2 threads) |" in summary
    )


def test_asr_rows_say_which_sets_are_real_speech_beside_the_peer_recognizers_wer(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    grammar = {**PEERS_BENCH["rows"][0], "system": "PocketSphinx 5.x (en-US default model, digits grammar)", "wer": 5.0}
    (tmp_path / "bench" / "peers.json").write_text(json.dumps({**PEERS_BENCH, "rows": PEERS_BENCH["rows"] + [grammar]}))
    speech = {"synth": "synthetic", "pocketsphinx": "real", "yesno": "real_non_english"}
    config = {"task": {"name": "asr"}, "data": {"name": "asr_voices", "speech": speech}, "quant": {"name": "float"}}
    wer = {"synth": 20.0, "pocketsphinx": 60.0, "yesno": 90.0}
    _fake_run(tmp_path, "runs/asr/voices/t0", config, _asr_metrics("float", wer))
    main(["--outputs", str(tmp_path), "--no-plots"])
    reports = tmp_path / "reports"
    rows = {r["set"]: r for r in _csv(reports / "accuracy.csv")}
    assert {name: rows[name]["speech"] for name in wer} == speech
    # the default-model peer row sits beside ours, not the digits-grammar one; no peer on the synthetic set
    assert float(rows["pocketsphinx"]["peer_test"]) == pytest.approx(21.875)
    assert rows["pocketsphinx"]["peer"] == "PocketSphinx 5.x (en-US default model)"
    assert float(rows["yesno"]["peer_test"]) == pytest.approx(89.5833) and rows["synth"]["peer_test"] == ""
    text = (reports / "accuracy.md").read_text()
    assert "| PocketSphinx 5.x test WER % |" in text
    assert "| pocketsphinx | real | 60.00 | 60.00 |  |  | 21.88 |" in text


def test_a_fine_tune_is_compared_with_the_float_control_that_started_from_the_same_checkpoint(tmp_path: Path) -> None:
    """Two iRNN/float pairs fine-tuned from two checkpoints of one recipe: each iRNN run against its own control."""
    recipe = {"task": {"name": "asr", "max_epochs": 3}, "model": {"name": "small"}, "seed": 1}
    for index, (start, float_wer, irnn_wer) in enumerate((("a.ckpt", 30.0, 31.0), ("b.ckpt", 20.0, 20.5))):
        for quant, wer in (("float", float_wer), ("irnn", irnn_wer)):
            command = f"python train.py experiment=ft quant={quant} quant.init_from={start}"
            _fake_run(
                tmp_path,
                f"runs/asr/ft-{quant}/t{index}",
                {**recipe, "quant": {"name": quant, "init_from": start}},
                _asr_metrics(quant, {"synth": wer}, command=command),
            )
    main(["--outputs", str(tmp_path), "--no-plots"])
    rows = {r["command"]: r for r in _csv(tmp_path / "reports" / "accuracy.csv") if r["quant"] == "irnn"}
    changes = {command.split("init_from=")[1].rstrip("`"): float(row["change"]) for command, row in rows.items()}
    assert changes == {"a.ckpt": pytest.approx(1.0), "b.ckpt": pytest.approx(0.5)}


def test_wer_over_several_dithers_is_compared_with_the_controls_over_the_same_dithers(tmp_path: Path) -> None:
    """`evaluate.py eval_seeds=[...]` of an iRNN fine-tune: against its float control's evaluation over the same
    dithers, not against the control's one-pass test nor an evaluation over other dithers."""
    recipe = {"task": {"name": "asr", "max_epochs": 3}, "model": {"name": "small"}, "seed": 1}
    for quant, wer in (("float", 30.0), ("irnn", 31.0)):
        _fake_run(
            tmp_path,
            f"runs/asr/ft-{quant}/t0",
            {**recipe, "quant": {"name": quant, "init_from": "a.ckpt"}},
            _asr_metrics(quant, {"synth": wer}, command=f"python train.py experiment=ft quant={quant}"),
        )

    def dither_eval(quant: str, seeds: list[int], wers: list[float]) -> None:
        passes = {str(seed): {"test_wer": {"synth": wer}} for seed, wer in zip(seeds, wers)}
        checkpoint = str(tmp_path / f"runs/asr/ft-{quant}/t0/checkpoints/best.ckpt")
        command = f"python evaluate.py ckpt={checkpoint} eval_seeds=[{','.join(map(str, seeds))}]"
        _fake_run(
            tmp_path,
            f"evals/asr/{quant}-{len(seeds)}",
            None,
            _asr_metrics(
                quant,
                {"synth": sum(wers) / len(wers)},
                command=command,
                checkpoint=checkpoint,
                dither_passes=passes,
            ),
        )

    dither_eval("float", [1, 2], [29.0, 29.5])
    dither_eval("irnn", [1, 2], [30.0, 29.0])
    dither_eval("float", [1, 2, 3], [10.0, 10.0, 10.0])  # other dithers: not the irnn evaluation's control
    main(["--outputs", str(tmp_path), "--no-plots"])
    rows = [r for r in _csv(tmp_path / "reports" / "accuracy.csv") if r["quant"] == "irnn"]
    changes = {row["settings"]: float(row["change"]) for row in rows}
    assert changes == {"": pytest.approx(1.0), "mean of 2 test dithers (eval_seed 1,2)": pytest.approx(0.25)}
    assert (
        "| mean of 2 test dithers (eval_seed 1,2) | qat | synth |" in (tmp_path / "reports" / "accuracy.md").read_text()
    )


def test_merging_a_block_keeps_rows_measured_before_and_replaces_those_measured_again() -> None:
    old = (
        "| data | quant | val ppl | command |\n|---|---|---|---|\n| ptb | float | 110.00 | `python train.py task=lm` |\n\n"
        "| data | quant | set | test WER % | command |\n|---|---|---|---|---|\n"
        "| asr_synth | float | synth | 30.00 | `python train.py task=asr` |\n"
        "| asr_synth | irnn | synth | 31.00 | `python train.py task=asr quant=irnn` |\n\nold caption"
    )
    new = (
        "| data | quant | set | speech | test WER % | command |\n|---|---|---|---|---|---|\n"
        "| asr_synth | irnn | synth | synthetic | 29.00 | `python train.py task=asr quant=irnn` |\n"
        "| asr_voices | float | pocketsphinx | real | 80.00 | `python train.py experiment=asr_voices` |\n\nnew caption"
    )
    merged = merge_block(old, new)
    expected = (
        "| data | quant | val ppl | command |\n|---|---|---|---|\n| ptb | float | 110.00 | `python train.py task=lm` |\n\n"
        "| data | quant | set | speech | test WER % | command |\n|---|---|---|---|---|---|\n"
        "| asr_synth | float | synth |  | 30.00 | `python train.py task=asr` |\n"  # an older layout: the new column empty
        "| asr_synth | irnn | synth | synthetic | 29.00 | `python train.py task=asr quant=irnn` |\n"  # measured again
        "| asr_voices | float | pocketsphinx | real | 80.00 | `python train.py experiment=asr_voices` |\n\nnew caption"
    )
    assert merged == expected
    assert merge_block(merged, new) == merged  # rewriting again changes nothing
    assert merge_block("old", new) == new  # a block without tables: the new one as it is


def test_the_report_merges_into_results_md_unless_told_to_replace(tmp_path: Path) -> None:
    outputs, results_md = tmp_path / "outputs", tmp_path / "results.md"
    config = {"task": {"name": "asr"}, "quant": {"name": "float"}}
    _fake_run(outputs, "runs/asr/new/t0", config, _asr_metrics("float", {"synth": 20.0}))
    start, end = block_markers("accuracy")
    earlier = "| earlier run | synth | 25.00 |"  # an older layout: widened to today's columns when kept
    for replace in (False, True):
        results_md.write_text(f"{start}\n| data | set | test WER % |\n|---|---|---|\n{earlier}\n{end}\n")
        main(["--outputs", str(outputs), "--no-plots", "--results", str(results_md), *(["--replace"] * replace)])
        text = results_md.read_text()
        assert "`python train.py task=asr quant=float`" in text and ("| earlier run |" in text) is not replace
