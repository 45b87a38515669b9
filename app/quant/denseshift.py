"""DenseShift weights (Li et al., ICCV 2023): zero-free power-of-two weights by sign-scale decomposition.

A weight of shape (C, ...) with N bits takes the values ``alpha[c] * s * 2^p`` with ``s`` in {-1, +1} and
``p`` in {0 .. L}, L = 2^(N-1) - 1: 2-bit {+-1, +-2}, 3-bit {+-1, +-2, +-4, +-8}, 4-bit {+-1 .. +-128}
(times alpha). There is no zero and all 2^N codes are used. Two parametrizations produce these codes
(``quant.decomposition``); both are a ``ShiftWeight``, with the same codes, alpha, packing, export and engine.

``DenseShiftWeight`` (``decomposition: true``, the paper): parametrization and backward follow the official
3-bit code (docs/methods.md section 5.2):

- float latents ``sign`` (shape of the weight) and ``gates`` (L, *shape);
- ``s = +1 if sign >= 0 else -1``, ``b_k = 1[gates[k-1] > 0]``, both with an identity straight-through gradient;
- thermometer exponent ``S_1 = b_1``, ``S_k = (S_{k-1} + 1) * b_k``, ``p = S_L``: p counts the gates that are
  on from the top one (``gates[L-1]``, "|w| >= 2") downwards;
- forward ``s * 2^p``, backward as if the weight were ``s * sqrt(p + 1)`` (the official surrogate).

``DirectShiftWeight`` (``decomposition: false``, ours: the baseline the freezing metric is compared
against): one float latent ``w`` per weight, in weight units, quantized directly as DeepShift-Q does
(docs/methods.md section 5.4) but onto the zero-free set: ``s = sign(w)`` (0 -> +1),
``p = clamp(round(log2(|w| / alpha)), 0, L)``; the gradient goes straight through to ``w``.

``alpha`` (C,) is ours: the LSTMs have no BatchNorm to absorb the scale. The forward uses alpha rounded to
the engine's 16-bit fixed point, so ``forward() == fixed_point_value(m0, exp)[c] * s * 2^p`` exactly, and at
export alpha folds into the requantization multiplier.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from app.engine.packing import ShiftCodes
from app.engine.shift import decode_weight
from app.quant.config import DENSESHIFT_BITS
from app.quant.config import DENSESHIFT_INITS as INITS
from app.quant.quantizers import fixed_point_scale, fixed_point_value, ste

LOW_VARIANCE_STD = 1e-3  # official code: every latent ~ N(0, 1e-3) after the usual init
ALPHA_MIN = 1e-8  # alpha is clamped here before rounding: the engine's multiplier must be positive
SHIFT_PREFIX = "shift_"  # a layer's DenseShift weight standing in for its float weight <name> is shift_<name>


def check_bits(bits: int) -> int:
    if bits not in DENSESHIFT_BITS:
        raise ValueError(
            f"quant.weight_bits={bits}: denseshift supports 2, 3 or 4 bits (zero-free codes +-2^p); pick one of these"
        )
    return bits


def thermometer_exponent(on: Tensor) -> Tensor:
    """on: (L, ...) bool gates b_1..b_L -> (...) int64 exponent S_L (S_1 = b_1, S_k = (S_{k-1} + 1) * b_k)."""
    exponent = on[0].to(torch.int64)
    for k in range(1, on.shape[0]):
        exponent = torch.where(on[k], exponent + 1, 0)
    return exponent


class ShiftWeight(nn.Module, ABC):
    """One (C, ...) weight with zero-free ``bits``-bit codes ``s * 2^p`` and a positive per-channel scale alpha.

    What both parametrizations share: ``alpha`` (C,) float, ``codes()``, ``integer_weight()``,
    ``channel_scale()``, the initialisers. A subclass defines its latents, ``codes()``, ``forward()`` and
    ``from_float``. Call the module to get the effective float weight.
    """

    decomposition: bool  # quant.decomposition this parametrization implements

    def __init__(self, shape: tuple[int, ...] | torch.Size, bits: int):
        super().__init__()
        self.bits = check_bits(bits)
        self.levels = (1 << (bits - 1)) - 1  # exponents 0..L
        self.weight_shape = tuple(shape)  # the float weight this stands for
        self.alpha = nn.Parameter(torch.ones(self.weight_shape[0]))

    def extra_repr(self) -> str:
        return f"shape={self.weight_shape}, bits={self.bits}"

    @abstractmethod
    def latent_parameters(self) -> list[nn.Parameter]:
        """The latents that take weight decay. ``alpha`` is a scale, not a latent: leave it out of weight decay."""

    def channel_scale(self) -> tuple[Tensor, Tensor]:
        """alpha as the engine stores it: (m0 (C,) int64 in [2^14, 2^15), exp (C,) int64), alpha ~= m0 * 2^-exp."""
        return fixed_point_scale(self.alpha.detach().clamp_min(ALPHA_MIN))

    @abstractmethod
    def codes(self) -> tuple[Tensor, Tensor]:
        """The discrete code: (sign_bit (C, ...) uint8, 1 where s = -1; exponent (C, ...) int64 in [0, L])."""

    def integer_weight(self) -> Tensor:
        """(C, ...) int64 weight s * 2^p, the integer the engine multiplies by (with alpha in the requant)."""
        return decode_weight(*self.codes())

    def _alpha_q(self, dim: int) -> Tensor:
        """alpha rounded to the engine's fixed point, shaped (C, 1, ...) for a ``dim``-d weight; gradient to alpha."""
        m0, exp = self.channel_scale()
        alpha = ste(self.alpha, fixed_point_value(m0, exp).to(self.alpha.dtype))
        return alpha.reshape(-1, *([1] * (dim - 1)))

    @classmethod
    def from_float(cls, weight: Tensor, bits: int, init: str = "low_variance") -> ShiftWeight:
        """A weight of this parametrization standing for the float ``weight`` (C, ...) (``quant.init``; each
        subclass's ``_init_latents`` says what init does)."""
        check_bits(bits)
        _check_init(init)
        weight = weight.detach()
        module = cls(weight.shape, bits).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            module._init_latents(weight, weight.reshape(weight.shape[0], -1), init)
        return module

    @abstractmethod
    def _init_latents(self, weight: Tensor, channel: Tensor, init: str) -> None:
        """Set every latent and alpha from the float ``weight`` (C, ...), ``channel`` = weight as (C, -1)."""

    @torch.no_grad()
    def init_from_float(self, weight: Tensor, init: str = "low_variance") -> ShiftWeight:
        """Re-derive every latent from the float ``weight`` as ``from_float`` does, in place: a tied layer
        and an optimizer keep pointing at these parameters."""
        if tuple(weight.shape) != self.weight_shape:
            shapes = f"{tuple(weight.shape)} vs {self.weight_shape}"
            raise ValueError(f"a float weight of another shape cannot initialise this DenseShift weight ({shapes})")
        fresh = type(self).from_float(weight.to(self.alpha), self.bits, init)
        for mine, theirs in zip(self.parameters(), fresh.parameters()):
            mine.copy_(theirs)
        return self

    @classmethod
    def from_shape(cls, shape: tuple[int, ...] | torch.Size, bits: int, init: str = "low_variance") -> ShiftWeight:
        """For training from scratch: ``from_float`` of a weight with nn.Linear's default init,
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), which sets alpha."""
        check_bits(bits)
        weight = torch.empty(shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        return cls.from_float(weight, bits, init)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"DenseShift init={init!r} is unknown; choose one of {', '.join(INITS)}")


