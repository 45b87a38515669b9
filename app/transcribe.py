"""`python -m app.transcribe <checkpoint> AUDIO...`: the words of your own recordings, by a trained ASR run.

<checkpoint> is a file train.py wrote: ``<run>/checkpoints/best.ckpt`` (or ``averaged.ckpt``), decoded by the float
or QAT model, or ``<run>/model.int.safetensors``, decoded by the integer-only engine. The front end is the run's
own, read from its ``config.yaml`` (beside the checkpoint, or ``--config``): the same features, normalization and
tokenizer as its test, and the same dither (``data.eval_seed``, each file by its position on the command line), so a
test set's files given in manifest order decode to the words of the run's ``decoded/<set>.jsonl``. The search is the
run's (beam, CTC weight, length normalization) unless ``--beam-size`` / ``--ctc-weight`` / ``--length-norm`` say
otherwise.

Prints ``<file><TAB><words>`` per file in the order given, a batch at a time (``--jsonl``: one JSON object per
file). Any sample rate is resampled, several channels are averaged; a missing, unreadable or empty file is refused
in one line before anything is decoded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from app.data.asr import UtteranceDataset, collate
from app.data.audio import FeatureConfig
from app.data.manifest import Utterance, probe_audio
from app.data.text import PAD_ID, Tokenizer, normalize_text
from app.decode.options import DecodingOptions, DecodingRefused
from app.errors import UserInputError
from app.export.asr import load_integer_asr, transcribe_integer
from app.runs.directory import read_checkpoint

BATCH_AUDIO_S = 400.0  # padded seconds of audio per batch (data.eval_batch_duration_s's default)


@dataclass(frozen=True)
class FrontEnd:
    """What turns a recording into the model's input and its tokens into words: the run's data settings."""

    features: FeatureConfig
    cmvn: str
    tokenizer: Tokenizer
    eval_seed: int
    max_duration_s: float
    max_batch_size: int


def run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the run that wrote ``checkpoint`` (<run>/checkpoints/x.ckpt or <run>/model.int...)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise UserInputError(
        f"no config.yaml beside {checkpoint} or in its run folder: pass the run's config with --config <run>/config.yaml"
    )


def front_end(config_path: Path) -> FrontEnd:
    """The run's features, CMVN, tokenizer and evaluation dither from its resolved config.yaml (train.py's)."""
    if not config_path.is_file():
        raise UserInputError(f"--config {config_path} does not exist: pass the run's config.yaml")
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    except Exception as err:  # a YAML error or an unreadable file
        raise UserInputError(f"--config {config_path} is not a readable run config ({type(err).__name__})") from None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not isinstance(task, dict) or task.get("name") != "asr" or "tokenizer" not in data:
        raise UserInputError(f"{config_path} is not the config of a task=asr run: pass an ASR run's config.yaml")
    if data.get("cmvn", "utterance") not in ("utterance", "none"):
        raise UserInputError(
            f"{config_path} normalizes features by training-set statistics (data.cmvn={data['cmvn']}): decode files "
            "of that run with evaluate.py and a manifest (docs/asr.md); app.transcribe takes data.cmvn=utterance or none"
        )
    tokenizer = Path(data["tokenizer"])
    tokenizer = tokenizer if tokenizer.is_absolute() else Path(data.get("root", ".")) / tokenizer
    try:
        features = FeatureConfig(**data.get("features", {}))
    except (TypeError, ValueError) as err:
        raise UserInputError(f"{config_path}: data.features is not valid here ({err})") from None
    return FrontEnd(
        features=features,
        cmvn=data.get("cmvn", "utterance"),
        tokenizer=Tokenizer(tokenizer),
        eval_seed=int(data.get("eval_seed", 1234)),
        max_duration_s=float(data.get("max_duration_s", 20.0)),
        max_batch_size=int(data.get("max_batch_size", 64)),
    )


def recordings(paths: Sequence[Path]) -> list[Utterance]:
    """Each file as an Utterance (duration and rate from its header); the first bad one refused in one line."""
    found = []
    for path in paths:
        try:
            duration, rate = probe_audio(path)
        except ValueError as err:
            raise UserInputError(f"{path}: {err}: pass a readable wav / flac / ogg recording") from None
        found.append(Utterance(str(path), duration, "", "", rate))
    return found


def batches(utterances: Sequence[Utterance], max_batch_size: int) -> Iterator[list[int]]:
    """Consecutive indices, at most max_batch_size files and BATCH_AUDIO_S padded seconds per batch."""
    batch: list[int] = []
    longest = 0.0
    for index, utterance in enumerate(utterances):
        longest_with = max(longest, utterance.duration)
        if batch and (len(batch) == max_batch_size or longest_with * (len(batch) + 1) > BATCH_AUDIO_S):
            yield batch
            batch, longest_with = [], utterance.duration
        batch.append(index)
        longest = longest_with
    if batch:
        yield batch


class Recognizer:
    """A trained checkpoint and the search: the float / QAT model (.ckpt) or the integer-only engine (.safetensors)."""

    def __init__(self, checkpoint: Path, tokenizer: Tokenizer, search: dict[str, Any]) -> None:
        """search: beam_size / ctc_weight / length_norm to use instead of the run's (None: the run's)."""
        self.tokenizer = tokenizer
        overrides = {key: value for key, value in search.items() if value is not None}
        if checkpoint.suffix == ".safetensors":
            self.engine, meta = load_integer_asr(
                str(checkpoint),
                tokenizer.sha256,
                named=str(checkpoint),
                tokenizer_fix="pass its run's config.yaml (--config)",
            )
            run_search = meta.get("info", {}).get("decoding", {})
            self.options = self._options({**run_search, **overrides}, self.engine.ctc is not None)
            self.kind = "integer"
            return
        from app.tasks.asr import SpeechRecognitionTask  # Lightning: only for .ckpt files

        saved = read_checkpoint(checkpoint, "checkpoint")
        if saved["task"] != "asr":
            raise UserInputError(f"{checkpoint} is a {saved['task']} checkpoint: pass one of a task=asr run")
        self.task = SpeechRecognitionTask(**saved["hyper_parameters"])
        self.task.load_state_dict(saved["state_dict"])
        self.task.eval()
        if self.task.hparams.get("vocab_sha256") not in (None, tokenizer.sha256):
            raise UserInputError(
                f"{checkpoint} was trained with another tokenizer than its config names: pass its run's config.yaml"
            )
        run_search = {**self.task.decoding.to_info(), **overrides}
        self.options = self._options(run_search, self.task.model.ctc is not None)
        self.kind = "qat" if self.task.model.quant.quantized else "float"

    @staticmethod
    def _options(settings: dict[str, Any], has_ctc: bool) -> DecodingOptions:
        try:
            options = DecodingOptions(**settings)
        except DecodingRefused as refused:
            raise UserInputError(refused.under({key: f"--{key.replace('_', '-')}" for key in settings})) from None
        if options.ctc_weight > 0 and not has_ctc:
            raise UserInputError(f"--ctc-weight {options.ctc_weight} needs a CTC layer, which this model has not")
        return options

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> list[str]:
        """The words of each utterance of ``batch``, normalized as the WER scores them (decoded/<set>.jsonl's hyp)."""
        if self.kind == "integer":
            texts = transcribe_integer(self.engine, batch, self.tokenizer, self.options)
        else:
            texts = self.task.transcribe(batch, self.options, tokenizer=self.tokenizer)
        return [normalize_text(text) for text in texts]


def transcribe(
    checkpoint: Path,
    audio: Sequence[Path],
    config: Path | None = None,
    search: dict[str, Any] | None = None,
    emit: Callable[[str, str], None] | None = None,
) -> list[str]:
    """The words of each file of ``audio``, in order; ``emit(path, words)`` as each batch is decoded."""
    if not checkpoint.is_file():
        hint = " (a run folder: pass <run>/checkpoints/best.ckpt or <run>/model.int.safetensors)"
        raise UserInputError(f"checkpoint {checkpoint} is not a file{hint if checkpoint.is_dir() else ''}")
    if not audio:
        raise UserInputError("no audio files given: pass one or more recordings after the checkpoint")
    front = front_end(config or run_config(checkpoint))
    recognizer = Recognizer(checkpoint, front.tokenizer, search or {})
    utterances = recordings(audio)
    for utterance in utterances:
        if utterance.duration > front.max_duration_s:
            print(
                f"warning: {utterance.audio} is {utterance.duration:.1f} s, longer than the run trained on "
                f"({front.max_duration_s:g} s): split it at pauses for a better transcript",
                file=sys.stderr,
            )
    dataset = UtteranceDataset(
        utterances, [[] for _ in utterances], front.features, front.cmvn, None, None, front.eval_seed
    )
    words: list[str] = []
    for indices in batches(utterances, front.max_batch_size):
        batch = collate([dataset[index] for index in indices], PAD_ID)
        for index, text in zip(indices, recognizer(batch), strict=True):
            words.append(text)
            if emit is not None:
                emit(str(audio[index]), text)
    return words


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.transcribe",
        description="Transcribe recordings with a trained ASR run: its float / QAT checkpoint (.ckpt) or its integer "
        "checkpoint (model.int.safetensors, decoded by the integer-only engine), with the run's own front end.",
    )
    parser.add_argument("checkpoint", type=Path, help="<run>/checkpoints/best.ckpt or <run>/model.int.safetensors")
    parser.add_argument("audio", type=Path, nargs="*", help="recordings (wav, flac, ogg; any rate, mono or not)")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: found beside the checkpoint)")
    parser.add_argument("--beam-size", type=int, help="hypotheses kept per step (default: the run's)")
    parser.add_argument("--ctc-weight", type=float, help="CTC prefix weight of the search, 0-1 (default: the run's)")
    parser.add_argument("--length-norm", type=float, help="length normalization exponent (default: the run's)")
    parser.add_argument("--jsonl", action="store_true", help='print {"audio": ..., "text": ...} per line')
    args = parser.parse_args(argv)

    def emit(path: str, text: str) -> None:
        print(json.dumps({"audio": path, "text": text}) if args.jsonl else f"{path}\t{text}", flush=True)

    search = {"beam_size": args.beam_size, "ctc_weight": args.ctc_weight, "length_norm": args.length_norm}
    try:
        transcribe(args.checkpoint, args.audio, args.config, search, emit)
    except UserInputError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
