"""Quantization bookkeeping shared by every task: per-epoch statistics, freezing, fine-tune init."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.engine.lstm import GATE_FRAC, PWL_OUT_FRAC
from app.quant.config import QuantConfig
from app.quant.denseshift import SHIFT_PREFIX, FreezingTracker, shift_weights
from app.quant.pwl import fit_pwl
from app.quant.quantizers import PowerOfTwoObserver


def observers(model: nn.Module) -> dict[str, PowerOfTwoObserver]:
    return {name: module for name, module in model.named_modules() if isinstance(module, PowerOfTwoObserver)}


def freeze_observers(model: nn.Module) -> None:
    """Stop updating activation ranges (the grids, and so the integer model, stop moving)."""
    for observer in observers(model).values():
        observer.frozen.fill_(True)


def epoch_metrics(model: nn.Module, quant: QuantConfig, freezing: FreezingTracker | None = None) -> dict[str, Any]:
    """Activation ranges, saturation rate per quantizer (since the last call), PWL max error in output LSB;
    with a ``freezing`` tracker, per DenseShift weight the fraction of codes unchanged since the tracker's
    last update (``freeze/<weight>``) and of signs flipped (``sign_flip/<weight>``)."""
    metrics: dict[str, Any] = {} if freezing is None else freezing_metrics(model, freezing)
    if not quant.integer_activations:
        return metrics
    for name, observer in observers(model).items():
        key = name.removesuffix(".observer")
        metrics[f"{key}.range"] = round(float(observer.running_max), 5)
        metrics[f"{key}.frac_bits"] = observer.frac
        metrics[f"{key}.saturation"] = round(observer.pop_saturation_rate(), 6)
        metrics[f"{key}.frozen"] = bool(observer.frozen)
    metrics["pwl.segments"] = quant.pwl_segments
    metrics["layer_norm"] = quant.layer_norm
    cell_frac = GATE_FRAC if quant.layer_norm else quant.cell_frac
    for kind, in_frac in (("sigmoid", GATE_FRAC), ("tanh", GATE_FRAC), ("tanh_cell", cell_frac)):
        fit = fit_pwl(kind.removesuffix("_cell"), in_frac, PWL_OUT_FRAC, quant.pwl_segments)
        metrics[f"pwl.{kind}.max_error_lsb"] = round(fit.max_error_lsb, 2)
    return metrics


def freezing_metrics(model: nn.Module, freezing: FreezingTracker) -> dict[str, float]:
    """Give ``freezing`` every DenseShift weight's codes; returns ``freeze/<weight>`` (fraction of codes
    unchanged since its last update) and ``sign_flip/<weight>``, or {} on the first update."""
    for name, module in shift_weights(model).items():
        freezing.update(name, module.codes())
    return {key: round(value, 6) for key, value in freezing.epoch_metrics().items()}


def float_model_bytes(model: nn.Module) -> int:
    """Bytes of the float32 model ``model`` quantizes: a DenseShift weight counts as the float weight it
    stands for (not its latents), a tied weight once."""
    shifted = shift_weights(model).values()
    latents = {id(p) for m in shifted for p in m.parameters()}
    rest = sum(p.numel() * 4 for p in model.parameters() if id(p) not in latents)
    return rest + sum(math.prod(m.weight_shape) * 4 for m in shifted)


def load_init_weights(
    model: nn.Module, path: str | Path, prefix: str = "model.", init: str = "low_variance"
) -> dict[str, list[str]]:
    """Initialise ``model`` from a float (or QAT) Lightning checkpoint's weights, for fine-tuning.

    Layer-norm gains and observer buffers that a float model lacks keep their defaults; every weight
    the checkpoint has must fit. A DenseShift weight the checkpoint has no latents for is derived from
    its float weight (``init``: ``DenseShiftWeight.from_float``); one it has latents for (a DenseShift
    run) loads them. Returns the missing and unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quant.init_from={path} does not exist: point it at a train.py checkpoint (.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint["state_dict"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(
            f"quant.init_from={path} is not a readable train.py checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    derived = {}
    for name, module in shift_weights(model).items():
        shift_name = _shift_name(name)
        stored = {k for k in state if k.startswith(f"{shift_name}.")}
        if not stored:
            derived[name] = module
        elif stored != {f"{shift_name}.{k}" for k in module.state_dict()}:
            raise ValueError(
                f"quant.init_from={path} holds the other DenseShift parametrization ({sorted(stored)[0]}); "
                f"this model has quant.decomposition={str(module.decomposition).lower()}: use the checkpoint's "
                "setting, or fine-tune from a float checkpoint"
            )
    own = model.state_dict()
    own.update({name: torch.empty(m.weight_shape, device="meta") for name, m in derived.items()})  # float shapes
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"quant.init_from={path} has weights of other shapes ({mismatched[0]}: {tuple(state[mismatched[0]].shape)} "
            f"vs {tuple(own[mismatched[0]].shape)}): use the same model preset as the float run"
        )
    result = model.load_state_dict(state, strict=False)
    allowed = ("ln_", "observer.")
    derived_latents = tuple(
        f"{name}." for name, m in model.named_modules(remove_duplicate=False) if any(m is d for d in derived.values())
    )
    missing = [
        k for k in result.missing_keys if not any(part in k for part in allowed) and not k.startswith(derived_latents)
    ]
    missing += [name for name in derived if name not in state]
    if missing:
        raise ValueError(f"quant.init_from={path} lacks weights {missing[:3]}: it is not a checkpoint of this model")
    for name, module in derived.items():
        module.init_from_float(state[name], init)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def _shift_name(float_name: str) -> str:
    """ "lstm.weight_ih_l0" -> "lstm.shift_weight_ih_l0": the DenseShift module standing for a float weight."""
    owner, _, attr = float_name.rpartition(".")
    return f"{owner}.{SHIFT_PREFIX}{attr}" if owner else SHIFT_PREFIX + attr
