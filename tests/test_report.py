"""python -m app.report: tables from run directories; bad metrics.json files are named and skipped."""
import json

import pytest

from app.report import END, START, main


def _run(root, name, **fields):
    directory = root / "runs" / "lm" / name
    directory.mkdir(parents=True)
    metrics = {"task": "lm", "data": "ptb", "model": "small", "val_ppl": 110.0, "wall_time_s": 60.0,
               "train_tokens_per_s": 3000.0, "engine": "float", "integer": None, **fields}  # fmt: skip
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def test_report_compares_each_quant_mode_with_float_and_skips_corrupt_metrics(tmp_path):
    _run(tmp_path, "float", quant="float", test_ppl=100.0, command="python train.py model=small quant=float")
    integer = {"test_ppl": 101.0, "integer_param_bytes": 26, "float_param_bytes": 100, "integer_size_ratio": 0.26}
    _run(tmp_path, "irnn", quant="irnn", test_ppl=101.0, engine="qat", integer=integer, command="python train.py model=small quant=irnn quant.pwl_segments=8")
    broken = tmp_path / "runs" / "lm" / "broken"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    with pytest.warns(UserWarning, match="broken"):
        main(["--outputs", str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    irnn_row = next(line for line in text.splitlines() if "| irnn |" in line)
    assert "+1.00% (vs 100.00)" in irnn_row and "26.0% of 100" in irnn_row and "`python train.py model=small quant=irnn quant.pwl_segments=8`" in irnn_row
    assert (tmp_path / "reports" / "results.md").read_text().count("| ptb |") == 2
