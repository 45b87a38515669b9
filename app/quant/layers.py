"""Quantizable Embedding and Linear: drop-in subclasses of nn.Embedding / nn.Linear.

Same parameters as the float layers (a float checkpoint loads as is) in ``float`` and ``irnn`` modes.
In the DenseShift modes a float weight ``<name>`` is replaced by a ``DenseShiftWeight`` submodule
``shift_<name>`` (its latents are the parameters; ``app.quant.monitor.load_init_weights`` derives them
from a float checkpoint). With integer activations (``irnn``, ``irnn_denseshift``) the forward value
is computed by the integer engine's own functions from the integers the weight quantizer produces
(``WeightQuant`` or ``DenseShiftQuant``), and gradients flow straight through to the float weights or
latents (QAT). With float activations (``float``, ``denseshift``) the layer runs its float op on the
float or effective DenseShift weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.fixed_point import qrange, requantize
from app.engine.layers import IntEmbedding, IntLinear
from app.quant.config import QuantConfig
from app.quant.denseshift import SHIFT_PREFIX, DenseShiftQuant, DenseShiftWeight
from app.quant.quantizers import PowerOfTwoObserver, WeightQuant, bias_to_acc, snap, ste, to_grid

LOGIT_FRAC = 16  # int32 logits at 2^-16


def exact_matmul(x_int: Tensor, w_q: Tensor) -> Tensor:
    """Exact int64 ``x_int @ w_q.T`` for the simulation side of QAT.

    Products of small integers summed in float32 are exact while every partial sum stays below
    2^24, in float64 below 2^53: the simulation uses whichever float matmul is exact for the
    bound ``max|x| * max|w| * K`` (float GEMMs are far faster than integer ones under autograd-free
    training code), and the engine computes the same integers with integer kernels.
    """
    bound = float(x_int.abs().max()) * float(w_q.abs().max()) * x_int.shape[-1]
    dtype = torch.float32 if bound < 2**24 else torch.float64
    if bound >= 2**53:
        raise OverflowError(f"accumulator bound {bound:.3g} exceeds exact float64 range")
    return (x_int.to(dtype) @ w_q.to(dtype).t()).long()


def use_shift_weights(layer: nn.Module, names: list[str]) -> None:
    """Replace ``layer``'s float weights ``names`` by DenseShift weights ``shift_<name>`` derived from them
    (``quant.init``); the float parameters are removed."""
    quant = layer.quant
    for name in names:
        weight = getattr(layer, name)
        delattr(layer, name)
        layer.add_module(SHIFT_PREFIX + name, DenseShiftWeight.from_float(weight, quant.weight_bits, quant.init))


def weight_quant(layer: nn.Module, name: str = "weight") -> WeightQuant | DenseShiftQuant:
    """The quantized weight ``name`` of a quantizable layer: DenseShift codes or uniform integers."""
    if layer.quant.denseshift:
        return DenseShiftQuant(getattr(layer, SHIFT_PREFIX + name))
    return WeightQuant(getattr(layer, name), layer.quant.weight_bits)


def float_weight(layer: nn.Module, name: str = "weight") -> Tensor:
    """The weight float activations run on: the parameter itself, or the effective DenseShift weight."""
    if layer.quant.denseshift:
        return getattr(layer, SHIFT_PREFIX + name)()
    return getattr(layer, name)


class QuantEmbedding(nn.Embedding):
    """Embedding whose int8 rows (per-row scales) are requantized to one power-of-two output grid."""

    def __init__(self, num_embeddings: int, embedding_dim: int, quant: QuantConfig | None = None):
        super().__init__(num_embeddings, embedding_dim)
        self.quant = quant or QuantConfig()
        if self.quant.denseshift:
            use_shift_weights(self, ["weight"])
        if self.quant.integer_activations:
            self.observer = PowerOfTwoObserver(
                self.quant.act_bits, self.quant.observer_momentum, self.quant.observer_quantile
            )

    @property
    def out_frac(self) -> int:
        return self.observer.frac

    def forward(self, tokens: Tensor) -> Tensor:
        if not self.quant.integer_activations:
            weight, options = float_weight(self), (self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
            return F.embedding(tokens, weight, self.padding_idx, *options)  # nn.Embedding.forward
        wq = weight_quant(self)
        rows = F.embedding(tokens, wq.fake)
        self.observer.observe(rows)
        frac = self.out_frac
        lo, hi = qrange(self.quant.act_bits)
        with torch.no_grad():
            exact = requantize(
                wq.q[tokens].long(), wq.m0[tokens].unsqueeze(-1), (wq.exp[tokens] - frac).unsqueeze(-1), lo, hi
            )
            self.observer.count_saturation(exact)
        return ste(rows, exact.to(rows.dtype) * 2.0**-frac)

    def export(self) -> IntEmbedding:
        wq = weight_quant(self)
        return IntEmbedding(wq.engine_weight(), wq.m0, wq.exp, self.out_frac, self.quant.act_bits)


class QuantLinear(nn.Linear):
    """Linear layer with int8 per-channel weights and an int32-accumulator bias.

    ``out_frac``/``out_bits`` give the output grid; the default is the LM's int32 logits at 2^-16.
    ``out_frac=None`` observes the output range instead (a hidden activation, e.g. a conv front end's
    output): the grid is the power of two that keeps the EMA of |max| in ``out_bits``.
    ``exact_in_training=False`` is for a final layer whose output leaves the engine (logits): while
    training it returns the float surrogate on the same exact inputs and quantized weights, which
    differs from the int32 result by its last rounding (2^-out_frac) and skips integer work on the
    (tokens x vocabulary) output; in eval it is exact like every other layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        quant: QuantConfig | None = None,
        out_frac: int | None = LOGIT_FRAC,
        out_bits: int = 32,
        exact_in_training: bool = True,
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.quant = quant or QuantConfig()
        self.fixed_out_frac = out_frac
        self.out_bits = out_bits
        self.observer = None
        if out_frac is None and self.quant.integer_activations:
            self.observer = PowerOfTwoObserver(out_bits, self.quant.observer_momentum, self.quant.observer_quantile)
        self.exact_in_training = exact_in_training
        if self.quant.denseshift:
            use_shift_weights(self, ["weight"])

    @property
    def out_frac(self) -> int:
        return self.fixed_out_frac if self.observer is None else self.observer.frac

    def forward(self, x: Tensor, in_frac: int | None = None) -> Tensor:
        if not self.quant.integer_activations:
            return F.linear(x, float_weight(self), self.bias)
        if in_frac is None:
            raise ValueError("QuantLinear in irnn mode needs the input grid: forward(x, in_frac=...)")
        x = snap(x, in_frac)
        wq = weight_quant(self)
        surrogate = F.linear(x, wq.fake, self.bias)
        if self.observer is not None:
            self.observer.observe(surrogate)
        if self.training and not self.exact_in_training:
            return surrogate
        with torch.no_grad():
            layer = self._integer_layer(wq, in_frac)
            acc = exact_matmul(to_grid(x, in_frac).reshape(-1, x.shape[-1]), layer.w_q)
            exact = layer.from_accumulator(acc).reshape(surrogate.shape)
            if self.observer is not None:
                self.observer.count_saturation(exact)
        return ste(surrogate, exact.to(surrogate.dtype) * 2.0**-self.out_frac)

    def _integer_layer(self, wq: WeightQuant | DenseShiftQuant, in_frac: int, export: bool = False) -> IntLinear:
        bias_acc = None if self.bias is None else bias_to_acc(self.bias, in_frac, wq.scale)
        weight = wq.engine_weight() if export else wq.q_int8
        return IntLinear(weight, wq.m0, wq.exp, bias_acc, in_frac, self.out_frac, self.out_bits)

    def export(self, in_frac: int) -> IntLinear:
        return self._integer_layer(weight_quant(self), in_frac, export=True)
