"""Re-evaluate a checkpoint: `python evaluate.py ckpt=<run>/checkpoints/best.ckpt data=ptb` (docs/training.md).

Writes metrics.json (the same fields as train.py's) into outputs/evals/<data>/<time>/.
"""

import copy
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf, open_dict

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.config import build, register_resolvers
from app.decode.options import DecodingOptions
from app.decode.wer import decoded_counts, speech_wer_summary
from app.engine.checkpoint import IntegerCheckpointError, read_metadata, tensor_bytes
from app.errors import UserInputError
from app.export.asr import integer_wer, load_integer_asr, load_lm_fusion
from app.export.lm import INTEGER_CHECKPOINT, integer_split_metrics, load_integer_lm
from app.runs.averaging import tested_checkpoint
from app.runs.directory import command_line, evaluate_splits, machine_text, read_checkpoint, run_dir
from app.runs.metrics import METRICS_FILE, RunMetrics, write_metrics
from app.tasks.asr import DECODED_DIR, SpeechRecognitionTask, check_ctc_weight
from app.tasks.lm import LanguageModelTask

register_resolvers()

# The LightningModule that trained each task; a checkpoint names its task under "task".
TASKS: dict[str, type[L.LightningModule]] = {task.name: task for task in (LanguageModelTask, SpeechRecognitionTask)}


def load_task(checkpoint: dict[str, Any], ckpt_path: str) -> L.LightningModule:
    """Rebuild the trained module from a train.py checkpoint (hyper-parameters + weights)."""
    if checkpoint["task"] not in TASKS:
        raise UserInputError(
            f"ckpt={ckpt_path} is for task {checkpoint['task']!r}; evaluate.py knows {', '.join(sorted(TASKS))}"
        )
    task = TASKS[checkpoint["task"]](**checkpoint["hyper_parameters"])
    task.load_state_dict(checkpoint["state_dict"])
    return task


ENGINES = ("qat", "integer")
SWEEP_EVALS = "evals"  # <sweep point>/evals/<engine>/metrics.json


def output_dir(cfg: DictConfig) -> Path:
    """Where metrics.json goes: ``output_dir`` when set (a sweep's point), else Hydra's run directory."""
    return Path(cfg.output_dir) if cfg.get("output_dir") else run_dir()


