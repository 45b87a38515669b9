"""Optimizer and LR schedule of a task, from its ``task.module.optimizer`` / ``lr_scheduler`` configs."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from app.errors import UserInputError
from app.quant.denseshift import optimizer_parameter_groups

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
LR_SCHEDULERS = ("none", "exponential", "plateau")


RESTART_KEYS = ("epoch", "lr", "hold_epochs", "gamma")


def hold_then_decay(epoch: int, hold_epochs: int, gamma: float) -> float:
    """LR factor after `epoch` finished epochs: 1 for the first `hold_epochs`, then x gamma per epoch (Zaremba)."""
    return gamma ** max(epoch + 1 - hold_epochs, 0)


def restarted_decay(
    epoch: int, lr: float, hold_epochs: int, gamma: float, restarts: Sequence[Mapping[str, Any]] = ()
) -> float:
    """LR factor of epoch `epoch` (numbered from 0) on an optimizer whose lr is `lr`: hold_then_decay, begun again
    at each warm restart {epoch, lr, hold_epochs, gamma} (Loshchilov & Hutter 2017, with this decay in place of
    the cosine) from that restart's epoch on, at that restart's lr. One run of 7 epochs with a restart at epoch 7
    trains as a 7-epoch run continued for more epochs from its weights, without a second command."""
    start, scale = 0, 1.0
    for restart in restarts:
        if epoch >= restart["epoch"]:
            start, scale = restart["epoch"], restart["lr"] / lr
            hold_epochs, gamma = restart["hold_epochs"], restart["gamma"]
    return scale * hold_then_decay(epoch - start, hold_epochs, gamma)


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
    restarts = lr_scheduler.get("restarts") or []
    if restarts and lr_scheduler["name"] != "exponential":
        raise UserInputError(
            f"task.module.lr_scheduler.restarts needs name=exponential, not {lr_scheduler['name']!r}: "
            "remove the restarts or use the exponential schedule"
        )
    if restarts and "lr" not in optimizer:
        raise UserInputError("task.module.lr_scheduler.restarts need task.module.optimizer.lr: set the starting lr")
    previous = 0
    for restart in restarts:
        if not isinstance(restart, Mapping) or sorted(restart) != sorted(RESTART_KEYS):
            raise UserInputError(
                f"task.module.lr_scheduler.restarts: {restart} must have exactly the keys {', '.join(RESTART_KEYS)}"
            )
        if not (int(restart["epoch"]) > previous and restart["lr"] > 0 and restart["hold_epochs"] >= 0):
            raise UserInputError(
                f"task.module.lr_scheduler.restarts: {dict(restart)} needs an epoch after the previous restart's "
                f"({previous}; epochs number from 0), lr > 0 and hold_epochs >= 0"
            )
        previous = int(restart["epoch"])


def configure_optimization(
    model: nn.Module, optimizer: Mapping[str, Any], lr_scheduler: Mapping[str, Any], plateau_monitor: str
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns.

    optimizer: ``name`` (sgd, adam, adamw) plus that optimizer's keyword arguments (DenseShift latents get
    their own parameter group, ``optimizer_parameter_groups``). lr_scheduler: ``name: none``;
    ``name: exponential, hold_epochs, gamma`` (keep the LR for `hold_epochs` epochs, then x gamma per epoch),
    with optional warm ``restarts`` (a list of {epoch, lr, hold_epochs, gamma}: ``restarted_decay``);
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
        decay = functools.partial(
            restarted_decay,
            lr=float(optimizer.get("lr", 0.0)),  # restarts are checked to come with an lr
            hold_epochs=schedule["hold_epochs"],
            gamma=schedule["gamma"],
            restarts=list(schedule.get("restarts") or []),
        )
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
