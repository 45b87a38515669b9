"""Results tables and plots from what was run: ``python -m app.report [--results docs/results.md] [--readme README.md]``.

Reads every run directory under ``outputs/`` (``runs/``, ``sweeps/``, ``evals/``; one whose metrics.json
is missing or corrupt is skipped with a warning naming it) and the benchmarks' ``outputs/bench/*.json``,
and writes into ``outputs/reports/`` one markdown and one CSV table per claim of the papers:

    accuracy.{md,csv}    perplexity / WER of each run vs the float run of the same recipe (claim 1)
    size.{md,csv}        float32 vs integer checkpoint bytes: int8, or packed low-bit DenseShift codes (claim 2)
    speed.{md,csv}       float vs integer engines, latency and throughput, and the machine (claim 3)
    ablations.{md,csv}   runs that differ in one quantization setting (PWL segments, layer norm, bits, init)
    peers.{md,csv}       an off-the-shelf recognizer on our ASR test sets (outputs/bench/peers.json, app.peers)
    results.md           all of them, the papers' own numbers beside ours, and the plots (*.png, app/reporting/plots.py)

Two runs share a *recipe* when their config.yaml files are equal outside `quant` (and outside what does
not change a result: paths, run name, progress bar) and they started from the same checkpoint
(`quant.init_from`). Each distinct run is one row: of several runs of one command (and, for evaluations,
one checkpoint and engine) only the latest is kept. Commands are shown with
absolute paths made relative to the folder the output root is in, so no machine's paths reach the tables.

``--results`` (default docs/results.md, when ``--outputs`` is the default outputs/) rewrites each ``<!-- results:<table>:start -->`` ...
``<!-- results:<table>:end -->`` block of that file whose table has rows now, merging: a new row replaces the row
of the same run, set, engine and command, and rows measured before whose run directories are not in this checkout
stay (a block without rows now is kept as it is). ``--replace`` writes this checkout's rows alone, and rewrites the
claims block, which the merge keeps as it was. ``--readme`` rewrites the speed cells
(``<!--speed:<key>-->...<!--/speed-->``) and the ``<!-- speed:start -->`` block of the README from
outputs/bench/engine.json and asr.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import statistics
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from omegaconf import OmegaConf

from app.config import flatten
from app.runs.metrics import METRICS_FILE, MetricsFileError, RunMetrics, format_number, read_metrics
from app.runs.sweeps import IGNORED_PREFIXES

RESULTS_FILE = Path("docs/results.md")  # what `python -m app.report` regenerates (its marked blocks)
SPEED_START, SPEED_END = "<!-- speed:start -->", "<!-- speed:end -->"  # the README's speed summary
SPEED_CELL = re.compile(
    r"<!--speed:(?P<key>[\w-]+)-->.*?<!--/speed-->"
)  # one speed cell of the README's headline table
SCANNED = ("runs", "sweeps", "evals")  # under --outputs: train.py runs, sweep points, evaluate.py results
# quant.* keys that are not settings: the mode (the `quant` column) and the checkpoint a run started from
NOT_SETTINGS = ("name", "mode", "init_from")
# Config keys outside a recipe: what runs of one recipe differ in (quant), and what changes no result
NOT_RECIPE = ("quant.", "run_name", *IGNORED_PREFIXES)

# The papers' own claims, as confirmed by the sources docs/methods.md lists ("What the papers claim"); nothing else.
PAPER = {
    "irnn": "iRNN (Sari et al., ICPRAM 2022 / SN Computer Science 2023)",
    "denseshift": "DenseShift (Li et al., ICCV 2023)",
}


# ---- runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One metrics.json and what the report needs around it."""

    directory: Path
    metrics: RunMetrics
    config: dict[str, Any]  # the run's config.yaml, flattened ({} for evaluate.py, which writes none)
    source: Run | None = None  # evaluate.py: the training run whose checkpoint it evaluated

    @property
    def is_eval(self) -> bool:
        return self.command.startswith("python evaluate.py")

    @property
    def command(self) -> str:
        return self.metrics.command or ""

    @property
    def task(self) -> str:
        return self.metrics.task or ""

    @property
    def quant(self) -> str:
        return self.metrics.quant or ""

    @property
    def engine(self) -> str:
        return self.metrics.engine or "float"

    @cached_property
    def settings(self) -> dict[str, Any]:
        """Quantization settings (quant.* but name, mode, init_from); an evaluation's are its source run's,
        with the PWL segments it was re-evaluated with."""
        if self.source is not None:
            settings = dict(self.source.settings)
        else:
            settings = {
                key[6:]: v for key, v in self.config.items() if key.startswith("quant.") and key[6:] not in NOT_SETTINGS
            }
        logged = self.metrics.quant_metrics or {}
        for logged_key, key in (("pwl.segments", "pwl_segments"), ("layer_norm", "layer_norm")):
            if logged.get(logged_key) is not None:
                settings[key] = logged[logged_key]
        return settings

    @cached_property
    def recipe(self) -> tuple:
        """What runs compared with each other must share: the config outside quant, and the checkpoint a
        fine-tune started from (quant.init_from; see the module doc)."""
        if self.source is not None:  # an evaluation: its training run's recipe, if on the same data
            same_data = self.metrics.data == self.source.metrics.data
            return self.source.recipe + (() if same_data else (("evaluated on", self.metrics.data),))
        if self.config:  # quant.init_from stays: a fine-tune's control starts from the same checkpoint
            return tuple(
                sorted(
                    (k, repr(v))
                    for k, v in self.config.items()
                    if not k.startswith(NOT_RECIPE) or k == "quant.init_from"
                )
            )
        ignored = ("quant=", "quant.", "+mode=", "run_name=", "trainer.enable_progress_bar=")
        kept = (t for t in self.command.split() if not t.startswith(ignored) or t.startswith("quant.init_from="))
        return (("command", " ".join(kept)),)

    @cached_property
    def epochs(self) -> list[dict[str, Any]]:
        """epochs.jsonl: one dict per epoch ([] when there is none)."""
        path = self.directory / "epochs.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        epochs = []
        for line in lines:
            try:
                epochs.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}: skipping a line that is not JSON: {line[:60]!r}")
        return epochs

    @property
    def name(self) -> str:
        """Where it is, in short: `<sweep>/<point>`, `<run_name>/<time>` or `eval <time>`."""
        parts = self.directory.parts
        return f"eval {parts[-1]}" if self.is_eval else "/".join(parts[-2:])


def load_runs(root: Path) -> list[Run]:
    """Every run directory under root's runs/, sweeps/ and evals/ that has a readable metrics.json."""
    # a training run's directory has one of these (evaluate.py's own log alone is no run: `evaluate.py
    # sweep_dir=` leaves one in evals/ while its results go into the sweep's points)
    markers = (METRICS_FILE, "config.yaml", "epochs.jsonl", "train.log")
    directories = [
        d for sub in SCANNED for d in sorted({p.parent for m in markers for p in (root / sub).glob(f"**/{m}")})
    ]
    runs = []
    for directory in directories:
        path = directory / METRICS_FILE
        if not path.is_file():
            warnings.warn(f"skipping {directory}: no {METRICS_FILE} (a run that has not finished, or stopped)")
            continue
        try:
            metrics = read_metrics(path)
        except MetricsFileError as err:
            warnings.warn(f"skipping {err}")
            continue
        config = _read_config(directory)
        metrics = dataclasses.replace(metrics, command=relative_command(metrics.command, _bases(root, config)))
        runs.append(Run(directory, metrics, config))
    runs = latest_runs(runs)
    by_directory = {run.directory.resolve(): run for run in runs if not run.is_eval}
    for run in runs:
        if run.is_eval and run.metrics.checkpoint:
            checkpoint = Path(run.metrics.checkpoint).resolve()
            # <run>/checkpoints/best.ckpt or <run>/model.int.safetensors
            run.source = by_directory.get(checkpoint.parent.parent) or by_directory.get(checkpoint.parent)
    return runs