class DenseShiftWeight(ShiftWeight):
    """The sign-scale decomposition of one (C, ...) weight with ``bits`` in {2, 3, 4} (the paper's).

    Parameters: ``sign`` (C, ...) float, ``gates`` (L, C, ...) float, ``alpha`` (C,) float (positive scale).
    Build with ``from_float`` or ``from_shape``; call the module to get the effective float weight.
    """

    decomposition = True

    def __init__(self, shape: tuple[int, ...] | torch.Size, bits: int):
        super().__init__(shape, bits)
        self.sign = nn.Parameter(torch.zeros(self.weight_shape))
        self.gates = nn.Parameter(torch.zeros(self.levels, *self.weight_shape))

    def latent_parameters(self) -> list[nn.Parameter]:
        """``sign`` and ``gates`` (official recipe: weight decay pulls them toward the 0 threshold, which keeps
        them flippable)."""
        return [self.sign, self.gates]

    @torch.no_grad()
    def codes(self) -> tuple[Tensor, Tensor]:
        return (self.sign < 0).to(torch.uint8), thermometer_exponent(self.gates > 0)

    def forward(self) -> Tensor:
        """The effective (C, ...) float weight ``alpha_q[c] * s * 2^p``, exact.

        Gradients (docs/methods.md section 5.2, from the official dsconv2d.py): identity STE through the
        binarizers, then as if the weight were ``s * sqrt(S_L + 1)``. With g = alpha_q[c] * dL/d(output):
        dL/dsign = g * sqrt(S_L + 1), dL/dS_L = g * s / (2 sqrt(S_L + 1)), and each gate gets dL/dS_L times
        dS_L/db_k from the recursion, which is zero unless every gate above it is on. alpha gets
        dL/d(output) * s * 2^p summed over the channel. The latents' gradients carry the factor alpha_q (chain
        rule; the official layer has no alpha): SGD step sizes on latents scale with alpha, Adam's do not.
        """
        on = (self.gates > 0).to(self.gates.dtype)
        b = ste(self.gates, on)  # value b_k in {0, 1}, gradient 1 to gates
        exponent = b[0]
        for k in range(1, self.levels):
            exponent = (exponent + 1) * b[k]  # float, exact small integers; carries the recursion's gradient
        s = ste(self.sign, torch.where(self.sign >= 0, 1.0, -1.0).to(self.sign.dtype))
        exact = s.detach() * torch.exp2(exponent.detach())
        weight = ste(s * torch.sqrt(exponent + 1), exact)
        return self._alpha_q(weight.dim()) * weight

    def _init_latents(self, weight: Tensor, channel: Tensor, init: str) -> None:
        """from_float: a DenseShift weight standing in for the float ``weight``.

        init="low_variance" (official): every latent ~ N(0, 1e-3), so the codes are random (each gate a fair
        coin) and every gate is one small step from flipping. The codes carry no information about ``weight``,
        so only its magnitude can be kept: alpha[c] = rms(weight[c]) / rms(s * 2^p over channel c), which keeps
        each output's variance what the float init chose (for an LSTM without BN that sets the gate
        pre-activation scale). Matching mean |w| instead misses the rms by 0.91x (2-bit) to 2.7x (4-bit) for a
        uniform float init, because the random codes' 2^p is heavy-tailed; max|w| / 2^L undershoots it (0.19x at 4-bit).

        init="float" (ours, for fine-tuning a float model): alpha[c] minimises the channel's L2 error over a
        grid (``_best_alpha``); ``sign = weight``; the gate deciding "p >= j + 1" (``gates[L-1-j]``) is set to
        ``|w| - alpha * 1.5 * 2^j``: positive exactly when 2^(j+1) is nearer to |w| / alpha than 2^j, so p is the
        nearest power of two, and each latent's distance from its threshold is the float weight's distance
        from that decision boundary, in weight units.
        """
        if init == "low_variance":
            self.sign.normal_(0.0, LOW_VARIANCE_STD)
            self.gates.normal_(0.0, LOW_VARIANCE_STD)
            code = self.integer_weight().to(weight.dtype).reshape(weight.shape[0], -1)
            alpha = _rms(channel) / _rms(code)
        else:
            alpha = _best_alpha(channel, self.levels, nearest_code_magnitude)
            scale = alpha.reshape(-1, *([1] * (weight.dim() - 1)))
            self.sign.copy_(weight)
            for j in range(self.levels):
                self.gates[self.levels - 1 - j].copy_(weight.abs() - scale * (1.5 * 2.0**j))
        self.alpha.copy_(alpha.clamp_min(ALPHA_MIN))


