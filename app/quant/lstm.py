"""Quantizable LSTM: a drop-in subclass of ``nn.LSTM`` (same parameters, same state layout).

``quant.mode=float`` runs nn.LSTM's kernel on its parameters, ``denseshift`` the same kernel on the
effective DenseShift weights (``shift_weight_ih_l0``, ... stand for ``weight_ih_l0``, ...). ``irnn`` and
``irnn_denseshift`` run the integer LSTM of ``app.engine.lstm`` step by step for the forward value
(bit-exact with the engine) and a float surrogate for gradients: straight-through at each
requantization, PWL segment slopes for the activations. What does not depend on the recurrence (the
input projection of every time step) is computed in one matmul per layer and direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

from app.engine.fixed_point import INT16_MAX, INT16_MIN
from app.engine.layernorm import STD_EXTRA_BITS
from app.engine.lstm import (
    GATE_FRAC,
    PWL_OUT_FRAC,
    IntLayerNormParams,
    IntLSTM,
    IntLSTMDirection,
    LSTMFormat,
    cell_step,
    input_projection_from_acc,
    recurrent_gates,
    recurrent_requantizer,
    reverse_padded,
)
from app.quant.activations import lstm_activations
from app.quant.config import QuantConfig
from app.quant.layers import exact_matmul, float_weight, use_shift_weights, weight_quant
from app.quant.quantizers import bias_to_acc, round_half_up, snap, ste, to_grid

LN_EPS = 1e-5


def ln_eps_on_grid(in_frac: int) -> int:
    """The float LN epsilon on the integer variance grid of ``layer_norm_int``."""
    return int(round(LN_EPS * 2.0 ** (2 * in_frac + 2 * STD_EXTRA_BITS)))


def _q12(x: Tensor) -> Tensor:
    return round_half_up(x.detach().double() * 2.0**GATE_FRAC).clamp(INT16_MIN, INT16_MAX).long()


class QuantLSTM(nn.LSTM):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        quant: QuantConfig | None = None,
    ):
        super().__init__(
            input_size, hidden_size, num_layers, batch_first=True, dropout=dropout, bidirectional=bidirectional
        )
        self.quant = quant or QuantConfig()
        if self.quant.layer_norm and not self.quant.integer_activations:
            raise ValueError(
                "quant.layer_norm=true needs integer activations (quant=irnn); the float model has no LN-LSTM"
            )
        if self.quant.denseshift:
            use_shift_weights(self, [name for name in self._flat_weights_names if name.startswith("weight_")])
            self._init_flat_weights()  # nn.LSTM's list of weights drops the removed float ones
        if self.quant.layer_norm:
            for name in self._direction_names():
                self.register_parameter(f"ln_ih_weight{name}", nn.Parameter(torch.ones(4 * hidden_size)))
                self.register_parameter(f"ln_hh_weight{name}", nn.Parameter(torch.ones(4 * hidden_size)))
                self.register_parameter(f"ln_cell_weight{name}", nn.Parameter(torch.ones(hidden_size)))
                self.register_parameter(f"ln_cell_bias{name}", nn.Parameter(torch.zeros(hidden_size)))

    def _direction_names(self) -> list[str]:
        dirs = ["", "_reverse"] if self.bidirectional else [""]
        return [f"_l{layer}{sfx}" for layer in range(self.num_layers) for sfx in dirs]

    def formats(self, in_frac: int) -> list[LSTMFormat]:
        q = self.quant
        return [
            LSTMFormat(
                in_frac=in_frac if layer == 0 else q.h_frac, h_frac=q.h_frac, h_bits=q.act_bits, cell_frac=q.cell_frac
            )
            for layer in range(self.num_layers)
        ]

    def _integer_direction(
        self, name: str, fmt: LSTMFormat, export: bool = False
    ) -> tuple[IntLSTMDirection, dict[str, Tensor]]:
        """The engine's integer weights for one direction, and the float surrogates for gradients.

        ``export``: weights as the integer checkpoint stores them (DenseShift: packed codes).
        """
        q = self.quant
        bias = getattr(self, f"bias_ih{name}") + getattr(self, f"bias_hh{name}")
        wq_ih, wq_hh = weight_quant(self, f"weight_ih{name}"), weight_quant(self, f"weight_hh{name}")
        surrogate = {"w_ih": wq_ih.fake, "w_hh": wq_hh.fake, "bias": bias}
        ln = {}
        if q.layer_norm:
            gate_eps = ln_eps_on_grid(GATE_FRAC)
            zeros = torch.zeros(4 * self.hidden_size, dtype=torch.int64, device=bias.device)
            for key in ("ih", "hh"):
                gamma = getattr(self, f"ln_{key}_weight{name}")
                surrogate[f"ln_{key}"] = gamma
                ln[f"ln_{key}"] = IntLayerNormParams(_q12(gamma), zeros, GATE_FRAC, GATE_FRAC, gate_eps)
            gamma, beta = getattr(self, f"ln_cell_weight{name}"), getattr(self, f"ln_cell_bias{name}")
            surrogate["ln_cell"] = (gamma, beta)
            ln["ln_cell"] = IntLayerNormParams(
                _q12(gamma), _q12(beta), q.cell_frac, GATE_FRAC, ln_eps_on_grid(q.cell_frac)
            )
        direction = IntLSTMDirection(
            w_ih=wq_ih.engine_weight() if export else wq_ih.q_int8,
            w_ih_m0=wq_ih.m0,
            w_ih_exp=wq_ih.exp,
            w_hh=wq_hh.engine_weight() if export else wq_hh.q_int8,
            w_hh_m0=wq_hh.m0,
            w_hh_exp=wq_hh.exp,
            bias_acc=None if q.layer_norm else bias_to_acc(bias, fmt.in_frac, wq_ih.scale),
            bias_q12=_q12(bias) if q.layer_norm else None,
            **ln,
        )
        return direction, surrogate

    def export(self, in_frac: int) -> IntLSTM:
        fmts = self.formats(in_frac)
        dirs_per_layer = 2 if self.bidirectional else 1
        names = self._direction_names()
        layers = [
            [
                self._integer_direction(names[layer * dirs_per_layer + d], fmts[layer], export=True)[0]
                for d in range(dirs_per_layer)
            ]
            for layer in range(self.num_layers)
        ]
        acts = lstm_activations(self.quant.pwl_segments, self.quant.cell_frac, self.quant.layer_norm)
        return IntLSTM(layers=layers, formats=fmts, acts=acts.cell)

    def forward(
        self, x: Tensor, hx=None, in_frac: int | None = None, lengths: Tensor | None = None, final_state: bool = True
    ):
        """x (B, T, I) -> (out (B, T, D*H), (h_n, c_n) (L*D, B, H)), like ``nn.LSTM(batch_first=True)``.

        In irnn mode ``in_frac`` is the input's grid (2^-in_frac). ``lengths`` (B,) masks padding: outputs past
        a sequence's length are zero and (h_n, c_n) are those of its last valid step. ``final_state=False``
        says the caller drops (h_n, c_n) (an encoder); with ``lengths`` the float modes then run the fused
        kernel on the padded batch (``_float_outputs``), several times faster on a CPU than a packed
        sequence, and return None for the state.
        """
        if not self.quant.integer_activations:
            return self._float_forward(x, hx, lengths, final_state)
        if in_frac is None:
            raise ValueError("QuantLSTM in irnn mode needs the input grid: forward(x, in_frac=...)")
        q = self.quant
        batch = x.shape[0]
        dirs_per_layer = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros(self.num_layers * dirs_per_layer, batch, self.hidden_size)
            hx = (zeros, zeros)
        acts = lstm_activations(q.pwl_segments, q.cell_frac, q.layer_norm)
        names = self._direction_names()
        h_n, c_n = [], []
        layer_in = x
        for layer, fmt in enumerate(self.formats(in_frac)):
            if layer > 0 and self.training and self.dropout > 0:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
            layer_in = snap(layer_in, fmt.in_frac)
            outs = []
            for d in range(dirs_per_layer):
                k = layer * dirs_per_layer + d
                direction, surrogate = self._integer_direction(names[k], fmt)
                xs = layer_in if d == 0 else reverse_padded(layer_in, lengths)
                y, h, c = self._run_direction(direction, surrogate, fmt, acts, xs, hx[0][k], hx[1][k], lengths)
                outs.append(y if d == 0 else reverse_padded(y, lengths))
                h_n.append(h)
                c_n.append(c)
            layer_in = torch.cat(outs, dim=-1)
        return layer_in, (torch.stack(h_n), torch.stack(c_n))

    def _float_forward(self, x: Tensor, hx, lengths: Tensor | None, final_state: bool = True):
        """nn.LSTM's own kernel (what ``nn.LSTM.forward`` calls) on the float or effective DenseShift weights."""
        weights = [
            float_weight(self, name) if name.startswith("weight_") else getattr(self, name)
            for name in self._flat_weights_names
        ]
        if hx is None:
            zeros = x.new_zeros(self.num_layers * (2 if self.bidirectional else 1), x.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        settings = (self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if lengths is None:
            out, h, c = _VF.lstm(x, hx, weights, *settings, True)  # batch_first
            return out, (h, c)
        if not final_state:
            return self._float_outputs(x, hx, weights, lengths), None
        # A packed sequence gives each sequence's own final state; on a CPU its kernel steps through time op
        # by op (each step's slice costs a full-size zero fill in backward), so only callers that keep the state use it.
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hx = tuple(state.index_select(1, packed.sorted_indices) for state in hx)
        data, h, c = _VF.lstm(packed.data, packed.batch_sizes, hx, weights, *settings)
        packed_out = packed._replace(data=data)
        out, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return out, (h.index_select(1, packed.unsorted_indices), c.index_select(1, packed.unsorted_indices))

    def _float_outputs(self, x: Tensor, hx, weights: list[Tensor], lengths: Tensor) -> Tensor:
        """The outputs of a padded batch, by the fused kernel one layer and direction at a time.

        The reverse direction reads each sequence reversed within its length (``reverse_padded``), so in both
        directions the padding comes after every valid step and never reaches a valid output; padded
        positions are set to zero, as ``pad_packed_sequence`` leaves them.
        """
        dirs = 2 if self.bidirectional else 1
        per_direction = len(weights) // (self.num_layers * dirs)  # w_ih, w_hh[, b_ih, b_hh]
        lengths = lengths.to(x.device)
        valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        layer_in = x
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                direction_weights = weights[k * per_direction : (k + 1) * per_direction]
                xs = layer_in if d == 0 else reverse_padded(layer_in, lengths)
                state = (hx[0][k : k + 1], hx[1][k : k + 1])
                y, _, _ = _VF.lstm(xs, state, direction_weights, self.bias, 1, 0.0, self.training, False, True)
                outs.append(y if d == 0 else reverse_padded(y, lengths))
            layer_in = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
        return layer_in.masked_fill(~valid, 0.0)

    def _run_direction(self, d, surrogate, fmt, acts, xs, h0, c0, lengths):
        batch, steps, _ = xs.shape
        hidden = self.hidden_size
        layer_norm = self.quant.layer_norm
        with torch.no_grad():
            acc = exact_matmul(to_grid(xs, fmt.in_frac).reshape(batch * steps, -1), d.w_ih)
            x_proj_int = input_projection_from_acc(d, fmt, acc).reshape(batch, steps, -1)
        if layer_norm:
            raw = F.linear(xs, surrogate["w_ih"]).reshape(batch, steps, 4, hidden)
            x_proj = F.layer_norm(raw, (hidden,), eps=LN_EPS).reshape(batch, steps, -1) * surrogate["ln_ih"]
        else:
            x_proj = F.linear(xs, surrogate["w_ih"], surrogate["bias"])
        h = snap(h0, fmt.h_frac)
        c = snap(c0, fmt.cell_frac)
        h_int, c_int = to_grid(h, fmt.h_frac), to_grid(c, fmt.cell_frac)
        requant_h = recurrent_requantizer(d, fmt)
        outputs = []
        for t in range(steps):
            with torch.no_grad():
                gates_int = recurrent_gates(d, requant_h, x_proj_int[:, t], h_int.to(torch.int8))
                h_new_int, c_new_int, mid = cell_step(gates_int, c_int, acts.cell, fmt, d.ln_cell)
            if layer_norm:
                raw = F.linear(h, surrogate["w_hh"]).reshape(batch, 4, hidden)
                h_proj = F.layer_norm(raw, (hidden,), eps=LN_EPS).reshape(batch, -1) * surrogate["ln_hh"]
                gates_f = x_proj[:, t] + h_proj + surrogate["bias"]
            else:
                gates_f = x_proj[:, t] + F.linear(h, surrogate["w_hh"])
            gates = ste(gates_f, gates_int.to(gates_f.dtype) * 2.0**-GATE_FRAC)
            if layer_norm:
                h_new, c_new = self._cell_surrogate(gates, c, c_new_int, h_new_int, mid, acts, fmt, surrogate)
            else:
                h_new, c_new = _IntegerCellFunction.apply(gates, c, gates_int, c_new_int, h_new_int, mid, acts, fmt)
            if lengths is not None:
                live = (t < lengths).unsqueeze(1)
                h_new, c_new = torch.where(live, h_new, h), torch.where(live, c_new, c)
                h_new_int, c_new_int = torch.where(live, h_new_int, h_int), torch.where(live, c_new_int, c_int)
            h, c, h_int, c_int = h_new, c_new, h_new_int, c_new_int
            outputs.append(h)
        return torch.stack(outputs, dim=1), h, c

    def _cell_surrogate(self, gates, c, c_new_int, h_new_int, mid, acts, fmt, surrogate):
        """LN-LSTM cell: a float graph whose every value is replaced by the exact integer one (STE)."""
        hidden = self.hidden_size
        act = ste(gates * _gate_slopes(mid, acts, hidden), _gate_values(mid, hidden, gates.dtype))
        i, f, g, o = act.chunk(4, dim=1)
        c_new = ste(f * c + i * g, c_new_int.to(gates.dtype) * 2.0**-fmt.cell_frac)
        gamma, beta = surrogate["ln_cell"]
        tanh_in = ste(
            F.layer_norm(c_new, (hidden,), gamma, beta, LN_EPS), mid["tanh_in"].to(gates.dtype) * 2.0**-GATE_FRAC
        )
        t = ste(tanh_in * acts.tanh_cell_grad.slope(mid["tanh_in"]), mid["t"].to(gates.dtype) * 2.0**-PWL_OUT_FRAC)
        h_new = ste(o * t, h_new_int.to(gates.dtype) * 2.0**-fmt.h_frac)
        return h_new, c_new


def _gate_values(mid: dict, hidden: int, dtype) -> Tensor:
    """Exact (i, f, g, o) activations, dequantized from Q0.15."""
    exact = torch.cat([mid["sig"][:, : 2 * hidden], mid["g"], mid["sig"][:, 3 * hidden :]], 1)
    return exact.to(dtype) * 2.0**-PWL_OUT_FRAC


def _gate_slopes(mid: dict, acts, hidden: int) -> Tensor:
    """PWL segment slopes at each gate pre-activation: d(activation)/d(pre-activation)."""
    gates_int = mid["gates"]
    slope = acts.sigmoid_grad.slope(gates_int)
    g_slope = acts.tanh_gate_grad.slope(gates_int[:, 2 * hidden : 3 * hidden])
    return torch.cat([slope[:, : 2 * hidden], g_slope, slope[:, 3 * hidden :]], 1)


class _IntegerCellFunction(torch.autograd.Function):
    """The LSTM cell without layer norm as one autograd node.

    Forward: the exact integer results (computed by ``app.engine.lstm.cell_step``), dequantized.
    Backward: the LSTM cell's derivative with every activation's derivative replaced by its PWL
    segment slope (and straight-through at each requantization), in ~15 float ops instead of an
    autograd graph of ~40 nodes per step.
    """

    @staticmethod
    def forward(ctx, gates, c_prev, gates_int, c_new_int, h_new_int, mid, acts, fmt):
        hidden = c_prev.shape[-1]
        dtype = gates.dtype
        act = _gate_values(mid, hidden, dtype)
        t = mid["t"].to(dtype) * 2.0**-PWL_OUT_FRAC
        slopes = _gate_slopes(mid, acts, hidden)
        t_slope = acts.tanh_cell_grad.slope(c_new_int)
        ctx.save_for_backward(act, t, slopes, t_slope, c_prev)
        h_new = h_new_int.to(dtype) * 2.0**-fmt.h_frac
        c_new = c_new_int.to(dtype) * 2.0**-fmt.cell_frac
        return h_new, c_new

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        act, t, slopes, t_slope, c_prev = ctx.saved_tensors
        i, f, g, o = act.chunk(4, dim=1)
        grad_c_total = grad_c + grad_h * o * t_slope
        grad_act = torch.cat([grad_c_total * g, grad_c_total * c_prev, grad_c_total * i, grad_h * t], 1)
        return grad_act * slopes, grad_c_total * f, None, None, None, None, None, None