def _bases(root: Path, config: dict[str, Any]) -> list[Path]:
    """Folders a run's absolute paths are shown relative to: the one its own output root is in (config.yaml's
    paths.output_root, e.g. paths.output_root=<repo>/gout), then the one the scanned outputs folder is in."""
    bases = []
    output_root = config.get("paths.output_root")
    if isinstance(output_root, str) and os.path.isabs(output_root):
        bases.append(Path(output_root).parent)
    return [*bases, root.resolve().parent]


ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[\w.+@%,~-]+(?:/[\w.+@%,~-]+)*/?")  # /a/b not inside a relative path


def relative_command(command: str, bases: list[Path]) -> str:
    """`command` with each absolute path made relative to the first of `bases` that holds it; a path outside
    them keeps its last two parts behind `.../`. So `quant.init_from=<repo>/outputs/x.ckpt`, run from the
    repository, reads `quant.init_from=outputs/x.ckpt` on any machine."""

    def shorten(match: re.Match) -> str:
        path = PurePosixPath(match.group(0))
        for base in bases:
            try:
                return str(path.relative_to(PurePosixPath(base))) or "."
            except ValueError:
                continue
        return ".../" + "/".join(path.parts[-2:])

    return ABSOLUTE_PATH.sub(shorten, command)


def _identity(run: Run) -> tuple:
    """Runs with equal identities are runs of the same thing: one command, and for an evaluation one
    checkpoint and engine (`evaluate.py sweep_dir=` evaluates every point of a sweep with one command)."""
    checkpoint = run.metrics.checkpoint if run.is_eval else None
    where = str(Path(checkpoint).resolve()) if checkpoint else None
    return (run.command, run.engine, run.metrics.data, where)


def latest_runs(runs: list[Run]) -> list[Run]:
    """One run per identity (`_identity`): the one whose metrics.json was written last, in the original order.
    A training command run again in runs/ makes a new time-stamped directory; only the newest is reported."""
    latest: dict[tuple, Run] = {}
    for run in runs:
        key = _identity(run)
        if key not in latest or _written(run) >= _written(latest[key]):
            latest[key] = run
    kept = {id(run) for run in latest.values()}
    return [run for run in runs if id(run) in kept]


def _written(run: Run) -> float:
    return (run.directory / METRICS_FILE).stat().st_mtime


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return flatten(OmegaConf.to_container(OmegaConf.load(path)))
    except Exception as err:  # a damaged config.yaml: the run is still reported, matched by its command
        warnings.warn(f"{path}: unreadable ({err}); comparing this run by its command instead")
        return {}


def dither_seeds(run: Run) -> tuple[str, ...] | None:
    """The test-feature dithers (data.eval_seed values) an evaluation averaged over (`evaluate.py eval_seeds=`);
    None for one pass."""
    return tuple(run.metrics.dither_passes) if run.metrics.dither_passes else None


def float_baselines(runs: list[Run]) -> dict[tuple, Run]:
    """The float run of each (task, recipe, dithers): the training run, or for an evaluation averaged over several
    dithers the float evaluation over the same dithers; the last one found when there are several."""
    return {
        (r.task, r.recipe, dither_seeds(r)): r
        for r in runs
        if r.quant == "float" and (not r.is_eval or dither_seeds(r))
    }


def baseline(run: Run, floats: dict[tuple, Run]) -> Run | None:
    """The float run `run` is compared with: same task, recipe and test dithers (None for a float run itself)."""
    return None if run.quant == "float" else floats.get((run.task, run.recipe, dither_seeds(run)))


def varying_settings(runs: list[Run]) -> dict[str, list[str]]:
    """Per quant mode, the settings whose values differ between its runs: the ones worth showing.
    A run without a key (a config from before the key existed) does not count for that key."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run in runs:
        for key, value in run.settings.items():
            values[run.quant][key].add(repr(value))
    return {quant: sorted(k for k, seen in keys.items() if len(seen) > 1) for quant, keys in values.items()}


def settings_text(run: Run, varying: dict[str, list[str]]) -> str:
    settings = [f"{key}={_value_text(run.settings[key])}" for key in varying.get(run.quant, []) if key in run.settings]
    seeds = dither_seeds(run)
    if seeds:  # a mean over several dithers of the test features, not one test pass
        settings.append(f"mean of {len(seeds)} test dithers (eval_seed {','.join(seeds)})")
    return " ".join(settings)


def _describe(run: Run, varying: dict[str, list[str]]) -> str:
    """`<data> <model>` and the run's varying settings, e.g. `ptb small layer_norm=true`."""
    return " ".join(str(part) for part in (run.metrics.data, run.metrics.model, settings_text(run, varying)) if part)


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_asr(run: Run) -> bool:
    return run.metrics.test_wer is not None or run.metrics.val_wer is not None


def _mean_wer(wer: dict[str, float] | None) -> float | None:
    return None if not wer else statistics.fmean(wer.values())


def headline(run: Run) -> float | None:
    """The one number a run is ranked by: test perplexity, or for ASR the mean test WER over its sets."""
    return _mean_wer(run.metrics.test_wer) if _is_asr(run) else run.metrics.test_ppl


def change_text(run: Run, base: Run | None) -> str:
    """vs float: relative perplexity change, or absolute WER change (percentage points, mean over sets)."""
    ours, theirs = headline(run), None if base is None else headline(base)
    if ours is None or theirs is None:
        return ""
    if _is_asr(run):
        return f"{ours - theirs:+.2f} pts (vs {theirs:.2f})"
    return f"{100 * (ours / theirs - 1):+.2f}% (vs {theirs:.2f})"


# ---- tables -----------------------------------------------------------------------------------------


@dataclass
class Table:
    """One table: records (raw values, for the CSV) and the same rows formatted for markdown."""

    name: str  # file stem in outputs/reports
    markdown: str
    records: list[dict[str, Any]]


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + [_markdown_row(row) for row in rows])


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _wall(run: Run) -> str:
    seconds = run.metrics.wall_time_s
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def hardware_text(run: Run) -> str:
    """metrics.json's ``hardware``; runs from before it was recorded: GPU or CPU, read off the command."""
    recorded = run.metrics.hardware
    if recorded:
        return str(recorded)
    return "a GPU (model not recorded)" if "trainer=gpu" in run.command.split() else "the CPU (model not recorded)"


def peer_wers(benchmarks: dict[str, dict]) -> dict[str, tuple[str, float]]:
    """Set name -> (system, test WER %) of the off-the-shelf peer's default configuration (peers.json, first row
    of each set without a task grammar), so the ASR rows read beside a real recognizer on the same set."""
    wers: dict[str, tuple[str, float]] = {}
    for row in (benchmarks.get(PEERS) or {}).get("rows") or []:
        system, name, wer = str(row.get("system", "")), row.get("set"), row.get("wer")
        if name and wer is not None and "grammar" not in system and name not in wers:
            wers[name] = (system, float(wer))
    return wers


