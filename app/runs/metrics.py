"""metrics.json: the one record a training run (train.py) or an evaluation (evaluate.py) writes, and the
report and the sweeps read.

``RunMetrics`` is its schema, ``write_metrics`` its one writer and ``read_metrics`` its one reader. This module
imports no torch and no Lightning: the sweep check (app/runs/sweeps.py) and the report read metrics.json
without loading them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import UserInputError
from app.files import write_text_atomic

METRICS_FILE = "metrics.json"


class MetricsFileError(UserInputError):
    """A metrics.json that is not one train.py or evaluate.py wrote; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RunMetrics:
    """What a run measured: every field is written (null where it does not apply, e.g. WER for the LM).

    A file written before a field existed reads with that field None.
    """

    command: str  # `python train.py <overrides>` or `python evaluate.py <overrides>`
    task: str | None = None  # lm, asr
    quant: str | None = None  # the quant config's name: float, irnn, denseshift, irnn_denseshift
    model: str | None = None  # the model config's name: tiny, small, ...
    data: str | None = None  # the data config's name it was evaluated on
    checkpoint: str | None = None  # the checkpoint evaluated (best.ckpt, averaged.ckpt, model.int.safetensors)
    averaged_epochs: list[int] | None = None  # task.average_best: the epochs (from 0) the checkpoint averages
    val_ppl: float | None = None  # LM: perplexity over the whole split
    val_loss: float | None = None  # mean token NLL (LM) or mean utterance loss (ASR)
    val_tokens: int | None = None
    test_ppl: float | None = None
    test_loss: float | None = None
    test_tokens: int | None = None
    val_wer: dict[str, float] | None = None  # ASR: WER % per validation set
    test_wer: dict[str, float] | None = None  # ASR: WER % per test set
    test_wer_summary: dict[str, Any] | None = None  # ASR: real-speech and synthetic WER pooled (speech_wer_summary)
    params: int | None = None  # parameters of the trained module
    epochs: int | None = None  # epochs trained
    wall_time_s: float | None = None  # train.py: across resumes (ElapsedTime); evaluate.py: this evaluation
    train_tokens_per_s: float | None = None
    eval_tokens_per_s: float | None = None
    quant_metrics: dict[str, Any] | None = None  # activation ranges, saturation, PWL error, DenseShift freezing
    engine: str | None = None  # float, qat or integer: what computed the numbers above
    integer: dict[str, Any] | None = None  # the integer checkpoint's sizes and its engine's numbers (QAT runs)
    hardware: str | None = None  # machine_text: the GPU, or the CPU and torch's threads
    # ASR, evaluate.py eval_seeds=[...]: each dither pass's {"val_wer", "test_wer", "real_speech", "synthetic"} by
    # its data.eval_seed; val_wer / test_wer above are then the passes' means, test_wer_summary their pooled words
    dither_passes: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command.startswith("python "):
            raise ValueError(f"RunMetrics.command={self.command!r}: must be the `python <script> ...` that ran")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, _JSON_TYPES[field.name]):
                kinds = " or ".join("null" if t is type(None) else t.__name__ for t in _JSON_TYPES[field.name])
                raise ValueError(f"RunMetrics.{field.name}={value!r}: must be {kinds}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in METRIC_FIELDS order (values as given: no copy)."""
        return {field: getattr(self, field) for field in METRIC_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMetrics:
        """From a metrics.json object; ValueError on an unknown key or a wrong type (missing keys are None)."""
        unknown = sorted(set(data) - set(METRIC_FIELDS))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        return cls(**data)


METRIC_FIELDS = tuple(field.name for field in dataclasses.fields(RunMetrics))


def _json_types(annotation: Any) -> tuple[type, ...]:
    """`float | None` -> (int, float, NoneType): the JSON values a field of that annotation may hold."""
    kinds: list[type] = []
    for arg in typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,):
        kind = typing.get_origin(arg) or arg
        kinds += [int, float] if kind is float else [kind]
    return tuple(kinds)


_JSON_TYPES = {name: _json_types(hint) for name, hint in typing.get_type_hints(RunMetrics).items()}


def read_metrics(path: str | Path) -> RunMetrics:
    """The RunMetrics of a metrics.json file; MetricsFileError (one line naming the file and the fault) when
    it is unreadable or not one train.py or evaluate.py wrote."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetricsFileError(f"{path}: unreadable {METRICS_FILE} ({err})") from None
    if not isinstance(data, dict) or not str(data.get("command", "")).startswith("python "):
        raise MetricsFileError(f"{path}: not a {METRICS_FILE} written by train.py or evaluate.py")
    try:
        return RunMetrics.from_dict(data)
    except (TypeError, ValueError) as err:
        raise MetricsFileError(
            f"{path}: not a {METRICS_FILE} written by train.py or evaluate.py ({err}); "
            "delete it, or run the command in it again"
        ) from None


def write_metrics(directory: Path, metrics: RunMetrics) -> None:
    """Write <directory>/metrics.json (atomically) and print the headline numbers."""
    write_text_atomic(directory / METRICS_FILE, json.dumps(metrics.to_dict(), indent=2) + "\n")
    path = directory / METRICS_FILE
    if metrics.test_wer is not None or metrics.val_wer is not None:
        sets = metrics.test_wer or metrics.val_wer
        print("WER " + " | ".join(f"{name} {rate:.2f}" for name, rate in sets.items()) + f" | {path}")
        if metrics.test_wer_summary:
            print(f"test WER {wer_summary_text(metrics.test_wer_summary)}")
        return
    val, test = metrics.val_ppl, metrics.test_ppl
    print(f"val ppl {format_number(val, missing='None')} | test ppl {format_number(test, missing='None')} | {path}")


def wer_summary_text(summary: Mapping[str, Any]) -> str:
    """One line of a speech_wer_summary (metrics.json's test_wer_summary): 'real speech 25.30 (fsdd +
    pocketsphinx: 396 words) | synthetic ... | not aggregated: yesno (why)'."""
    parts = []
    for key, label in (("real_speech", "real speech"), ("synthetic", "synthetic")):
        pool = summary.get(key)
        if pool is not None:
            parts.append(f"{label} {pool['wer']:.2f} ({' + '.join(pool['sets'])}: {pool['words']} words)")
    parts += [f"not aggregated: {name} ({why})" for name, why in summary.get("not_aggregated", {}).items()]
    return " | ".join(parts)


def format_number(value: Any, spec: str = ".2f", missing: str = "") -> str:
    """`value` formatted with `spec`, or `missing` for None (a metric that was not measured)."""
    return missing if value is None else format(value, spec)