class DirectShiftWeight(ShiftWeight):
    """No sign-scale decomposition (``quant.decomposition=false``, ours): one float latent per weight,
    quantized directly to the zero-free codes; the baseline the decomposition's freezing is compared with.

    Parameters: ``latent`` (C, ...) float, in weight units, and ``alpha`` (C,). Codes: ``s = -1`` where
    ``latent < 0`` (0 -> +1, never zero), ``p = clamp(round(log2(|latent| / alpha_q)), 0, L)`` (DeepShift-Q's
    rounding in the log domain, docs/methods.md section 5.4, clamped to the N-bit range: 1 sign bit and
    N - 1 exponent bits). Same codes, alpha, packing, export and engine as ``DenseShiftWeight``.
    """

    decomposition = False

    def __init__(self, shape: tuple[int, ...] | torch.Size, bits: int):
        super().__init__(shape, bits)
        self.latent = nn.Parameter(torch.zeros(self.weight_shape))

    def latent_parameters(self) -> list[nn.Parameter]:
        """``latent`` (weight decay pulls it toward 0, i.e. toward a sign flip and the smallest code)."""
        return [self.latent]

    @torch.no_grad()
    def codes(self) -> tuple[Tensor, Tensor]:
        m0, exp = self.channel_scale()
        alpha = fixed_point_value(m0, exp).reshape(-1, *([1] * (self.latent.dim() - 1)))
        ratio = self.latent.abs().to(alpha.dtype) / alpha
        return (self.latent < 0).to(torch.uint8), log_rounded_exponent(ratio, self.levels).to(torch.int64)

    def forward(self) -> Tensor:
        """The effective (C, ...) float weight ``alpha_q[c] * s * 2^p``, exact.

        Gradients: straight through to the latent (dL/dlatent = dL/d(output), as DeepShift-Q's STE);
        alpha gets dL/d(output) * s * 2^p summed over the channel, as in ``DenseShiftWeight``.
        """
        code = self.integer_weight().to(self.latent.dtype)
        # + (latent - latent.detach()) adds exactly 0 to the value and the identity to the gradient
        return self._alpha_q(code.dim()) * code + (self.latent - self.latent.detach())

    def _init_latents(self, weight: Tensor, channel: Tensor, init: str) -> None:
        """from_float: a direct shift weight standing in for the float ``weight``.

        init="float": ``latent = weight``, alpha[c] minimises the channel's L2 error (``_best_alpha`` with this
        class's log-domain rounding), so every code is the log-nearest power of two of ``|w| / alpha``.

        init="low_variance" (ours, the analogue of the paper's init for a single latent): ``latent ~ N(0,
        (1e-3 alpha[c])^2)``: every sign a fair coin and one small step from flipping, every exponent 0 (the
        first exponent threshold is alpha * sqrt(2)), so |w| = alpha and alpha[c] = rms(weight[c]) keeps each
        channel's rms, as the decomposed low-variance init does.
        """
        if init == "low_variance":
            alpha = _rms(channel).clamp_min(ALPHA_MIN)
            scale = alpha.reshape(-1, *([1] * (weight.dim() - 1)))
            self.latent.normal_(0.0, LOW_VARIANCE_STD).mul_(scale)
        else:
            alpha = _best_alpha(channel, self.levels, log_rounded_magnitude).clamp_min(ALPHA_MIN)
            self.latent.copy_(weight)
        self.alpha.copy_(alpha)