def speech_kind(run: Run, name: str) -> str:
    """What a test set's audio is (the run's `data.speech.<set>`: synthetic, real, real_non_english), or ''."""
    config = run.config or (run.source.config if run.source is not None else {})
    return str(config.get(f"data.speech.{name}") or "")


def accuracy_table(runs: list[Run], benchmarks: dict[str, dict] | None = None) -> Table:
    """Claim 1: every run's perplexity (LM) or WER per test set (ASR) against its same-recipe float run; ASR rows
    say whether the set is real speech and carry the peer recognizer's WER on it (``benchmarks``' peers.json)."""
    floats, varying = float_baselines(runs), varying_settings(runs)
    peers = peer_wers(benchmarks or {})
    lm_rows, asr_rows, records = [], [], []
    for run in runs:
        m, base = run.metrics, baseline(run, floats)
        common = {
            "task": run.task,
            "data": m.data,
            "model": m.model,
            "quant": run.quant,
            "settings": settings_text(run, varying),
            "engine": run.engine,
        }
        integer = m.integer or {}
        if _is_asr(run):
            val_sets, test_sets = m.val_wer or {}, m.test_wer or {}
            base_sets = (base.metrics.test_wer or {}) if base else {}
            for name in sorted(test_sets.keys() | val_sets.keys()):
                test, float_test = test_sets.get(name), base_sets.get(name)
                change = None if test is None or float_test is None else test - float_test
                integer_test = (integer.get("test_wer") or {}).get(name)
                speech, (peer, peer_test) = speech_kind(run, name), peers.get(name, (None, None))
                records.append(
                    {
                        **common,
                        "set": name,
                        "speech": speech or None,
                        "metric": "wer_percent",
                        "val": val_sets.get(name),
                        "test": test,
                        "float_test": float_test,
                        "change": change,
                        "change_unit": "points",
                        "integer_test": integer_test,
                        "peer": peer,
                        "peer_test": peer_test,
                        "hardware": hardware_text(run),
                        "command": run.command,
                        "directory": str(run.directory),
                    }
                )
                asr_rows.append(
                    [
                        common["data"],
                        common["model"] or "",
                        run.quant,
                        common["settings"],
                        run.engine,
                        name,
                        speech,
                        format_number(val_sets.get(name)),
                        format_number(test),
                        "" if change is None else f"{change:+.2f} pts (vs {float_test:.2f})",
                        format_number(integer_test),
                        format_number(peer_test),
                        hardware_text(run),
                        f"`{run.command}`",
                    ]
                )
        elif m.test_ppl is not None or m.val_ppl is not None:
            float_test = base.metrics.test_ppl if base else None
            change = None if float_test is None or m.test_ppl is None else 100 * (m.test_ppl / float_test - 1)
            records.append(
                {
                    **common,
                    "set": "test",
                    "metric": "ppl",
                    "val": m.val_ppl,
                    "test": m.test_ppl,
                    "float_test": float_test,
                    "change": change,
                    "change_unit": "percent",
                    "integer_test": integer.get("test_ppl"),
                    "epochs": m.epochs,
                    "wall_time_s": m.wall_time_s,
                    "train_tokens_per_s": m.train_tokens_per_s,
                    "hardware": hardware_text(run),
                    "command": run.command,
                    "directory": str(run.directory),
                }
            )
            lm_rows.append(
                [
                    common["data"],
                    common["model"] or "",
                    run.quant,
                    common["settings"],
                    run.engine,
                    format_number(m.val_ppl),
                    format_number(m.test_ppl),
                    change_text(run, base),
                    format_number(integer.get("test_ppl")),
                    format_number(m.epochs, "d"),
                    _wall(run),
                    format_number(m.train_tokens_per_s, ".0f"),
                    hardware_text(run),
                    f"`{run.command}`",
                ]
            )
    parts = []
    if lm_rows:
        parts.append(
            _markdown(
                [
                    "data",
                    "model",
                    "quant",
                    "settings",
                    "engine",
                    "val ppl",
                    "test ppl",
                    "vs float (same recipe)",
                    "integer-engine test ppl",
                    "epochs",
                    "wall time",
                    "train tokens/s",
                    "hardware",
                    "command",
                ],
                lm_rows,
            )
        )
    if asr_rows:
        # the peer's name without its configuration: "PocketSphinx 5.1.1 (en-US default model)" -> "PocketSphinx 5.1.1"
        peer_name = next((system.split(" (")[0] for system, _ in peers.values()), "peer")
        parts.append(
            _markdown(
                [
                    "data",
                    "model",
                    "quant",
                    "settings",
                    "engine",
                    "set",
                    "speech",
                    "val WER %",
                    "test WER %",
                    "vs float (same recipe)",
                    "integer-engine test WER %",
                    f"{peer_name} test WER %",
                    "hardware",
                    "command",
                ],
                asr_rows,
            )
        )
    return Table("accuracy", "\n\n".join(parts) or "No finished runs yet.", records)


def _train_loop_seconds(run: Run) -> float | None:
    """Sum of the epochs' training time (epochs.jsonl `train_seconds`): validation and test not included."""
    seconds = [epoch.get("train_seconds") for epoch in run.epochs]
    return sum(seconds) if seconds and all(isinstance(value, (int, float)) for value in seconds) else None


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f} min"


def _quant_label(run: Run) -> str:
    bits = run.settings.get("weight_bits")
    return f"{run.quant} {bits}-bit" if "denseshift" in run.quant and bits else run.quant


def point_names(members: list[Run]) -> dict[Path, str]:
    """Each sweep point's name: a fixed name as it is (lm_irnn); of a directory named by its overrides
    (`+mode-denseshift_3bit__quant.init-float__task.max_epochs-2`) the overrides that tell it from the
    sweep's other points (`quant.init-float`), never a truncated name."""
    parts = {run.directory: run.directory.name.split("__") for run in members}
    shared = set.intersection(*(set(p) for p in parts.values())) if len(parts) > 1 else set()
    return {d: "__".join(p for p in split if p not in shared) or d.name for d, split in parts.items()}


