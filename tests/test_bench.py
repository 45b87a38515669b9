"""``python -m app.bench engine`` on a tiny LM: every method of the table, DenseShift's two weight paths
included, in the JSON layout app.report reads (no timing claims: benchmarks never assert speed)."""
import json
import time

import app.bench as bench

METHODS = ["float nn.LSTM", "quantize_dynamic int8", "integer engine", "DenseShift shift-add", "DenseShift int8 decode"]


def time_once(fn, min_seconds: float = 0.3, warmed_up: bool = False) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_engine_bench_measures_float_dynamic_irnn_and_both_denseshift_weight_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "SIZES", {"small": 16})
    monkeypatch.setattr(bench, "VOCAB", 50)
    monkeypatch.setattr(bench, "_time", time_once)
    out = tmp_path / "engine.json"
    bench.main(["engine", "--sizes", "small", "--rounds", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [(r["batch"], r["method"]) for r in data["rows"]] == [(b, m) for b in (1, 20) for m in METHODS]
    for row in data["rows"]:
        assert {"size", "hidden", "batch", "method", "speedup_vs_float"} <= set(row)
        assert ("latency_ms_per_token" if row["batch"] == 1 else "tokens_per_s") in row
        if row["method"].startswith("DenseShift"):
            assert row["weight_bits"] == 3
            assert row["weight_path"] == ("shift_kernel" if "shift-add" in row["method"] else "int8_decode")
