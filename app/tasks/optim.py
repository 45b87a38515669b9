"""Optimizer and LR schedule of a task, from its ``task.module.optimizer`` / ``lr_scheduler`` configs."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from app.errors import UserInputError
from app.quant.denseshift import optimizer_parameter_groups

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCHEDULERS = ("none", "exponential", "plateau")


def hold_then_decay(epoch: int, hold_epochs: int, gamma: float) -> float:
    """LR factor after `epoch` finished epochs: 1 for the first `hold_epochs`, then x gamma per epoch (Zaremba)."""
    return gamma ** max(epoch + 1 - hold_epochs, 0)


def check_optimization(optimizer: Mapping[str, Any], lr_scheduler: Mapping[str, Any]) -> None:
    """One clear line for an unknown optimizer or schedule name (at construction, before any training)."""
    if optimizer["name"] not in OPTIMIZERS:
        raise UserInputError(
            f"task.module.optimizer.name={optimizer['name']!r} is unknown: choose one of {', '.join(OPTIMIZERS)}"
        )
    if lr_scheduler["name"] not in LR_SCHEDULERS:
        raise UserInputError(
            f"task.module.lr_scheduler.name={lr_scheduler['name']!r} is unknown: choose one of {', '.join(LR_SCHEDULERS)}"
        )


def configure_optimization(
    model: nn.Module, optimizer: Mapping[str, Any], lr_scheduler: Mapping[str, Any], plateau_monitor: str
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns.

    optimizer: ``name`` (sgd, adam, adamw) plus that optimizer's keyword arguments (DenseShift latents get
    their own parameter group, ``optimizer_parameter_groups``). lr_scheduler: ``name: none``;
    ``name: exponential, hold_epochs, gamma`` (keep the LR for `hold_epochs` epochs, then x gamma per epoch);
    ``name: plateau, factor, patience`` (x factor when ``plateau_monitor`` has not improved for `patience` epochs).
    """
    settings = dict(optimizer)
    optimizer_class = OPTIMIZERS[settings.pop("name")]
    try:
        built = optimizer_class(optimizer_parameter_groups(model), **settings)
    except TypeError as err:
        raise UserInputError(f"task.module.optimizer={dict(optimizer)}: {err}") from err
    schedule = dict(lr_scheduler)
    if schedule["name"] == "exponential":
        decay = functools.partial(hold_then_decay, hold_epochs=schedule["hold_epochs"], gamma=schedule["gamma"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(built, decay)
        return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
    if schedule["name"] == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            built, mode="min", factor=schedule["factor"], patience=schedule["patience"]
        )
        # strict=False: a run without validation (limit_val_batches=0) keeps its LR instead of failing.
        return {
            "optimizer": built,
            "lr_scheduler": {"scheduler": scheduler, "monitor": plateau_monitor, "interval": "epoch", "strict": False},
        }
    return built