def shift_weight_class(decomposition: bool) -> type[ShiftWeight]:
    """The parametrization ``quant.decomposition`` names: ``DenseShiftWeight`` (true) or ``DirectShiftWeight``."""
    return DenseShiftWeight if decomposition else DirectShiftWeight


def set_decomposition(model: nn.Module, decomposition: bool) -> int:
    """Give every shift weight of ``model`` the parametrization ``decomposition`` names (``quant.decomposition``),
    re-derived by ``from_float(init="float")`` from its current effective weight; a weight shared by two layers
    stays shared. Returns how many weights were replaced.

    The quantizable layers build ``DenseShiftWeight``s; a model built with ``quant.decomposition=false`` calls
    this once in its constructor, before initialising its weights (``init_from_float``).
    """
    wanted = shift_weight_class(decomposition)
    replacements: dict[int, ShiftWeight] = {}
    for owner in list(model.modules()):
        for name, child in list(owner.named_children()):
            if isinstance(child, ShiftWeight) and type(child) is not wanted:
                if id(child) not in replacements:
                    with torch.no_grad():
                        replacements[id(child)] = wanted.from_float(child(), child.bits, "float")
                setattr(owner, name, replacements[id(child)])
    return len(replacements)


class DenseShiftQuant:
    """A DenseShift weight behind the ``WeightQuant`` interface, so the irnn integer path runs unchanged.

    ``fake`` (C, ...) float: ``alpha_q[c] * s * 2^p`` with the weight's gradient (surrogate or straight through);
    ``q``: the integers ``s * 2^p`` as a float tensor; ``m0``/``exp``/``scale`` (C,): alpha in the engine's
    16-bit fixed point, so ``fake == scale * q`` exactly.
    """

    def __init__(self, weight: ShiftWeight):
        self.weight = weight
        self.fake = weight()
        self.m0, self.exp = weight.channel_scale()
        self.scale = fixed_point_value(self.m0, self.exp).to(self.fake.dtype)
        self.q = weight.integer_weight().to(self.fake.dtype)

    @property
    def q_int8(self) -> Tensor:
        if self.weight.bits > 3:
            raise ValueError(f"{self.weight.bits}-bit DenseShift weights reach +-128, which int8 cannot hold")
        return self.q.to(torch.int8)

    def engine_weight(self) -> ShiftCodes:
        """What the integer checkpoint stores: the packed N-bit codes (the engine decodes them at load)."""
        return ShiftCodes.pack(*self.weight.codes(), self.weight.bits)