def evaluate_sweep(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every finished point of the sweep in ``cfg.sweep_dir`` with every engine of ``cfg.sweep_engines``.

    Each point is evaluated on its own data and task (from its config.yaml): ``engine=qat`` on the
    checkpoint its run tested (``checkpoints/best.ckpt``, or ``averaged.ckpt``) and ``engine=integer`` on
    ``model.int.safetensors`` (points with float activations export none and are skipped for it).
    Results go to ``<point>/evals/<engine>/metrics.json``; a point whose evaluation is already there is
    skipped, so an interrupted sweep evaluation resumes.
    The ASR decoding options (beam_size, ctc_weight, length_norm, lm) apply to the ASR points only.
    """
    root = Path(cfg.sweep_dir)
    if not root.is_dir():
        raise UserInputError(f"sweep_dir={root} does not exist: pass a sweep's folder (outputs/sweeps/<preset>)")
    unknown = [engine for engine in cfg.sweep_engines if engine not in ENGINES]
    if unknown:
        raise UserInputError(f"sweep_engines has {unknown[0]!r}: choose from {', '.join(ENGINES)}")
    points = sorted(path.parent.parent for path in root.glob("*/checkpoints/best.ckpt"))
    for point in [point for point in points if not (point / METRICS_FILE).is_file()]:
        print(f"skipped: {point.name} (still training, or stopped: no {METRICS_FILE} yet)")
        points.remove(point)
    if not points:
        raise UserInputError(f"sweep_dir={root} has no finished point (<point>/{METRICS_FILE}): run the sweep first")
    results = []
    for point, engine in ((point, engine) for point in points for engine in cfg.sweep_engines):
        ckpt = point / INTEGER_CHECKPOINT if engine == "integer" else tested_checkpoint(point)
        out = point / SWEEP_EVALS / engine
        if not ckpt.is_file():
            print(f"skipped: {point.name} engine={engine} (float activations: no integer checkpoint)")
            continue
        if (out / METRICS_FILE).is_file():
            print(f"skipped: {point.name} engine={engine} (already evaluated: {out / METRICS_FILE})")
            continue
        trained = OmegaConf.load(point / "config.yaml")
        one = cfg.copy()
        with open_dict(one):  # the point's own task and data nodes replace (not merge into) the defaults
            one.ckpt, one.engine, one.sweep_dir, one.output_dir = str(ckpt), engine, None, str(out)
            one.task, one.data = trained.task, trained.data
            if trained.task.name != "asr":  # a mixed sweep (+sweep=cpu): the ASR decoding options skip LM points
                one.beam_size = one.ctc_weight = one.length_norm = one.lm = one.eval_seeds = None
        print(f"evaluating {point.name} engine={engine}")
        results.append(evaluate(one))
    return results


def check_decoding_options(cfg: DictConfig, task: str) -> None:
    """beam_size, ctc_weight, length_norm and lm decode speech: refused for an LM checkpoint rather than ignored."""
    for option in ("beam_size", "ctc_weight", "length_norm", "lm"):
        if cfg[option] is not None and task != "asr":
            raise UserInputError(f"{option}={cfg[option]} applies to ASR checkpoints; {cfg.ckpt} is a {task} one")


def evaluate(cfg: DictConfig, write: bool = True) -> dict[str, Any]:
    """Valid and test perplexity (LM) or WER (ASR) of `cfg.ckpt` on `cfg.data`; returns (and writes) metrics.json.

    With ``eval_seeds`` (ASR) the test runs once per dither of the test features and reports the mean
    (evaluate_dithers). write=False: return the metrics without writing metrics.json (one such pass).
    """
    if cfg.get("eval_seeds") is not None:
        return evaluate_dithers(cfg)
    started = time.perf_counter()
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserInputError("no checkpoint given: pass ckpt=<run>/checkpoints/best.ckpt")
    if Path(str(cfg.ckpt)).is_dir():  # a run folder: name the files in it that evaluate.py takes
        files = [
            f"ckpt={path}" + (" engine=integer" if path.suffix == ".safetensors" else "")
            for path in (Path(str(cfg.ckpt)) / "checkpoints" / "best.ckpt", Path(str(cfg.ckpt)) / INTEGER_CHECKPOINT)
            if path.is_file()
        ]
        hint = (
            " or ".join(files)
            if files
            else "<run>/checkpoints/best.ckpt, or <run>/model.int.safetensors with engine=integer"
        )
        raise UserInputError(f"ckpt={cfg.ckpt} is a directory, not a checkpoint file: pass {hint}")
    if cfg.engine not in ENGINES:
        raise UserInputError(f"engine={cfg.engine!r} is unknown: choose one of {', '.join(ENGINES)}")
    seed_everything(cfg.seed, verbose=False)
    if cfg.engine == "integer":
        return evaluate_integer(cfg, started, write)
    if str(cfg.ckpt).endswith(".safetensors"):
        raise UserInputError(f"ckpt={cfg.ckpt} is an integer checkpoint: evaluate it with engine=integer")
    checkpoint = read_checkpoint(cfg.ckpt, "ckpt")
    task = load_task(checkpoint, cfg.ckpt)
    if cfg.pwl_segments is not None:
        if not task.model.quant.integer_activations:
            raise UserInputError(
                f"pwl_segments={cfg.pwl_segments} needs a quant=irnn checkpoint; {cfg.ckpt} has float activations"
            )
        task.model.quant.pwl_segments = int(cfg.pwl_segments)
        try:
            task.model.quant.validate()
        except ValueError as err:
            raise UserInputError(str(err)) from None
    check_decoding_options(cfg, checkpoint["task"])
    if cfg.beam_size is not None:
        task.hparams.beam_size = int(cfg.beam_size)
    if cfg.length_norm is not None:
        task.hparams.length_norm = float(cfg.length_norm)
    if cfg.ctc_weight is not None:
        check_ctc_weight("ctc_weight", float(cfg.ctc_weight), task.model.ctc is not None, decoding=True)
        task.hparams.decode_ctc_weight = float(cfg.ctc_weight)
    if checkpoint["task"] == "asr":  # the search as beam_size / length_norm / ctc_weight changed it: checked now
        hp = task.hparams
        decoding_options(
            beam_size=hp.beam_size,
            length_norm=hp.length_norm,
            max_len_ratio=hp.max_len_ratio,
            ctc_weight=hp.decode_ctc_weight,
        )
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    if cfg.lm is not None:
        task.lm_fusion = load_lm_fusion(str(cfg.lm), datamodule.tokenizer, float(cfg.lm_weight))
        with_lm(task.decoding, task.lm_fusion)  # the CTC best path takes no LM: refused now, not at the test
    if checkpoint["task"] != cfg.task.name:
        raise UserInputError(
            f"ckpt={cfg.ckpt} is a {checkpoint['task']} checkpoint: evaluate it with task={checkpoint['task']}"
        )
    if task.hparams.vocab_sha256 != datamodule.vocab_sha256:
        raise UserInputError(
            f"ckpt={cfg.ckpt} was trained with another vocabulary than data={cfg.data.name} has: "
            "evaluate it on the data it was trained on (its run's config.yaml, key data.name)"
        )
    directory = output_dir(cfg)
    trainer = build(cfg.trainer, default_root_dir=directory, logger=False, enable_checkpointing=False)
    hparams = checkpoint["hyper_parameters"]
    metrics = RunMetrics(
        command=command_line("evaluate.py"),
        task=checkpoint["task"],
        quant=hparams["quant_cfg"]["name"],
        model=hparams["model_cfg"]["name"],
        data=cfg.data.name,
        checkpoint=str(cfg.ckpt),
        averaged_epochs=checkpoint.get("averaged_epochs"),
        **evaluate_splits(trainer, task, datamodule, ckpt_path=None),
        params=sum(parameter.numel() for parameter in task.parameters()),
        epochs=checkpoint["epoch"] + 1,
        wall_time_s=time.perf_counter() - started,
        quant_metrics=task.quant_epoch_metrics(),
        engine="qat" if task.model.quant.quantized else "float",
        hardware=machine_text(trainer.strategy.root_device),
    )
    if trainer.is_global_zero and write:
        write_metrics(directory, metrics)
    return metrics.to_dict()


def evaluate_integer(cfg: DictConfig, started: float, write: bool = True) -> dict[str, Any]:
    """Perplexity of an integer checkpoint on the integer-only engine (softmax outside the engine)."""
    if str(cfg.ckpt).endswith(".ckpt"):
        raise UserInputError(
            f"engine=integer runs integer checkpoints; ckpt={cfg.ckpt} is a train.py checkpoint: pass its run's "
            "model.int.safetensors (written by quant=irnn runs), or drop engine=integer"
        )
    try:
        kind = read_metadata(cfg.ckpt)["kind"]
    except IntegerCheckpointError as err:
        raise UserInputError(str(err)) from None
    if kind != cfg.task.name:
        raise UserInputError(f"ckpt={cfg.ckpt} is an integer {kind} model: evaluate it with task={kind}")
    check_decoding_options(cfg, kind)
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if kind == "asr":
        return evaluate_integer_asr(cfg, datamodule, started, write)
    engine, meta = load_integer_lm(str(cfg.ckpt), datamodule.vocab)
    limits = integer_batch_limits(cfg)
    split_metrics = {
        split: integer_split_metrics(engine, datamodule, split, limits[prefix])
        for split, prefix in (("valid", "val"), ("test", "test"))
    }
    info = meta.get("info", {})
    metrics = RunMetrics(
        command=command_line("evaluate.py"),
        task=meta["kind"],
        quant=info.get("quant", {}).get("name"),
        model=info.get("model"),
        data=cfg.data.name,
        checkpoint=str(cfg.ckpt),
        averaged_epochs=info.get("averaged_epochs"),  # of the checkpoint it was exported from
        val_ppl=split_metrics["valid"]["ppl"],
        val_loss=split_metrics["valid"]["loss"],
        val_tokens=split_metrics["valid"]["tokens"],
        test_ppl=split_metrics["test"]["ppl"],
        test_loss=split_metrics["test"]["loss"],
        test_tokens=split_metrics["test"]["tokens"],
        wall_time_s=time.perf_counter() - started,
        eval_tokens_per_s=split_metrics["test"]["tokens_per_s"],
        quant_metrics={},
        engine="integer",
        integer={"integer_param_bytes": tensor_bytes(str(cfg.ckpt)), "format_version": meta["version"]},
        hardware=machine_text("cpu"),
    )
    if write:
        write_metrics(output_dir(cfg), metrics)
    return metrics.to_dict()


def integer_batch_limits(cfg: DictConfig) -> dict[str, int | float]:
    """trainer.limit_{val,test}_batches (a number of batches, per set) for the engine, as engine=qat applies them;
    fractions are not supported there. No limit: inf."""
    limits = {}
    for split in ("val", "test"):
        limit = cfg.trainer.get(f"limit_{split}_batches")
        if limit is not None and not isinstance(limit, int):
            raise UserInputError(
                f"trainer.limit_{split}_batches={limit}: engine=integer takes a whole number of batches"
            )
        limits[split] = math.inf if limit is None else limit
    return limits


def decoding_options(**settings: Any) -> DecodingOptions:
    """DecodingOptions from evaluate.yaml's keys (and an integer checkpoint's ``decoding``), refused in one line."""
    try:
        return DecodingOptions(**settings)
    except ValueError as err:
        raise UserInputError(str(err)) from None


def with_lm(options: DecodingOptions, lm: Any) -> DecodingOptions:
    """``options`` fusing ``lm`` (lm=...), refused in one line where the search takes no LM (ctc_weight=1)."""
    try:
        return dataclasses.replace(options, lm=lm)
    except ValueError as err:
        raise UserInputError(f"lm=...: {err}") from None


def evaluate_integer_asr(cfg: DictConfig, datamodule, started: float, write: bool = True) -> dict[str, Any]:
    """WER per set of an integer ASR checkpoint on the integer-only engine: validation by the run's validation search
    (greedy by default), test by beam search."""
    engine, meta = load_integer_asr(str(cfg.ckpt), datamodule.vocab_sha256)
    info = meta.get("info", {})
    decoding = info.get("decoding", {})  # what the checkpoint's run decoded with; evaluate.yaml's keys override it
    overrides = {
        key: kind(cfg[key])
        for key, kind in (("beam_size", int), ("length_norm", float), ("ctc_weight", float))
        if cfg[key] is not None
    }
    options = decoding_options(**{**decoding, **overrides})
    check_ctc_weight("ctc_weight", options.ctc_weight, engine.ctc is not None, decoding=True)
    limits = {split: None if limit == math.inf else limit for split, limit in integer_batch_limits(cfg).items()}
    if cfg.lm is not None:
        options = with_lm(options, load_lm_fusion(str(cfg.lm), datamodule.tokenizer, float(cfg.lm_weight)))
    # the validation search of the run (task.module.val_beam_size / val_decode_ctc_weight); greedy for older files
    validation = info.get("validation_decoding")
    val_options = decoding_options(**validation) if validation else options.attention_greedy()
    val = integer_wer(engine, datamodule, "val", val_options, limits["val"])
    test = integer_wer(engine, datamodule, "test", options, limits["test"], decoded_dir=output_dir(cfg) / DECODED_DIR)
    metrics = RunMetrics(
        command=command_line("evaluate.py"),
        task="asr",
        quant=info.get("quant", {}).get("name"),
        model=info.get("model"),
        data=cfg.data.name,
        checkpoint=str(cfg.ckpt),
        averaged_epochs=info.get("averaged_epochs"),  # of the checkpoint it was exported from
        val_wer=val["wer"] or None,
        test_wer=test["wer"] or None,
        test_wer_summary=speech_wer_summary(
            decoded_counts(output_dir(cfg) / DECODED_DIR, list(test["wer"])), datamodule.speech
        )
        if test["wer"]
        else None,
        wall_time_s=time.perf_counter() - started,
        quant_metrics={},
        engine="integer",
        integer={
            "integer_param_bytes": tensor_bytes(str(cfg.ckpt)),
            "format_version": meta["version"],
            "eval_utterances_per_s": test["utterances_per_s"],
            "beam_size": options.beam_size,
            "length_norm": options.length_norm,
            "ctc_weight": options.ctc_weight,
        },
        hardware=machine_text("cpu"),
    )
    if write:
        write_metrics(output_dir(cfg), metrics)
    return metrics.to_dict()


def check_eval_seeds(cfg: DictConfig) -> list[int]:
    """``eval_seeds`` as a list of distinct whole numbers (at least two) for ASR data, or one line saying why not."""
    seeds = cfg.eval_seeds
    if not OmegaConf.is_list(seeds) or len(seeds) < 2:
        raise UserInputError(
            f"eval_seeds={seeds}: give a list of at least two dither seeds, e.g. eval_seeds=[1,2,3,1234]"
        )
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds) or len(set(seeds)) < len(seeds):
        raise UserInputError(f"eval_seeds={list(seeds)}: the seeds must be distinct whole numbers, e.g. [1,2,3,1234]")
    if "eval_seed" not in cfg.data:
        raise UserInputError(
            f"eval_seeds applies to speech data, whose data.eval_seed seeds the dither of the test features; "
            f"data={cfg.data.name} has none: drop eval_seeds"
        )
    return list(seeds)


def mean_wer(passes: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """The mean over passes of one per-set WER field (val_wer or test_wer); None when a pass has none."""
    values = [one[key] for one in passes]
    if any(value is None for value in values):
        return None
    return {name: statistics.fmean(value[name] for value in values) for name in values[0]}


def evaluate_dithers(cfg: DictConfig) -> dict[str, Any]:
    """WER of an ASR checkpoint over several dithers of the evaluation features; returns (and writes) metrics.json.

    One evaluation per ``eval_seeds`` value (as ``data.eval_seed``), each decoding into
    ``<output>/eval_seed-<N>/decoded/``, then one metrics.json: val_wer and test_wer are the passes' means per
    set (every pass has the same reference words, so the mean is the WER of the words pooled over the passes),
    test_wer_summary pools the errors and words of all passes, and dither_passes keeps each pass's numbers.

    Why: the dither (1 LSB of Gaussian noise, so that empty bands never reach log 0) alone moves one model by
    several words on the small real sets (docs/asr.md); one pass measures the model plus one draw of noise.
    """
    started = time.perf_counter()
    seeds = check_eval_seeds(cfg)
    directory = output_dir(cfg)
    passes: list[dict[str, Any]] = []
    for number, seed in enumerate(seeds, 1):
        one = copy.deepcopy(cfg)
        with open_dict(one):
            one.eval_seeds, one.output_dir, one.data.eval_seed = None, str(directory / f"eval_seed-{seed}"), seed
        print(f"dither pass {number} of {len(seeds)}: data.eval_seed={seed}", flush=True)
        passes.append(evaluate(one, write=False))
    summary = copy.deepcopy(passes[0]["test_wer_summary"])
    for pool in ("real_speech", "synthetic") if summary else ():
        if summary[pool]:
            errors, words = (sum(one["test_wer_summary"][pool][key] for one in passes) for key in ("errors", "words"))
            summary[pool].update(wer=100.0 * errors / words, errors=errors, words=words)
    per_pass = {}
    for seed, one in zip(seeds, passes):
        pools = one["test_wer_summary"] or {}
        per_pass[str(seed)] = {
            "val_wer": one["val_wer"],
            "test_wer": one["test_wer"],
            **{pool: pools[pool]["wer"] if pools.get(pool) else None for pool in ("real_speech", "synthetic")},
        }
    losses = {key: [one[key] for one in passes] for key in ("val_loss", "test_loss")}
    metrics = RunMetrics.from_dict(
        {
            **passes[0],
            "command": command_line("evaluate.py"),
            "val_wer": mean_wer(passes, "val_wer"),
            "test_wer": mean_wer(passes, "test_wer"),
            "val_loss": None if None in losses["val_loss"] else statistics.fmean(losses["val_loss"]),
            "test_loss": None if None in losses["test_loss"] else statistics.fmean(losses["test_loss"]),
            "test_wer_summary": summary,
            "wall_time_s": time.perf_counter() - started,
            "dither_passes": per_pass,
        }
    )
    for name, rate in (metrics.test_wer or {}).items():
        rates = [one["test_wer"][name] for one in passes]
        print(
            f"{name:<14} mean {rate:6.2f}  passes "
            + " ".join(f"{r:6.2f}" for r in rates)
            + f"  spread {max(rates) - min(rates):.2f}"
        )
    write_metrics(directory, metrics)
    return metrics.to_dict()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_sweep(cfg) if cfg.get("sweep_dir") else evaluate(cfg)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
