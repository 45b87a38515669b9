"""Run train.py's `train` under DDP and print what each rank ends with (used by test_ddp.py).

Launched like train.py (`python tests/ddp_probe.py trainer=ddp ...`); Lightning starts rank 1 by
re-running this command. Each rank prints one `RANK_RESULT {json}` line.
"""

import json
import os

import hydra
import torch
from omegaconf import DictConfig

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.tasks.lm import LanguageModelTask
from train import train

fit_end: dict = {}


def _record_fit_end(task: LanguageModelTask) -> None:
    fit_end["param_checksum"] = float(sum(p.detach().double().sum() for p in task.parameters()))
    fit_end["train_ppl"] = float(task.trainer.callback_metrics["train/ppl"])
    fit_end["world_size"] = task.trainer.world_size


LanguageModelTask.on_fit_end = _record_fit_end


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(0)
    metrics = train(cfg)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    print(
        "RANK_RESULT "
        + json.dumps({"rank": rank, **fit_end, "val_loss": metrics["val_loss"], "val_tokens": metrics["val_tokens"]}),
        flush=True,
    )


if __name__ == "__main__":
    main()
