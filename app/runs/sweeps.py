"""Resumable sweeps: a run directory that already holds a finished run of the same config is not retrained.

`python train.py -m +sweep=<preset>` (conf/sweep/) puts every point of the grid in a directory named by
its overrides, `outputs/sweeps/<preset>/<override>,<override>...`, so running the sweep again finds each
finished point where it left it. `finished_run` is what train.py asks before training.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from app.config import flatten
from app.errors import UserInputError
from app.runs.metrics import METRICS_FILE, MetricsFileError, read_metrics

# Config keys that do not change what a run computes: where files live, the progress bar, and the
# checkpoint a run was resumed from (a resumed run is the same run).
IGNORED_PREFIXES = ("paths.", "trainer.enable_progress_bar", "ckpt_path")


def finished_run(directory: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics.json of `directory` when it holds a finished run of `cfg`; None when there is nothing to skip.

    None also for a run that started but never wrote metrics.json (it trains again from the start) and
    whenever `cfg.ckpt_path` is set (resuming is asked for explicitly, e.g. with a larger task.max_epochs).
    A directory that holds a run of another config is refused, naming the first differing key: training
    there would overwrite it.
    """
    directory = Path(directory)
    saved_config = directory / "config.yaml"
    if cfg.get("ckpt_path") or not saved_config.is_file():
        return None
    saved = flatten(OmegaConf.to_container(OmegaConf.load(saved_config)))
    wanted = flatten(_run_config(cfg))
    # Keys on one side only are left out: a key added to conf/ after the run was trained is not a new config.
    differing = sorted(
        key
        for key in saved.keys() & wanted.keys()
        if not key.startswith(IGNORED_PREFIXES) and saved[key] != wanted[key]
    )
    if differing:
        key = differing[0]
        raise UserInputError(
            f"{directory} holds a run with {key}={saved[key]!r}, this run has {key}={wanted[key]!r} "
            f"({len(differing)} differing: {', '.join(differing)}): delete that directory to train it again, "
            "or set hydra.sweep.dir=<another folder>"
        )
    metrics_file = directory / METRICS_FILE
    try:
        metrics = read_metrics(metrics_file)
    except MetricsFileError:  # not written yet (an interrupted run), or damaged by hand
        return None
    print(f"skipped: {directory} already holds this config's finished run ({metrics_file})")
    return metrics.to_dict()


def _run_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as train.py writes it to config.yaml: resolved, without the `hydra` node."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)