def _same_wer(a: dict[str, float], b: dict[str, float]) -> bool:
    """The same word errors on every set (QAT WERs pass through float32 logging, the engine's do not)."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)


def sweep_table(runs: list[Run], outputs: Path) -> Table:
    """The paper-style table of each sweep (outputs/sweeps/<sweep>/<point>/): every point against the float
    point of the same task and data in that sweep, with its test numbers from `evaluate.py sweep_dir=`
    (its own engine, and the integer engine) where that ran, else from the point's own test."""
    sweeps_root = (outputs / "sweeps").resolve()
    points = [run for run in runs if not run.is_eval and run.directory.resolve().parent.parent == sweeps_root]
    evals = {}  # (point directory, engine) -> its evaluation in <point>/evals/<engine>/ (not other re-evaluations)
    for run in runs:
        if run.is_eval and run.source and run.directory.resolve().parent == run.source.directory.resolve() / "evals":
            evals[(run.source.directory.resolve(), run.engine)] = run
    parts, records = [], []
    for sweep in sorted({run.directory.resolve().parent.name for run in points}):
        members = sorted(
            (run for run in points if run.directory.resolve().parent.name == sweep),
            key=lambda r: (r.task, r.metrics.data or "", r.quant != "float", r.directory.name),
        )
        timed = [t for t in map(_train_loop_seconds, members) if t is not None]
        lines = [
            f"**`{sweep}`** ({len(members)} points"
            + (f"; training loops {_minutes(sum(timed))} in all" if timed else "")
            + "):"
        ]
        varying, names = varying_settings(members), point_names(members)
        for task in dict.fromkeys(run.task for run in members):
            group = [run for run in members if run.task == task]
            header, rows = [], []
            for run in group:
                floats = [o for o in group if o.quant == "float" and o.metrics.data == run.metrics.data]
                base = floats[0] if len(floats) == 1 and floats[0] is not run else None
                row_of = _sweep_asr_row if task == "asr" else _sweep_lm_row
                header, row, numbers = row_of(run, names[run.directory], base, evals, varying)
                rows.append(row)
                records.append(
                    {
                        "sweep": sweep,
                        "point": run.directory.name,
                        "task": task,
                        "data": run.metrics.data,
                        "quant": run.quant,
                        "settings": settings_text(run, varying),
                        **numbers,
                        "train_loop_s": _train_loop_seconds(run),
                        "wall_time_s": run.metrics.wall_time_s,
                        "integer_size_ratio": (run.metrics.integer or {}).get("integer_size_ratio"),
                        "command": run.command,
                        "directory": str(run.directory),
                    }
                )
            lines.append(_markdown(header, rows))
        parts.append("\n\n".join(lines))
    if not parts:
        return Table("sweeps", "No sweep has finished a point yet (`python train.py -m +sweep=cpu`).", records)
    note = (
        "Test numbers: `evaluate.py sweep_dir=outputs/sweeps/<sweep>` (the point's own engine; `integer engine`: "
        "engine=integer) where it ran, else the point's own test. Training loop: the sum of its epochs' "
        "`train_seconds` (epochs.jsonl), without validation and test."
    )
    return Table("sweeps", "\n\n".join(parts) + f"\n\n{note}", records)


def _tested(run: Run | None, evals: dict[tuple[Path, str], Run], engine: str | None = None) -> Run | None:
    """`run` as `evaluate.py sweep_dir=` tested it with `engine` (default: its own), else `run` itself
    (engine=integer: None when that evaluation did not run)."""
    if run is None:
        return None
    found = evals.get((run.directory.resolve(), engine or run.engine))
    return found if found or engine == "integer" else run


def _size_text(run: Run) -> str:
    integer = run.metrics.integer or {}
    return (
        f"{100 * integer['integer_param_bytes'] / integer['float_param_bytes']:.1f}%"
        if integer.get("float_param_bytes")
        else ""
    )


def _sweep_asr_row(
    run: Run, name: str, base: Run | None, evals, varying
) -> tuple[list[str], list[str], dict[str, Any]]:
    """ASR: WER per test set, change in points vs the float point, the integer engine's WERs ("identical")."""
    test = _tested(run, evals).metrics.test_wer or {}
    base_test = (_tested(base, evals).metrics.test_wer or {}) if base else {}
    integer_run = _tested(run, evals, "integer")
    integer_test = (integer_run.metrics.test_wer if integer_run else (run.metrics.integer or {}).get("test_wer")) or {}
    names = list(test)
    change = " / ".join(f"{test[n] - base_test[n]:+.2f}" for n in names if n in base_test)
    engine = " / ".join(format_number(integer_test.get(n)) for n in names) if integer_test else ""
    if integer_test and _same_wer(integer_test, test):
        engine = "identical"
    header = [
        "point",
        "quant",
        f"test WER % ({' / '.join(names)})",
        "vs float point (points)",
        "integer engine",
        "integer size",
        "training loop",
        "command",
    ]
    row = [
        name,
        _quant_label(run),
        " / ".join(format_number(test.get(n)) for n in names),
        change,
        engine,
        _size_text(run),
        _minutes(_train_loop_seconds(run)),
        f"`{run.command}`",
    ]
    return (
        header,
        row,
        {"test_wer": test, "float_test_wer": base_test or None, "integer_test_wer": integer_test or None},
    )


def _sweep_lm_row(run: Run, name: str, base: Run | None, evals, varying) -> tuple[list[str], list[str], dict[str, Any]]:
    """LM: test perplexity, relative change vs the float point, the integer engine's perplexity."""
    tested = _tested(run, evals)
    test, base_test = tested.metrics.test_ppl, _tested(base, evals).metrics.test_ppl if base else None
    integer_run = _tested(run, evals, "integer")
    integer_test = integer_run.metrics.test_ppl if integer_run else (run.metrics.integer or {}).get("test_ppl")
    change = "" if test is None or base_test is None else f"{100 * (test / base_test - 1):+.2f}%"
    header = [
        "point",
        "quant",
        "settings",
        "val ppl",
        "test ppl",
        "vs float point",
        "integer-engine test ppl",
        "integer size",
        "training loop",
        "command",
    ]
    row = [
        name,
        _quant_label(run),
        settings_text(run, varying),
        format_number(tested.metrics.val_ppl),
        format_number(test),
        change,
        format_number(integer_test),
        _size_text(run),
        _minutes(_train_loop_seconds(run)),
        f"`{run.command}`",
    ]
    return header, row, {"test_ppl": test, "float_test_ppl": base_test, "integer_test_ppl": integer_test}


def _weights_stored_as(run: Run) -> str:
    bits = run.settings.get("weight_bits")
    if "denseshift" in run.quant:
        return f"packed {bits}-bit shift codes"
    return "int8" if bits in (None, 8) else f"int8 holding {bits}-bit values"


def size_table(runs: list[Run]) -> Table:
    """Claim 2: bytes of the parameters as float32 and in the integer checkpoint (train.py's `integer` field).
    Sizes depend on the architecture only, so runs with equal sizes share one markdown row (the latest
    run's command, and how many runs it stands for); the CSV keeps every run."""
    varying, rows, records = varying_settings(runs), {}, []
    for run in runs:
        integer = run.metrics.integer or {}
        if run.is_eval or "float_param_bytes" not in integer or "integer_param_bytes" not in integer:
            continue
        float_bytes, integer_bytes = integer["float_param_bytes"], integer["integer_param_bytes"]
        ratio = integer_bytes / float_bytes
        stored = _weights_stored_as(run)
        records.append(
            {
                "task": run.task,
                "data": run.metrics.data,
                "model": run.metrics.model,
                "quant": run.quant,
                "settings": settings_text(run, varying),
                "weights_stored_as": stored,
                "float_bytes": float_bytes,
                "integer_bytes": integer_bytes,
                "ratio": ratio,
                "command": run.command,
                "directory": str(run.directory),
            }
        )
        cells = (
            run.metrics.data or "",
            run.metrics.model or "",
            run.quant,
            settings_text(run, varying),
            stored,
            f"{float_bytes:,}",
            f"{integer_bytes:,}",
            f"{100 * ratio:.1f}%",
            f"{1 / ratio:.1f}x",
        )
        latest, count = rows.get(cells, (run, 0))
        rows[cells] = (run if _written(run) >= _written(latest) else latest, count + 1)
    headers = [
        "data",
        "model",
        "quant",
        "settings",
        "weights stored as",
        "float32 bytes",
        "integer bytes",
        "% of float",
        "times smaller",
        "runs",
        "command (latest run)",
    ]
    table = [[*cells, str(count), f"`{run.command}`"] for cells, (run, count) in rows.items()]
    body = (
        _markdown(headers, table)
        if table
        else "No integer checkpoint yet (quant=irnn or irnn_denseshift runs write one)."
    )
    return Table("size", body, records)


