"""Rebuild the results tables from what was run: ``python -m app.report [--readme README.md]``.

Scans ``outputs/runs/**/metrics.json`` and ``outputs/evals/**/metrics.json`` (a missing or corrupt
file is skipped with a warning naming it) and ``outputs/bench/*.json``, writes
``outputs/reports/results.md``, and with ``--readme`` rewrites the block between
``<!-- results:start -->`` and ``<!-- results:end -->`` in the README.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def load_runs(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.glob("runs/**/metrics.json")) + sorted(root.glob("evals/**/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
            metrics["_path"] = str(path.parent)
            runs.append(metrics)
        except (OSError, json.JSONDecodeError) as err:
            warnings.warn(f"skipping {path}: unreadable metrics.json ({err})")
    return runs


def _fmt(value, spec=".2f") -> str:
    return "" if value is None else format(value, spec)


def _recipe(command: str) -> str:
    """A train command without its quant choice: runs with equal recipes differ only in quantization."""
    ignored = ("quant=", "quant.", "run_name=", "trainer.enable_progress_bar=")
    return " ".join(token for token in command.split() if not token.startswith(ignored))


def _baseline(run: dict, floats: dict[str, dict], runs_by_ckpt: dict[str, dict]) -> dict | None:
    """The float training run with the same recipe (for an evaluation: the recipe of the evaluated run)."""
    command = run["command"]
    if command.startswith("python evaluate.py"):
        ckpt = next((t.split("=", 1)[1] for t in command.split() if t.startswith("ckpt=")), "")
        source = runs_by_ckpt.get(str(Path(ckpt).parent.parent))
        if source is None:
            return None
        command = source["command"]
    return floats.get(_recipe(command))


def accuracy_table(runs: list[dict]) -> str:
    """One row per run: perplexity (QAT simulation or float; integer engine where exported), size, speed.

    "vs float" compares test perplexity with the float run of the same recipe (same command but quant).
    """
    trains = [r for r in runs if r["command"].startswith("python train.py")]
    floats = {_recipe(r["command"]): r for r in trains if r.get("quant") == "float"}
    runs_by_ckpt = {str(Path(r["_path"]).resolve()): r for r in trains}
    runs_by_ckpt.update({str(Path(r["_path"])): r for r in trains})
    lines = [
        "| data | model | quant | engine | val ppl | test ppl | vs float (same recipe) | integer-engine test ppl | integer bytes (% of float) | wall time | train tokens/s | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.get("task") != "lm" or r.get("test_ppl") is None:
            continue
        base = _baseline(r, floats, runs_by_ckpt)
        rel = "" if base is None or r.get("quant") == "float" else f"{100 * (r['test_ppl'] / base['test_ppl'] - 1):+.2f}% (vs {base['test_ppl']:.2f})"
        integer = r.get("integer") or {}
        size = ""
        if "integer_size_ratio" in integer:
            size = f"{integer['integer_param_bytes']:,} ({100 * integer['integer_size_ratio']:.1f}% of {integer['float_param_bytes']:,})"
        wall = "" if r.get("wall_time_s") is None else f"{r['wall_time_s'] / 60:.1f} min"
        lines.append(
            f"| {r['data']} | {r.get('model') or ''} | {r.get('quant') or ''} | {r.get('engine') or 'float'} | "
            f"{_fmt(r['val_ppl'])} | {_fmt(r['test_ppl'])} | {rel} | {_fmt(integer.get('test_ppl'))} | {size} | {wall} | "
            f"{_fmt(r.get('train_tokens_per_s'), '.0f')} | `{r['command']}` |"
        )
    return "\n".join(lines)


def _quant_settings(run: dict) -> dict:
    """pwl segments / layer norm of a run: from its quant_metrics, else from its run's config.yaml."""
    quant = run.get("quant_metrics") or {}
    settings = {"segments": quant.get("pwl.segments"), "layer_norm": quant.get("layer_norm")}
    config = Path(run["_path"]) / "config.yaml"
    if None in settings.values() and config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        settings["segments"] = settings["segments"] or cfg.quant.get("pwl_segments")
        settings["layer_norm"] = cfg.quant.get("layer_norm") if settings["layer_norm"] is None else settings["layer_norm"]
    return settings


def ablation_table(runs: list[dict]) -> str:
    """irnn runs and re-evaluations: PWL segments and layer norm vs PWL max error and perplexity."""
    lines = [
        "| pwl segments | layer norm | sigmoid max err (LSB Q0.15) | tanh max err | tanh(c) max err | val ppl | test ppl | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for r in runs:
        if r.get("quant") != "irnn" or r.get("test_ppl") is None or r.get("engine") == "integer":
            continue
        q, settings = r.get("quant_metrics") or {}, _quant_settings(r)
        rows.append((settings["layer_norm"] or False, -(settings["segments"] or 0), (
            f"| {settings['segments']} | {'yes' if settings['layer_norm'] else 'no'} | {_fmt(q.get('pwl.sigmoid.max_error_lsb'), '.1f')} | "
            f"{_fmt(q.get('pwl.tanh.max_error_lsb'), '.1f')} | {_fmt(q.get('pwl.tanh_cell.max_error_lsb'), '.1f')} | "
            f"{_fmt(r['val_ppl'])} | {_fmt(r['test_ppl'])} | `{r['command']}` |"
        )))
    if not rows:
        return ""
    return "\n".join(lines + [row for *_, row in sorted(rows, key=lambda item: item[:2])])


def bench_tables(root: Path) -> str:
    parts = []
    engine = root / "bench" / "engine.json"
    if engine.is_file():
        data = json.loads(engine.read_text())
        parts.append(f"Inference (`python -m app.bench engine`), {data['machine']}:\n")
        parts.append("| size | batch | method | ms / token | tokens/s | speed-up vs float |\n|---|---|---|---|---|---|")
        for row in data["rows"]:
            parts.append(
                f"| {row['size']} ({row['hidden']}) | {row['batch']} | {row['method']} | "
                f"{_fmt(row.get('latency_ms_per_token'), '.3f')} | {_fmt(row.get('tokens_per_s'), '.0f')} | {row['speedup_vs_float']:.2f}x |"
            )
    train = root / "bench" / "train.json"
    if train.is_file():
        data = json.loads(train.read_text())
        parts.append(
            f"\nTraining (`python -m app.bench train`), {data['machine']}: {data['size']} LM, batch {data['batch']} x "
            f"bptt {data['bptt']}: float {data['float_tokens_per_s']:.0f} tokens/s, irnn QAT "
            f"{data['irnn_tokens_per_s']:.0f} tokens/s: QAT is {data['irnn_slowdown']:.2f}x slower."
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.report", description=__doc__)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    runs = load_runs(args.outputs)
    sections = [accuracy_table(runs), ablation_table(runs), bench_tables(args.outputs)]
    body = "\n\n".join(part for part in sections if part)
    out = args.outputs / "reports" / "results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body + "\n")
    print(f"wrote {out} ({len(runs)} runs)")
    if args.readme is not None:
        text = args.readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{args.readme} has no {START} ... {END} block to rewrite")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        args.readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
        print(f"rewrote the results block of {args.readme}")


if __name__ == "__main__":
    main()
