"""``python -m app.bench engine|asr`` on tiny models: every method of the tables with 1 and 2 threads, in the JSON
layout app.report reads, speed-ups against the best float row (no timing claims: benchmarks never assert speed)."""

import json
import time

import app.reporting.bench as bench

LM_METHODS = [
    "torch float nn.LSTM",
    "torch quantize_dynamic int8",
    "ONNX Runtime float",
    "ONNX Runtime int8",
    "integer engine",
    "DenseShift packed 3-bit",
    "DenseShift int8 decode",
    "integer engine (torch ops)",
]


def time_once(fn, min_seconds: float = 0.3, warmed_up: bool = False) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_engine_bench_measures_every_runtime_against_the_best_float_row(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "SIZES", {"small": 16})
    monkeypatch.setattr(bench, "VOCAB", 50)
    monkeypatch.setattr(bench, "_time", time_once)
    out = tmp_path / "engine.json"
    bench.main(["engine", "--sizes", "small", "--rounds", "1", "--threads", "1", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["rows"]
    methods = LM_METHODS + (
        ["integer engine (AVX2 kernels)"] if data["notes"]["small"]["native_kernels"] == "avx512vnni" else []
    )
    assert sorted({(r["batch"], r["method"], r["threads"]) for r in rows}) == sorted(
        (b, m, n) for b in (1, 20) for m in methods for n in (1, 2)
    )
    for batch in (1, 20):
        same = [r for r in rows if r["batch"] == batch]
        floats = [r for r in same if r["method"] in ("torch float nn.LSTM", "ONNX Runtime float")]
        assert max(r["speedup_vs_best_float"] for r in floats) == 1.0  # the best float row is the reference
        assert max(r["speedup_vs_ort_int8"] for r in same if r["method"] == "ONNX Runtime int8") == 1.0
    for row in rows:
        assert ("latency_ms_per_token" if row["batch"] == 1 else "tokens_per_s") in row
        assert row["speedup_vs_float"] == row["speedup_vs_best_float"]
        if row["method"].startswith("DenseShift"):
            assert row["weight_bits"] == 3
            assert row["weight_path"] == ("packed_3bit" if "packed" in row["method"] else "int8_decode")
        if row["method"] == "torch float nn.LSTM":
            assert row["setting"] in ("oneDNN on", "oneDNN off")
    notes = data["notes"]["small"]
    assert "DynamicQuantizeLSTM" in notes["ort_int8_op_types"]  # ONNX Runtime really runs its int8 LSTM
    assert (
        notes["native_weight_bytes"]["DenseShift packed 3-bit"] * 8
        == notes["native_weight_bytes"]["DenseShift int8 decode"] * 3
    )
    assert "ONNX Runtime int8 op types" in capsys.readouterr().out


def test_asr_bench_times_torch_float_both_onednn_settings_onnx_runtime_and_both_integer_engines(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_time", time_once)
    monkeypatch.setattr(bench, "ASR_TOKENS", 2)
    out = tmp_path / "asr.json"
    bench.main(["asr", "--seconds", "0.3", "--rounds", "1", "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == [
        "torch float nn.LSTM (oneDNN on)",
        "torch float nn.LSTM (oneDNN off)",
        "ONNX Runtime float",
        "integer engine",
        "integer engine (torch ops)",
    ]
    assert max(r["speedup_vs_best_float"] for r in rows if "float" in r["method"]) == 1.0