# Benchmark JSON keys -> table headers (other keys are shown under their own name)
BENCH_HEADERS = {
    "latency_ms_per_token": "ms / token",
    "tokens_per_s": "tokens/s",
    "speedup_vs_float": "speed-up vs float",
    "speedup_vs_best_float": "speed-up vs best float",
    "speedup_vs_ort_int8": "speed-up vs ORT int8",
}
PEERS = "peers"  # outputs/bench/peers.json (python -m app.peers) holds WERs, not timings: its own table


def speedup(row: dict[str, Any]) -> float | None:
    """A benchmark row's speed-up against float: vs the best float row (app.bench today), or vs torch float
    nn.LSTM (benchmark files written before the best-float comparison)."""
    value = row.get("speedup_vs_best_float", row.get("speedup_vs_float"))
    return value if isinstance(value, (int, float)) else None


def _bench_header(key: str) -> str:
    return BENCH_HEADERS.get(key) or key.replace("tokens_per_s", "tokens/s").replace("_", " ")


def _bench_cell(key: str, value: Any) -> str:
    if not isinstance(value, float):
        return "" if value is None else str(value)
    if "speedup" in key or "slowdown" in key:
        return f"{value:.2f}x"
    if key.endswith("tokens_per_s"):
        return f"{value:.0f}"
    return f"{value:.3f}" if key.startswith("latency") else f"{value:.4g}"


