"""The ``quant`` config group as a typed, validated dataclass (Hydra structured config)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MODES = ("float", "irnn", "denseshift", "irnn_denseshift")
DENSESHIFT_BITS = (2, 3, 4)  # zero-free codes +-2^p, p in 0 .. 2^(bits-1) - 1 (docs/methods.md section 5)
DENSESHIFT_INITS = ("low_variance", "float")


@dataclass
class QuantConfig:
    name: str = "float"  # the preset's name (conf/quant/<name>.yaml)
    mode: str = "float"  # float | irnn | denseshift | irnn_denseshift
    weight_bits: int = 8  # irnn: symmetric per-output-channel integers (4..8); denseshift: 2, 3 or 4
    act_bits: int = 8  # activations and hidden state h (4..8); gates and cell are 16-bit
    pwl_segments: int = 32  # pieces of each adaptive PWL activation (even, 4..64)
    layer_norm: bool = False  # LN-LSTM: integer layer norm on W_x x, W_h h and the cell
    cell_int_bits: int = 4  # cell state format Q(cell_int_bits).(15 - cell_int_bits)
    observer_momentum: float = 0.01  # EMA of activation |max| during QAT
    observer_quantile: float = 1.0  # <1: the EMA tracks this quantile of |x| instead of its max (the rest saturates)
    freeze_observers_epoch: int = -1  # freeze activation ranges from this epoch (-1: never freeze)
    init_from: str | None = None  # float (or QAT) checkpoint to initialise weights from (fine-tune)
    init: str = "low_variance"  # DenseShift latents: low_variance (N(0, 1e-3), paper) | float (nearest codes)
    decomposition: bool = True  # DenseShift: sign + gate latents (paper) | false: one latent per weight, rounded

    @property
    def quantized(self) -> bool:
        return self.mode != "float"

    @property
    def integer_activations(self) -> bool:
        return self.mode in ("irnn", "irnn_denseshift")

    @property
    def denseshift(self) -> bool:
        """Weights are DenseShift codes (``shift_<name>`` latents) instead of float weights."""
        return self.mode in ("denseshift", "irnn_denseshift")

    def validate(self) -> QuantConfig:
        if self.mode not in MODES:
            raise ValueError(f"quant.mode={self.mode!r} is unknown; choose one of {', '.join(MODES)}")
        if self.mode == "irnn" and not 4 <= self.weight_bits <= 8:
            raise ValueError(f"quant.weight_bits={self.weight_bits}: irnn supports 4..8 (int8 storage)")
        if self.mode == "denseshift" and self.weight_bits not in DENSESHIFT_BITS:
            raise ValueError(
                f"quant.weight_bits={self.weight_bits}: denseshift supports 2, 3 or 4 bits (zero-free codes +-2^p)"
            )
        if self.mode == "irnn_denseshift" and self.weight_bits not in DENSESHIFT_BITS:
            raise ValueError(
                f"quant.weight_bits={self.weight_bits}: irnn_denseshift supports 2 or 3 bits (zero-free codes +-2^p "
                "in the engine's int8 weights)"
            )
        if self.mode == "irnn_denseshift" and self.weight_bits == 4:
            raise ValueError(
                "quant.weight_bits=4: irnn_denseshift weights reach +-128, which the engine's int8 weights cannot "
                "hold; use 2 or 3 bits (or quant=denseshift for 4-bit weights with float activations)"
            )
        if not isinstance(self.decomposition, bool):
            raise ValueError(f"quant.decomposition={self.decomposition!r}: use true or false")
        if not self.decomposition and not self.denseshift:
            raise ValueError(
                f"quant.decomposition=false: {self.mode} has no DenseShift weights to decompose; "
                "use it with quant=denseshift or quant=irnn_denseshift"
            )
        if self.denseshift and self.init not in DENSESHIFT_INITS:
            raise ValueError(f"quant.init={self.init!r} is unknown; choose one of {', '.join(DENSESHIFT_INITS)}")
        if not 4 <= self.act_bits <= 8:
            raise ValueError(f"quant.act_bits={self.act_bits}: supported 4..8 (h is stored as int8)")
        if self.pwl_segments < 4 or self.pwl_segments > 64 or self.pwl_segments % 2:
            raise ValueError(
                f"quant.pwl_segments={self.pwl_segments}: use an even number in 4..64 "
                "(fits are symmetric; more pieces than 64 do not lower the error below the Q0.15 step)"
            )
        if not 1 <= self.cell_int_bits <= 8:
            raise ValueError(f"quant.cell_int_bits={self.cell_int_bits}: supported 1..8 (int16 cell state)")
        if not 0.0 < self.observer_momentum <= 1.0:
            raise ValueError(f"quant.observer_momentum={self.observer_momentum}: must be in (0, 1]")
        if not 0.9 <= self.observer_quantile <= 1.0:
            raise ValueError(
                f"quant.observer_quantile={self.observer_quantile}: must be in [0.9, 1] (1: the |max|; "
                "lower saturates more than a tenth of the values)"
            )
        return self

    @classmethod
    def from_dict(cls, cfg: Any) -> QuantConfig:
        """Build from a DictConfig / dict; unknown keys are an error that names them."""
        if cfg is None:
            return cls()
        if isinstance(cfg, QuantConfig):
            return cfg.validate()
        data = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown quant config key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data).validate()

    @property
    def cell_frac(self) -> int:
        return 15 - self.cell_int_bits

    @property
    def h_frac(self) -> int:
        return self.act_bits - 1
