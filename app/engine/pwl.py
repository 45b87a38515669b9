"""Integer piecewise-linear (PWL) activations: evaluation only (the fitter is app/quant/pwl.py).

A table maps an integer input ``x`` (on the input activation's grid) to an integer output:
segment ``j`` covers ``boundaries[j-1] <= x < boundaries[j]`` and computes
``clamp(round_half_up((slope[j] * x + intercept[j]) / 2^slope_frac_bits), out_min, out_max)``.
For int16-or-narrower inputs the engine expands the table once into a lookup table over the whole
input range (``PWLTable.lookup``): the same function, one gather per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.fixed_point import rounding_right_shift


@dataclass(frozen=True)
class PWLTable:
    boundaries: Tensor  # (K-1,) int64, strictly increasing: first input of segments 1..K-1
    slopes: Tensor  # (K,) int64, output LSB per input LSB, scaled by 2^slope_frac_bits
    intercepts: Tensor  # (K,) int64, output LSB scaled by 2^slope_frac_bits
    slope_frac_bits: int
    in_min: int  # input domain (inclusive), e.g. int16 range for Q3.12 gates
    in_max: int
    out_min: int
    out_max: int

    @property
    def segments(self) -> int:
        return int(self.slopes.numel())

    def segment_index(self, x: Tensor) -> Tensor:
        return torch.bucketize(x, self.boundaries.to(x.device), right=True)

    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate the PWL on int64 ``x`` (already inside [in_min, in_max])."""
        j = self.segment_index(x)
        slopes, intercepts = self.slopes.to(x.device), self.intercepts.to(x.device)
        y = rounding_right_shift(slopes[j] * x + intercepts[j], self.slope_frac_bits)
        return y.clamp(self.out_min, self.out_max)

    def lookup(self) -> Tensor:
        """The table evaluated on every input in [in_min, in_max]: index with ``x - in_min``."""
        x = torch.arange(self.in_min, self.in_max + 1, dtype=torch.int64)
        return self(x)

    def to_tensors(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}.boundaries": self.boundaries,
            f"{prefix}.slopes": self.slopes,
            f"{prefix}.intercepts": self.intercepts,
        }

    def meta(self) -> dict[str, int]:
        return {
            "slope_frac_bits": self.slope_frac_bits,
            "in_min": self.in_min,
            "in_max": self.in_max,
            "out_min": self.out_min,
            "out_max": self.out_max,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str, meta: dict[str, int]) -> PWLTable:
        return cls(
            boundaries=tensors[f"{prefix}.boundaries"].to(torch.int64),
            slopes=tensors[f"{prefix}.slopes"].to(torch.int64),
            intercepts=tensors[f"{prefix}.intercepts"].to(torch.int64),
            **{k: int(v) for k, v in meta.items()},
        )


class DeviceCopies:
    """One tensor (a lookup table) and its copies on the devices it has been used on.

    QAT on a GPU evaluates the same integer tables as the engine: each device gets its copy once.
    """

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self._copies = {tensor.device: tensor}

    def on(self, device: torch.device) -> Tensor:
        copy = self._copies.get(device)
        if copy is None:
            copy = self._copies[device] = self.tensor.to(device)
        return copy


class LookupActivation:
    """A PWL expanded into a lookup table: ``y = lut[x - in_min]`` (identical to ``PWLTable.__call__``)."""

    def __init__(self, table: PWLTable):
        self.table = table
        self.lut = table.lookup()
        self.offset = table.in_min
        self._lut = DeviceCopies(self.lut)

    def __call__(self, x: Tensor) -> Tensor:
        # index_select, not lut[x]: advanced indexing costs ~1000x more here (30 ms vs 0.03 ms for 6k lookups)
        return self._lut.on(x.device).index_select(0, (x - self.offset).reshape(-1)).view(x.shape)