def load_benchmarks(root: Path) -> dict[str, dict]:
    """outputs/bench/<name>.json written by `python -m app.bench <name>` (unreadable ones skipped, named)."""
    benchmarks = {}
    for path in sorted((root / "bench").glob("*.json")):
        try:
            benchmarks[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            warnings.warn(f"skipping {path}: unreadable benchmark ({err})")
    return benchmarks


def speed_table(benchmarks: dict[str, dict]) -> Table:
    """Claim 3: each benchmark as measured, with the machine it ran on."""
    parts, records = [], []
    for name, data in benchmarks.items():
        if name == PEERS:
            continue
        rows = (
            data.get("rows")
            if isinstance(data.get("rows"), list)
            else [{k: v for k, v in data.items() if k != "machine"}]
        )
        columns = list(dict.fromkeys(key for row in rows for key in row))
        if "speedup_vs_best_float" in columns:  # app.bench writes speedup_vs_float as a copy of it: shown once
            columns = [key for key in columns if key != "speedup_vs_float"]
        measured = {key for row in rows for key, value in row.items() if isinstance(value, float)}
        # what was measured, then how fast, speed-ups last
        columns = sorted(columns, key=lambda k: (k in measured, "speedup" in k or "slowdown" in k))
        table = _markdown(
            [_bench_header(k) for k in columns], [[_bench_cell(k, row.get(k)) for k in columns] for row in rows]
        )
        parts.append(f"`python -m app.bench {name}` on {data.get('machine', 'an unrecorded machine')}:\n\n{table}")
        records += [{"benchmark": name, "machine": data.get("machine"), **row} for row in rows]
    body = (
        "\n\n".join(parts)
        or "No benchmark yet: `python -m app.bench engine` and `python -m app.bench train` write them."
    )
    return Table("speed", body, records)


@dataclass
class Series:
    """Runs of one recipe and quant mode that differ in exactly one setting (`axis`)."""

    axis: str
    quant: str
    runs: list[Run]
    base: Run | None  # their float run of the same recipe

    @property
    def title(self) -> str:
        first = self.runs[0]
        return f"{first.metrics.data} {first.metrics.model} {self.quant}"


def ablation_series(runs: list[Run]) -> list[Series]:
    """Every group of quantized runs (training runs and re-evaluations) that differ in one setting only."""
    floats = float_baselines(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    quantized = [r for r in runs if r.quant not in ("", "float") and r.engine != "integer" and headline(r) is not None]
    for run in quantized:
        for axis in run.settings:
            rest = tuple(sorted((k, repr(v)) for k, v in run.settings.items() if k != axis))
            groups[(axis, run.task, run.quant, run.recipe, rest)].append(run)
    series = []
    for (axis, _, quant, _, _), members in groups.items():
        if len({repr(r.settings[axis]) for r in members}) > 1:
            members = sorted(members, key=lambda r: (_sort_key(r.settings[axis]), r.is_eval))
            base = baseline(members[0], floats)
            series.append(Series(axis, quant, members, base))
    return sorted(series, key=lambda s: (s.axis, s.quant, s.title))


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _freezing_summary(run: Run) -> tuple[float | None, float | None]:
    """DenseShift: mean over weights of the last epoch's frozen-code and sign-flip fractions."""
    quant = run.metrics.quant_metrics or {}
    frozen = [v for k, v in quant.items() if k.startswith("freeze/")]
    flips = [v for k, v in quant.items() if k.startswith("sign_flip/")]
    return (statistics.fmean(frozen) if frozen else None, statistics.fmean(flips) if flips else None)


def ablation_table(series: list[Series]) -> Table:
    """Claim 4: one table per setting, each row a run of a series, with its PWL errors or DenseShift freezing."""
    parts, records = [], []
    by_axis: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        by_axis[s.axis].append(s)
    for axis, axis_series in by_axis.items():
        rows = []
        for s in axis_series:
            for run in s.runs:
                q = run.metrics.quant_metrics or {}
                frozen, flips = _freezing_summary(run)
                record = {
                    "axis": f"quant.{axis}",
                    "value": run.settings[axis],
                    "series": s.title,
                    "quant": s.quant,
                    "val": run.metrics.val_ppl if not _is_asr(run) else _mean_wer(run.metrics.val_wer),
                    "test": headline(run),
                    "metric": "wer_percent_mean" if _is_asr(run) else "ppl",
                    "float_test": headline(s.base) if s.base else None,
                    "pwl_sigmoid_max_error_lsb": q.get("pwl.sigmoid.max_error_lsb"),
                    "pwl_tanh_max_error_lsb": q.get("pwl.tanh.max_error_lsb"),
                    "pwl_tanh_cell_max_error_lsb": q.get("pwl.tanh_cell.max_error_lsb"),
                    "frozen_fraction": frozen,
                    "sign_flip_fraction": flips,
                    "command": run.command,
                    "directory": str(run.directory),
                }
                records.append(record)
                rows.append(
                    [
                        s.title,
                        _value_text(record["value"]),
                        format_number(record["val"]),
                        format_number(record["test"]),
                        change_text(run, s.base),
                        format_number(record["pwl_sigmoid_max_error_lsb"], ".1f"),
                        format_number(record["pwl_tanh_max_error_lsb"], ".1f"),
                        format_number(record["pwl_tanh_cell_max_error_lsb"], ".1f"),
                        format_number(None if frozen is None else 100 * frozen, ".1f"),
                        format_number(None if flips is None else 100 * flips, ".1f"),
                        f"`{run.command}`",
                    ]
                )
        headers = [
            "runs",
            f"quant.{axis}",
            "val",
            "test",
            "vs float (same recipe)",
            "sigmoid max err (LSB Q0.15)",
            "tanh max err",
            "tanh(c) max err",
            "frozen codes %",
            "sign flips %",
            "command",
        ]
        parts.append(f"**quant.{axis}**\n\n" + _markdown(headers, rows))
    note = "val / test: perplexity (LM) or WER % averaged over the test sets (ASR). Frozen codes and sign flips: DenseShift, last epoch, mean over weights."
    body = (
        "\n\n".join(parts) + f"\n\n{note}"
        if parts
        else "No ablation yet: runs that differ in one quant setting (`python train.py -m +sweep=lm_pwl_segments`, ...)."
    )
    return Table("ablations", body, records)


def claims_table(runs: list[Run], benchmarks: dict[str, dict], size: Table) -> str:
    """The papers' headline claims (only what docs/methods.md's sources confirm) beside what we measured."""
    floats, varying = float_baselines(runs), varying_settings(runs)

    def changes(quant: str) -> str:
        found = [
            f"{_describe(r, varying)}: {change_text(r, baseline(r, floats)).split(' (')[0]}"
            for r in runs
            if r.quant == quant and not r.is_eval and baseline(r, floats) is not None
        ]
        return "; ".join(dict.fromkeys(found)) if found else "no run with a same-recipe float run yet"

    def sizes(quant: str) -> str:
        found = [
            f"{100 * r['ratio']:.1f}% ({1 / r['ratio']:.1f}x smaller; {r['data']} {r['model']} {r['settings']})".replace(
                " )", ")"
            )
            for r in size.records
            if r["quant"] == quant
        ]
        return "; ".join(dict.fromkeys(found)) if found else "no integer checkpoint yet"

    rows_engine = (benchmarks.get("engine") or {}).get("rows") or []
    machine = (benchmarks.get("engine") or {}).get("machine", "")
    fastest = _fastest_per_method(rows_engine)

    def speedups(method: str) -> str:
        found = [
            f"{speedup(row):.2f}x ({size_name}, batch {batch}{_threads_text(row)})"
            for (size_name, batch, name), row in fastest.items()
            if name == method
        ]
        return "; ".join(found) + f" vs float, {machine}" if found else "not measured yet"

    shift = {k[:2]: row for k, row in fastest.items() if "shift-add" in k[2] or "packed" in k[2]}
    decode = {k[:2]: row for k, row in fastest.items() if "int8 decode" in k[2]}
    shift_vs_int8 = [
        f"{speedup(shift[k]) / speedup(decode[k]):.2f}x ({k[0]}, batch {k[1]})" for k in shift if k in decode
    ]
    shift_text = (
        "shift-add kernel vs the same codes decoded to int8: " + "; ".join(shift_vs_int8) + f", {machine}"
        if shift_vs_int8
        else "not measured yet"
    )
    rows = [
        [
            PAPER["irnn"],
            "accuracy close to float",
            '"similar performance as its full-precision counterpart" (abstract); '
            "its perplexity / WER tables were not obtained",
            "LM and ASR; datasets not confirmed",
            "test ppl / WER vs float, same recipe: " + changes("irnn"),
        ],
        [
            PAPER["irnn"],
            "model size",
            "4x smaller (abstract: FP32 to 8-bit)",
            "not stated",
            "integer checkpoint: " + sizes("irnn"),
        ],
        [
            PAPER["irnn"],
            "runtime",
            "2x faster (abstract)",
            "smartphones (model not obtained), PyTorch 1.7 speed_benchmark_torch",
            "integer engine: " + speedups("integer engine"),
        ],
        [
            PAPER["denseshift"],
            "accuracy",
            "no LM or ASR results (ImageNet, COCO, segmentation, spoken-language "
            "understanding; its per-table numbers were not verified)",
            "",
            "test ppl / WER vs float, same recipe: "
            + changes("denseshift")
            + "; with integer activations (ours): "
            + changes("irnn_denseshift"),
        ],
        [
            PAPER["denseshift"],
            "model size",
            "not stated as a ratio (N-bit zero-free codes)",
            "",
            "packed codes, integer activations: " + sizes("irnn_denseshift"),
        ],
        [
            PAPER["denseshift"],
            "runtime",
            "1.6x over existing methods (FP16 dot product by integer addition, float activations)",
            "ARM Cortex-A57 (ARMv8)",
            shift_text,
        ],
    ]
    return _markdown(["paper", "claim", "paper's number", "paper's setting / hardware", "ours"], rows) + (
        "\n\nPapers' numbers: [docs/methods.md](methods.md#what-the-papers-claim); only claims its sources confirm are listed."
    )


def _fastest_per_method(rows: list[dict[str, Any]]) -> dict[tuple[str, Any, str], dict[str, Any]]:
    """{(size, batch, method): the row of that method with the highest speed-up over its thread counts}."""
    fastest: dict[tuple[str, Any, str], dict[str, Any]] = {}
    for row in rows:
        key = (str(row.get("size", "")), row.get("batch"), str(row.get("method")))
        if speedup(row) is not None and (key not in fastest or speedup(row) > speedup(fastest[key])):
            fastest[key] = row
    return fastest


def _threads_text(row: dict[str, Any]) -> str:
    return f", {row['threads']} thread{'s' if row['threads'] != 1 else ''}" if row.get("threads") else ""


def peers_table(benchmarks: dict[str, dict]) -> Table:
    """An off-the-shelf recognizer's WER on our ASR test sets (outputs/bench/peers.json from python -m app.peers),
    scored as our models are, to read beside the ASR rows of the accuracy table."""
    data = benchmarks.get(PEERS) or {}
    rows, records = [], []
    for row in data.get("rows") or []:
        records.append({"machine": data.get("machine"), **row})
        speech = row.get("speech") or ("real" if row.get("real_speech") else "")
        rows.append(
            [
                str(row.get("system", "")),
                str(row.get("set", "")),
                speech,
                format_number(row.get("words"), ","),
                format_number(row.get("wer")),
                "`python -m app.peers`",
            ]
        )
    if not rows:
        return Table(PEERS, "No peer measured yet (`python -m app.peers` writes outputs/bench/peers.json).", records)
    pooled = data.get("real_speech") or {}
    note = (
        f"\n\nOn {data.get('machine', 'an unrecorded machine')}. WER is scored as ours (normalized text, corpus WER). "
        + (
            f"Real English speech pooled ({', '.join(pooled.get('sets') or [])}): {pooled['wer']:.2f}% "
            f"({pooled.get('errors')} errors / {pooled.get('words')} words)."
            if pooled.get("wer") is not None
            else ""
        )
    )
    headers = ["system", "set", "speech", "words", "test WER %", "command"]
    return Table(PEERS, _markdown(headers, rows) + note, records)


# The README headline table's speed cells (<!--speed:<key>-->...<!--/speed-->): the engine.json method each shows
SPEED_CELLS = {"float": "float", "irnn": "integer engine", "irnn_denseshift": "DenseShift packed 3-bit"}
FLOAT_PREFIXES = ("torch float", "float nn.LSTM", "ONNX Runtime float")  # float rows, today's and older files' names


def speed_cells(benchmarks: dict[str, dict]) -> dict[str, str]:
    """{cell key: text}: the small LM's batch-1 latency and speed-up vs the best float row, per headline row."""
    fastest = _fastest_per_method((benchmarks.get("engine") or {}).get("rows") or [])
    batch_one = {method: row for (size, batch, method), row in fastest.items() if size == "small" and batch == 1}
    cells = {}
    for key, method in SPEED_CELLS.items():
        if method == "float":
            floats = [row for name, row in batch_one.items() if name.startswith(FLOAT_PREFIXES)]
            row = max(floats, key=speedup, default=None)
        else:
            row = batch_one.get(method) or next((r for name, r in batch_one.items() if name.startswith(method)), None)
        latency = None if row is None else row.get("latency_ms_per_token")
        cells[key] = (
            "pending (`python -m app.bench engine`)"
            if row is None or latency is None
            else (f"{latency:.2f} ms/token, {speedup(row):.2f}x")
        )
    return cells


def speed_summary(benchmarks: dict[str, dict]) -> str:
    """The README's speed block: per method the fastest thread count, small LM (batch 1 and 20) and ASR."""
    parts = []
    engine = benchmarks.get("engine") or {}
    fastest = _fastest_per_method(engine.get("rows") or [])
    methods = list(dict.fromkeys(method for (size, _, method) in fastest if size == "small"))
    if methods:
        rows = []
        for method in methods:
            one, twenty = fastest.get(("small", 1, method)), fastest.get(("small", 20, method))
            rows.append(
                [
                    method,
                    ""
                    if one is None
                    else f"{format_number(one.get('latency_ms_per_token'), '.2f')} ({speedup(one):.2f}x{_threads_text(one)})",
                    ""
                    if twenty is None
                    else f"{format_number(twenty.get('tokens_per_s'), '.0f')} ({speedup(twenty):.2f}x{_threads_text(twenty)})",
                ]
            )
        parts.append(
            f"LM `model=small` (`python -m app.bench engine`, {engine.get('machine', 'an unrecorded machine')}; "
            "speed-up vs the best float row):\n\n"
            + _markdown(["method", "batch 1: ms / token", "batch 20: tokens / s"], rows)
        )
    asr = benchmarks.get("asr") or {}
    fastest_asr = {}
    for row in asr.get("rows") or []:
        method = str(row.get("method"))
        if speedup(row) is not None and (method not in fastest_asr or speedup(row) > speedup(fastest_asr[method])):
            fastest_asr[method] = row
    if fastest_asr:
        rows = [
            [method, f"{format_number(row.get('latency_ms'), '.1f')} ({speedup(row):.2f}x{_threads_text(row)})"]
            for method, row in fastest_asr.items()
        ]
        parts.append(
            f"ASR `model=small` (`python -m app.bench asr`, {asr.get('machine', 'an unrecorded machine')}):\n\n"
            + _markdown(["method", "ms per utterance"], rows)
        )
    return "\n\n".join(parts)


# ---- plots ------------------------------------------------------------------------------------------


def make_plots(runs: list[Run], series: list[Series], out: Path) -> list[tuple[str, Path | None]]:
    """(caption, PNG path or None when there is nothing to draw) for each figure of results.md."""
    from app.reporting import plots

    bits = [
        (
            f"{s.title} {s.axis}",
            [(r.settings[s.axis], headline(r)) for r in s.runs if not r.is_eval],
            None if s.base is None else headline(s.base),
        )
        for s in series
        if s.axis.endswith("bits")
    ]
    pwl = [
        (f"{s.title}", [(r.settings[s.axis], headline(r)) for r in s.runs]) for s in series if s.axis == "pwl_segments"
    ]
    groups: dict[str, list[tuple[str, list[int], list[float]]]] = defaultdict(list)
    freezing, varying = [], varying_settings(runs)
    for run in runs:
        if run.is_eval or not run.epochs:
            continue
        points = [(e["epoch"] + 1, value) for e in run.epochs if (value := _epoch_value(e)) is not None]
        group = f"{run.metrics.data} {run.metrics.model} ({_recipe_name(run, runs)})"
        label = " ".join(part for part in (run.quant, settings_text(run, varying), f"({run.name})") if part)
        groups[group].append((label, [p[0] for p in points], [p[1] for p in points]))
        per_weight = _freezing_curves(run)
        if per_weight:
            freezing.append((f"{run.quant} {settings_text(run, varying)}\n{run.name}", per_weight))
    ylabel = "test perplexity / mean test WER %"
    return [
        (
            "Accuracy vs weight / activation bits (dashed: the float run of the same recipe)",
            plots.accuracy_vs_bits(bits, ylabel, out / "accuracy_vs_bits.png"),
        ),
        (
            "PWL sigmoid/tanh max error vs segments (fitted here), and test accuracy of runs that differ in segments",
            plots.pwl_error_vs_segments(pwl, ylabel, out / "pwl_error_vs_segments.png"),
        ),
        (
            "Learning curves: validation perplexity / WER per epoch, one panel per data, model and recipe",
            plots.learning_curves(dict(groups), out / "learning_curves.png"),
        ),
        (
            "DenseShift weight freezing: share of codes unchanged since the previous epoch (solid) and of signs flipped (dashed)",
            plots.freezing_curves(freezing, out / "denseshift_freezing.png"),
        ),
    ]


def _epoch_value(epoch: dict[str, Any]) -> float | None:
    if epoch.get("val_ppl") is not None:
        return epoch["val_ppl"]
    wer = epoch.get("val_wer")
    return _mean_wer(wer) if isinstance(wer, dict) else wer


def _recipe_name(run: Run, runs: list[Run]) -> str:
    """A short name for a recipe: the shortest run_name among its runs, without the quant mode in it."""
    names = [
        r.config.get("run_name", "").replace(f"-{r.quant}", "") for r in runs if r.recipe == run.recipe and r.config
    ]
    return min((n for n in names if n), key=len, default="recipe by command")


def _freezing_curves(run: Run) -> dict[str, list[tuple[int, float, float]]]:
    """{weight: [(epoch, frozen fraction, sign-flip fraction)]} from epochs.jsonl's quant freeze/* keys."""
    curves: dict[str, list] = defaultdict(list)
    for epoch in run.epochs:
        quant = epoch.get("quant") or {}
        for key, frozen in quant.items():
            if key.startswith("freeze/"):
                weight = key.removeprefix("freeze/")
                curves[weight].append((epoch["epoch"] + 1, frozen, quant.get(f"sign_flip/{weight}")))
    return dict(curves)


# ---- output -----------------------------------------------------------------------------------------


def write_table(table: Table, out: Path, title: str) -> None:
    (out / f"{table.name}.md").write_text(f"# {title}\n\n{table.markdown}\n")
    columns = list(dict.fromkeys(key for record in table.records for key in record))
    with open(out / f"{table.name}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in record.items()} for record in table.records)


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


TITLES = {
    "claims": "The papers' claims and ours",
    "sweeps": "Sweeps: each point vs the float point of its sweep",
    "accuracy": "Accuracy: each run vs the float run of the same recipe",
    PEERS: "ASR peers: an off-the-shelf recognizer on our test sets",
    "size": "Model size: float32 vs integer checkpoint",
    "speed": "Speed: float vs integer engines",
    "ablations": "Ablations: runs that differ in one quantization setting",
}


def block_markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"


def rewrite_blocks(text: str, blocks: dict[str, str], merge: bool = False) -> tuple[str, list[str]]:
    """`text` with the body of each `<!-- results:<name>:start/end -->` block replaced by blocks[name], or with
    ``merge`` by `merge_block` of the body it had and blocks[name]; and the names rewritten. A block missing from
    text is left out (and not named)."""
    done = []
    for name, body in blocks.items():
        start, end = block_markers(name)
        if start in text and end in text:
            head, rest = text.split(start, 1)
            old, tail = rest.split(end, 1)
            body = merge_block(old, body) if merge else body
            text, done = f"{head}{start}\n{body}\n{end}{tail}", [*done, name]
    return text, done


# The columns that name a row (which run, set, engine and command); the others are what it measured. `settings`
# is left out: it names only the settings that vary among the runs of one report, so it changes with them.
ROW_IDENTITY = ("data", "model", "quant", "engine", "set", "system", "command", "command (latest run)")


def merge_block(old: str, new: str) -> str:
    """The new block's text with each of its tables merged with the old block's table of the same columns (or of
    a subset of them, an older layout: its rows get empty cells in the new columns). A new row replaces the old
    row it shares the identity columns with (ROW_IDENTITY); old rows it does not replace keep their place ahead
    of the new ones. Old tables the new block has no table for come first, as they were; old text outside
    tables is dropped. So a checkout that holds only some of the runs adds its rows and loses none measured before.
    """
    old_tables = [lines for kind, lines in _segments(old) if kind == "table" and len(lines) >= 2]
    used: set[int] = set()
    merged: list[str] = []
    for kind, lines in _segments(new):
        if kind != "table" or len(lines) < 2:
            merged.append("\n".join(lines))
            continue
        headers = _cells(lines[0])
        match = next(
            (
                i
                for i, table in enumerate(old_tables)
                if i not in used and set(_cells(table[0])) <= set(headers) and _cells(table[0])[:1] == headers[:1]
            ),
            None,
        )
        if match is None:
            merged.append("\n".join(lines))
            continue
        used.add(match)
        merged.append("\n".join(lines[:2] + _merged_rows(old_tables[match], lines, headers)))
    kept = ["\n".join(table) for i, table in enumerate(old_tables) if i not in used]
    return "\n\n".join(part.strip("\n") for part in kept + merged if part.strip())


def _merged_rows(old: list[str], new: list[str], headers: list[str]) -> list[str]:
    identity = [i for i, header in enumerate(headers) if header in ROW_IDENTITY]
    old_headers = _cells(old[0])
    new_rows = {tuple(_cells(line)[i] for i in identity): line for line in new[2:]}
    rows, placed = [], set()
    for line in old[2:]:
        cells = dict(zip(old_headers, _cells(line)))
        widened = [cells.get(header, "") for header in headers]
        key = tuple(widened[i] for i in identity)
        if key in placed:
            continue
        if key in new_rows:
            rows.append(new_rows[key])
            placed.add(key)
        else:
            rows.append(line if old_headers == headers else _markdown_row(widened))
    return rows + [line for key, line in new_rows.items() if key not in placed]


def _segments(text: str) -> list[tuple[str, list[str]]]:
    """text as runs of markdown table lines ("table") and of other lines ("text"), in order."""
    segments: list[tuple[str, list[str]]] = []
    for line in text.strip("\n").split("\n"):
        kind = "table" if line.startswith("|") else "text"
        if segments and segments[-1][0] == kind:
            segments[-1][1].append(line)
        else:
            segments.append((kind, [line]))
    return segments


def _cells(line: str) -> list[str]:
    """A markdown table row's cells, unescaped (`\\|` inside a cell is one cell's text)."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in cells]


def rewrite_readme(text: str, benchmarks: dict[str, dict]) -> str:
    """The README's speed cells and speed block from the benchmarks (left as they are without engine.json)."""
    cells = speed_cells(benchmarks)
    text = SPEED_CELL.sub(
        lambda m: f"<!--speed:{m['key']}-->{cells.get(m['key'], '')}<!--/speed-->" if m["key"] in cells else m.group(0),
        text,
    )
    summary = speed_summary(benchmarks)
    if summary and SPEED_START in text and SPEED_END in text:
        head, rest = text.split(SPEED_START, 1)
        _, tail = rest.split(SPEED_END, 1)
        text = f"{head}{SPEED_START}\n{summary}\n{SPEED_END}{tail}"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--outputs", type=Path, default=Path("outputs"), help="where train.py, evaluate.py and app.bench wrote"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="rewrite the marked blocks of this file that have rows now (default: docs/results.md, "
        "when --outputs is this folder's outputs/)",
    )
    parser.add_argument(
        "--readme", type=Path, default=None, help="also rewrite this README's speed cells and speed block"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (the plots take ~10 s, mostly PWL fits)")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace each --results block that has rows now by this outputs' rows alone, and rewrite the claims "
        "block (default: merge, so rows measured earlier, whose run directories are gone, stay)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs, benchmarks = load_runs(args.outputs), load_benchmarks(args.outputs)
    series = ablation_series(runs)
    size = size_table(runs)
    tables = [
        sweep_table(runs, args.outputs),
        accuracy_table(runs, benchmarks),
        peers_table(benchmarks),
        size,
        speed_table(benchmarks),
        ablation_table(series),
    ]
    out = args.outputs / "reports"
    out.mkdir(parents=True, exist_ok=True)
    for table in tables:
        write_table(table, out, TITLES[table.name])
    claims = claims_table(runs, benchmarks, size)
    sections = [("claims", claims)] + [(t.name, t.markdown) for t in tables]
    body = "\n\n".join(f"### {TITLES[name]}\n\n{text}" for name, text in sections)
    figures = [] if args.no_plots else make_plots(runs, series, out)
    figure_text = "\n\n".join(
        f"{caption}:\n\n![{path.stem}]({path.name})" if path else f"{caption}: no runs to draw yet."
        for caption, path in figures
    )
    (out / "results.md").write_text(f"# Results\n\n{body}\n" + (f"\n### Plots\n\n{figure_text}\n" if figures else ""))
    print(
        f"wrote {out}/results.md, {{{','.join(t.name for t in tables)}}}.{{md,csv}} and "
        f"{sum(p is not None for _, p in figures)} plots from {len(runs)} runs in {time.perf_counter() - started:.1f} s"
    )
    results = args.results
    if results is None and args.outputs.resolve() == Path("outputs").resolve() and RESULTS_FILE.is_file():
        results = RESULTS_FILE  # the repository's own outputs: its docs/results.md (never from another outputs folder)
    if results is not None and results.is_file():
        # only tables with rows now: a checkout without run directories keeps the measured tables it has
        blocks = {t.name: t.markdown for t in tables if t.records}
        if runs and args.replace:  # the claims summarize the runs at hand: from a part of them they would lose some
            blocks["claims"] = claims
        text, done = rewrite_blocks(results.read_text(), blocks, merge=not args.replace)
        results.write_text(text)
        print(
            f"rewrote {', '.join(done) or 'no'} blocks of {results}"
            + (
                f" (kept as they were: {', '.join(n for n in TITLES if n not in done)})"
                if len(done) < len(TITLES)
                else ""
            )
        )
    if args.readme is not None:
        args.readme.write_text(rewrite_readme(args.readme.read_text(), benchmarks))
        print(f"rewrote the speed cells and block of {args.readme}")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    warnings.showwarning = _print_warning  # one line per skipped file, not the line of code that warned
    main()