def shift_weights(model: nn.Module) -> dict[str, ShiftWeight]:
    """Every DenseShift weight (either parametrization) in ``model``, keyed by the float weight it stands for
    ("lstm.weight_ih_l0").

    A weight shared by two layers (the tied decoder) is listed once, under its first name.
    """
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, ShiftWeight):
            owner, _, attr = name.rpartition(".")
            float_name = attr.removeprefix(SHIFT_PREFIX)
            found[f"{owner}.{float_name}" if owner else float_name] = module
    return found


def optimizer_parameter_groups(model: nn.Module) -> list[dict]:
    """``model``'s parameters as optimizer groups: every DenseShift alpha without weight decay (a scale,
    not a latent: ``latent_parameters``), everything else with the optimizer's settings.

    A model whose ``quant.decomposition`` its shift weights do not implement (its constructor did not call
    ``set_decomposition``) is a ValueError here, before any training step, rather than a silently other run.
    """
    quant = getattr(model, "quant", None)
    for name, module in shift_weights(model).items():
        if quant is not None and module.decomposition != quant.decomposition:
            raise ValueError(
                f"quant.decomposition={str(quant.decomposition).lower()}, but {type(model).__name__}'s {name} is a "
                f"{type(module).__name__}: build the model with app.quant.denseshift.set_decomposition"
            )
    alphas = {id(module.alpha): module.alpha for module in shift_weights(model).values()}
    rest = [p for p in model.parameters() if id(p) not in alphas]
    groups = [{"params": rest}]
    if alphas:
        groups.append({"params": list(alphas.values()), "weight_decay": 0.0})
    return groups


def _rms(x: Tensor) -> Tensor:
    """(C, K) -> (C,) root mean square per row."""
    return x.pow(2).mean(dim=1).sqrt()


def nearest_code_magnitude(ratio: Tensor, levels: int) -> Tensor:
    """|w| / alpha -> the nearest of 2^0 .. 2^levels (ties go down): p counts the thresholds 1.5 * 2^j passed."""
    exponent = torch.zeros_like(ratio)
    for j in range(levels):
        exponent = exponent + (ratio > 1.5 * 2.0**j).to(ratio.dtype)
    return torch.exp2(exponent)


