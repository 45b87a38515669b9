"""train.py's `train` as a sweep runs it, with the skip train.py does first (used by test_sweep.py).

Launched like train.py (`python tests/sweep_probe.py -m +sweep=lm_cpu ...`); prints one
`SWEEP_POINT {json}` line per point: its directory and whether it trained or was skipped.
"""

import json

import hydra
from omegaconf import DictConfig

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.runs.directory import run_dir
from app.runs.sweeps import finished_run
from train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    finished = finished_run(run_dir(), cfg)
    metrics = finished if finished is not None else train(cfg)
    print(
        "SWEEP_POINT "
        + json.dumps({"directory": str(run_dir()), "skipped": finished is not None, "test_ppl": metrics["test_ppl"]}),
        flush=True,
    )


if __name__ == "__main__":
    main()
