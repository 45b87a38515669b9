"""Word error rate as every recognizer here is scored (our models on both engines, the PocketSphinx peer).

WER is jiwer's corpus WER on normalized text (``app.data.text.normalize_text``: the same normalization as the
training targets), in percent. An evaluation collects per set a record (``new_record``) of references,
hypotheses, speakers and audio; ``write_test_record`` keeps each utterance's counts in ``<set>.jsonl``, and
``speech_wer_summary`` pools the words of the real English sets, and of the synthetic ones (metrics.json's
``test_wer_summary``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jiwer

from app.data.manifest import SPEECH_KINDS
from app.data.text import normalize_text
from app.files import write_text_atomic


def corpus_wer(references: list[str], hypotheses: list[str]) -> tuple[float, int, int]:
    """(WER %, word errors, reference words) with jiwer on normalized text; an empty hypothesis is all deletions."""
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return 0.0, 0, 0
    out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
    errors = out.substitutions + out.deletions + out.insertions
    words = out.substitutions + out.deletions + out.hits
    return 100.0 * errors / words, errors, words


def speech_wer_summary(counts: Mapping[str, tuple[int, int]], speech: Mapping[str, str]) -> dict[str, Any]:
    """WER (%) of the real English sets' words pooled, and of the synthetic sets' words pooled.

    counts: set name -> (word errors, reference words); speech: set name -> SPEECH_KINDS label. A
    real_non_english or unlabelled set is in neither pool and named under not_aggregated with why.
    metrics.json's test_wer_summary:
        {"real_speech": {"wer", "errors", "words", "sets"} or None, "synthetic": (the same),
         "not_aggregated": {set: why}, "speech": {set: label}, "words": {set: reference words}}
    """
    summary: dict[str, Any] = {"real_speech": None, "synthetic": None, "not_aggregated": {}, "speech": {}, "words": {}}
    pools: dict[str, list[str]] = {"real": [], "synthetic": []}
    for set_name, (_, words) in counts.items():
        kind = speech.get(set_name)
        summary["speech"][set_name], summary["words"][set_name] = kind, words
        if kind in pools:
            pools[kind].append(set_name)
        else:
            summary["not_aggregated"][set_name] = SPEECH_KINDS.get(kind, "no data.speech label")
    for key, kind in (("real_speech", "real"), ("synthetic", "synthetic")):
        errors, words = (sum(counts[name][i] for name in pools[kind]) for i in (0, 1))
        summary[key] = (
            {"wer": 100.0 * errors / words, "errors": errors, "words": words, "sets": pools[kind]} if words else None
        )
    return summary


def new_record() -> dict[str, Any]:
    """What an evaluation collects per set: references, hypotheses, speakers, audio paths, summed loss."""
    return {"refs": [], "hyps": [], "speakers": [], "audio": [], "loss": 0.0, "utterances": 0}


def add_batch(record: dict[str, Any], batch: Mapping[str, Any], hyps: list[str]) -> None:
    """Append one decoded batch's utterances to `record` (new_record)."""
    record["refs"].extend(batch["texts"])
    record["hyps"].extend(hyps)
    record["speakers"].extend(batch["speakers"])
    record["audio"].extend(batch["audio"])


def utterance_errors(record: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(word errors, reference words) of each utterance of `record`; their sums give corpus_wer's counts."""
    return [corpus_wer([ref], [hyp])[1:] for ref, hyp in zip(record["refs"], record["hyps"])]


def speaker_summary(record: Mapping[str, Any], counts: list[tuple[int, int]]) -> str:
    """'spk 12.50 (3/24) | ...': WER % per speaker from the utterances' `counts`, worst first."""
    by_speaker: dict[str, list[int]] = {}
    for speaker, (errors, words) in zip(record["speakers"], counts):
        total = by_speaker.setdefault(speaker, [0, 0])
        total[0], total[1] = total[0] + errors, total[1] + words
    ranked = sorted(by_speaker.items(), key=lambda item: -item[1][0] / max(item[1][1], 1))
    return " | ".join(f"{speaker} {100.0 * e / max(w, 1):.2f} ({e}/{w})" for speaker, (e, w) in ranked)


def write_decoded(path: Path, record: Mapping[str, Any], counts: list[tuple[int, int]]) -> None:
    """One json line per utterance (audio, speaker, normalized reference and hypothesis, and its `counts`:
    word errors, words), written atomically: what the WER of a test set was computed from."""
    rows = []
    for audio, speaker, ref, hyp, (errors, words) in zip(
        record["audio"], record["speakers"], record["refs"], record["hyps"], counts
    ):
        row = {"audio": audio, "speaker": speaker, "ref": normalize_text(ref), "hyp": normalize_text(hyp)}
        rows.append(json.dumps({**row, "errors": errors, "words": words}, ensure_ascii=False))
    write_text_atomic(path, "".join(line + "\n" for line in rows))


def write_test_record(directory: Path, set_name: str, record: Mapping[str, Any]) -> str:
    """``<directory>/<set_name>.jsonl`` (write_decoded); returns the set's per-speaker WER line."""
    counts = utterance_errors(record)
    write_decoded(directory / f"{set_name}.jsonl", record, counts)
    return speaker_summary(record, counts)


def decoded_counts(directory: Path, set_names: list[str]) -> dict[str, tuple[int, int]]:
    """(word errors, reference words) of each set, summed from its ``<directory>/<set>.jsonl`` (write_decoded)."""
    counts = {}
    for set_name in set_names:
        rows = [json.loads(line) for line in (directory / f"{set_name}.jsonl").read_text(encoding="utf-8").splitlines()]
        counts[set_name] = (sum(row["errors"] for row in rows), sum(row["words"] for row in rows))
    return counts