def log_rounded_exponent(ratio: Tensor, levels: int) -> Tensor:
    """|w| / alpha -> clamp(round(log2(ratio)), 0, levels) as a float tensor (``DirectShiftWeight``'s codes;
    ratio 0 gives 0: log2 is -inf, which the clamp lifts)."""
    return torch.round(torch.log2(ratio)).clamp(0, levels)


def log_rounded_magnitude(ratio: Tensor, levels: int) -> Tensor:
    """|w| / alpha -> 2^p with p = ``log_rounded_exponent``: the log-nearest of 2^0 .. 2^levels."""
    return torch.exp2(log_rounded_exponent(ratio, levels))


def _best_alpha(
    channel: Tensor, levels: int, nearest: Callable[[Tensor, int], Tensor], steps_per_octave: int = 8
) -> Tensor:
    """(C, K) float weights -> (C,) alpha minimising sum_k (|w_k| - alpha * nearest(|w_k| / alpha))^2 per
    channel, where ``nearest`` rounds to 2^0 .. 2^levels (``nearest_code_magnitude``, ``log_rounded_magnitude``).

    Grid search over alpha = max|w| / 2^levels * 2^(i / steps_per_octave), i from 3 octaves below to 1 above
    (the float init picks the best candidate per channel; a 1/8-octave grid is within 4.4% of the optimum's
    alpha, far below the rounding error of 2^N levels).
    """
    magnitude = channel.abs()
    top = magnitude.amax(dim=1).clamp_min(ALPHA_MIN) / 2.0**levels
    best_alpha = top.clone()
    best_error = torch.full_like(top, math.inf)
    for i in range(-3 * steps_per_octave, steps_per_octave + 1):
        alpha = top * 2.0 ** (i / steps_per_octave)
        approx = alpha.unsqueeze(1) * nearest(magnitude / alpha.unsqueeze(1), levels)
        error = (magnitude - approx).pow(2).sum(dim=1)
        better = error < best_error
        best_alpha = torch.where(better, alpha, best_alpha)
        best_error = torch.where(better, error, best_error)
    return best_alpha


class FreezingTracker:
    """The weight-freezing metric (docs/methods.md section 5.6, ours: the paper's definition is unavailable).

    Per named layer, remembers the discrete code at the last call; ``update`` at each epoch end returns the
    fraction of weights whose code did not change since the previous call ("freeze", 1.0 = fully frozen)
    and the fraction whose sign flipped ("sign_flip"). The first call for a layer only records its code;
    call ``update`` once before training to get metrics for the first epoch.
    """

    def __init__(self):
        self._last: dict[str, tuple[Tensor, Tensor]] = {}
        self._metrics: dict[str, float] = {}

    def update(self, name: str, codes: tuple[Tensor, Tensor]) -> dict[str, float]:
        """codes: (sign_bit, exponent) as from ``ShiftWeight.codes()`` -> {"freeze": f, "sign_flip": f},
        or {} on a layer's first call."""
        # compact copies (1 byte each per weight): the large LM's LSTMs hold ~10^8 weights
        sign_bit = codes[0].detach().to(torch.bool, copy=True)
        exponent = codes[1].detach().to(torch.uint8, copy=True)
        previous = self._last.get(name)
        self._last[name] = (sign_bit, exponent)
        if previous is None:
            return {}
        if previous[0].shape != sign_bit.shape:
            raise ValueError(f"layer {name!r} changed shape from {tuple(previous[0].shape)} to {tuple(sign_bit.shape)}")
        flipped = sign_bit != previous[0]
        unchanged = ~flipped & (exponent == previous[1])
        metrics = {
            "freeze": unchanged.double().mean().item(),
            "sign_flip": flipped.double().mean().item(),
        }
        for key, value in metrics.items():
            self._metrics[f"{key}/{name}"] = value
        return metrics

    def epoch_metrics(self) -> dict[str, float]:
        """{"freeze/<name>": ..., "sign_flip/<name>": ...} from the ``update`` calls since the last call
        of this method (it resets them, so a layer that was not updated this epoch is not reported)."""
        metrics, self._metrics = self._metrics, {}
        return metrics
