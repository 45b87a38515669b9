"""metrics.json's schema (app/runs/metrics.py): RunMetrics is written and read back unchanged, in METRIC_FIELDS
order; a file train.py or evaluate.py did not write is refused in one line naming it; no torch to read one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.runs.metrics import METRIC_FIELDS, MetricsFileError, RunMetrics, read_metrics, write_metrics

LM_RUN = RunMetrics(
    command="python train.py task=lm quant=irnn",
    task="lm",
    quant="irnn",
    model="small",
    data="ptb",
    checkpoint="outputs/runs/lm/x/checkpoints/best.ckpt",
    averaged_epochs=[3, 1],
    val_ppl=120.5,
    val_loss=4.79,
    val_tokens=73760,
    test_ppl=115.25,
    test_loss=4.75,
    test_tokens=82430,
    params=2_000_000,
    epochs=2,
    wall_time_s=12.5,
    train_tokens_per_s=2100.0,
    eval_tokens_per_s=9000.0,
    quant_metrics={"pwl.segments": 32},
    engine="qat",
    integer={"test_ppl": 115.25, "integer_param_bytes": 1234},
    hardware="Test CPU, torch x, 2 threads",
)


def test_run_metrics_round_trip_through_metrics_json_in_field_order(tmp_path: Path, capsys) -> None:
    write_metrics(tmp_path, LM_RUN)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written) == list(METRIC_FIELDS) and written["averaged_epochs"] == [3, 1]
    assert read_metrics(tmp_path / "metrics.json") == LM_RUN
    assert "val ppl 120.50 | test ppl 115.25" in capsys.readouterr().out


def test_a_metrics_json_from_before_a_field_existed_reads_that_field_as_none(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"command": "python evaluate.py ckpt=x", "task": "lm", "test_ppl": 100}))
    metrics = read_metrics(path)
    assert metrics.test_ppl == 100 and metrics.hardware is None and metrics.test_wer is None


@pytest.mark.parametrize(
    "text, fault",
    [
        ('{"command": "python train.py", "test_', "unreadable metrics.json"),
        ("[1, 2]", "not a metrics.json written by train.py or evaluate.py"),
        ('{"command": "train it"}', "not a metrics.json written by train.py or evaluate.py"),
        ('{"command": "python train.py", "test_perplexity": 3}', "unknown key(s) test_perplexity"),
        (
            '{"command": "python train.py", "test_ppl": "low"}',
            "RunMetrics.test_ppl='low': must be int or float or null",
        ),
        ('{"command": "python train.py", "test_wer": [1]}', "RunMetrics.test_wer=[1]: must be dict or null"),
    ],
)
def test_a_malformed_metrics_json_is_refused_in_one_line_naming_the_file(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(MetricsFileError) as refused:
        read_metrics(path)
    assert str(refused.value).startswith(f"{path}: ") and fault in str(refused.value)
    assert "\n" not in str(refused.value)


def test_run_metrics_refuses_a_wrong_type_when_it_is_built() -> None:
    with pytest.raises(ValueError, match="RunMetrics.epochs='2'"):
        RunMetrics(command="python train.py", epochs="2")
    with pytest.raises(ValueError, match="RunMetrics.command='train.py'"):
        RunMetrics(command="train.py")


def test_reading_metrics_imports_no_torch() -> None:
    """The report and the sweep check read metrics.json without loading torch or Lightning."""
    code = (
        "import sys, app.runs.metrics, app.runs.sweeps; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
