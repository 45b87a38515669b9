"""Attention encoder-decoder speech recognizer (Bahdanau et al. 2016 / Espresso; iRNN paper's ASR model).

    features (B, T, F) -> conv front end: ``conv_layers`` time convolutions, kernel 3, stride 2 (2 layers:
                          4x fewer frames, 40 ms per encoder frame; 3 layers: 8x, 80 ms), ReLU
      -> encoder: bidirectional LSTM layers, residual connections from the second layer on
      -> decoder: embedding of the previous token -> LSTM layers (residual as the encoder)
         -> additive attention (query: decoder output, keys: encoder output)
         -> output layer on [decoder output; context] -> logits
      (+ optional CTC layer on the encoder output, a training loss only)

Every layer is a quantizable drop-in of ``app/quant`` (QuantLinear, QuantLSTM, QuantEmbedding,
QuantAdditiveAttention), so ``quant=irnn`` trains the integer model (``export_integer`` ->
``app.engine.asr.IntegerASRModel``) and ``quant=denseshift`` its shift-weight variant. With integer
activations every tensor between layers lives on a power-of-two grid (``*_frac``) which the next layer
is told; the forward values are the integer engine's, bit for bit.
Training runs the decoder on the whole teacher-forced sequence at once (no input feeding, so the
decoder LSTM does not wait for the attention); decoding runs the same layers one step at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.asr import IntegerASRModel, conv_lengths, unfold_time
from app.quant.attention import AttentionMemory, QuantAdditiveAttention
from app.quant.config import QuantConfig
from app.quant.denseshift import set_decomposition, shift_weights
from app.quant.layers import LOGIT_FRAC, QuantEmbedding, QuantLinear
from app.quant.lstm import QuantLSTM
from app.quant.quantizers import PowerOfTwoObserver, snap

DecoderState = list[tuple[Tensor, Tensor]]  # per decoder layer: h, c each (1, N, H)


@dataclass
class Encoded:
    output: Tensor  # (B, T', 2H)
    lengths: Tensor  # (B,)
    memory: AttentionMemory


def select_memory(memory: AttentionMemory, index: Tensor) -> AttentionMemory:
    """The attention memory of the utterances ``index`` (repeats allowed: beam search)."""
    pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
    return AttentionMemory(
        keys=pick(memory.keys),
        key_frac=memory.key_frac,
        mask=pick(memory.mask),
        keys_proj=pick(memory.keys_proj),
        engine=memory.engine,
        keys_int=pick(memory.keys_int),
        keys_proj_int=pick(memory.keys_proj_int),
    )


class AttentionASR(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        conv_channels: int,
        encoder_hidden: int,
        encoder_layers: int,
        decoder_embed: int,
        decoder_hidden: int,
        decoder_layers: int,
        attention_dim: int,
        dropout: float,
        residual: bool,
        ctc: bool,
        quant: Mapping[str, Any] | None = None,
        conv_layers: int = 2,
    ) -> None:
        super().__init__()
        self.quant = q = QuantConfig.from_dict(quant)
        self.vocab_size = vocab_size
        self.residual = residual
        self.feat_observer = (
            PowerOfTwoObserver(8, q.observer_momentum, q.observer_quantile) if q.integer_activations else None
        )
        hidden = dict(out_frac=None, out_bits=q.act_bits)
        if conv_layers < 1:
            raise ValueError(f"model.asr.conv_layers={conv_layers}: the front end needs at least one convolution")
        self.conv = nn.ModuleList(
            QuantLinear(3 * (feature_dim if i == 0 else conv_channels), conv_channels, quant=q, **hidden)
            for i in range(conv_layers)
        )
        self.encoder = nn.ModuleList(
            QuantLSTM(conv_channels if i == 0 else 2 * encoder_hidden, encoder_hidden, bidirectional=True, quant=q)
            for i in range(encoder_layers)
        )
        self.embedding = QuantEmbedding(vocab_size, decoder_embed, quant=q)
        self.decoder = nn.ModuleList(
            QuantLSTM(decoder_embed if i == 0 else decoder_hidden, decoder_hidden, quant=q)
            for i in range(decoder_layers)
        )
        self.attention = QuantAdditiveAttention(decoder_hidden, 2 * encoder_hidden, attention_dim, quant=q)
        self.output = QuantLinear(
            decoder_hidden + 2 * encoder_hidden, vocab_size, quant=q, out_frac=LOGIT_FRAC, exact_in_training=False
        )
        self.ctc = QuantLinear(2 * encoder_hidden, vocab_size, quant=q, exact_in_training=False) if ctc else None
        self.drop = nn.Dropout(dropout)
        if q.denseshift:
            set_decomposition(self, q.decomposition)  # the layers build the decomposed weights
        self._init_weights()

    # ---- grids (integer activations) -------------------------------------------------------------

    def _residual_frac(self) -> int:
        """Grid of a residual sum: one integer bit more than h (LSTM outputs are in (-1, 1))."""
        return self.quant.h_frac - 1

    def _layer_fracs(self, layers: int) -> list[int]:
        return [self._residual_frac() if self.residual and i > 0 else self.quant.h_frac for i in range(layers)]

    @property
    def key_frac(self) -> int:
        return self._layer_fracs(len(self.encoder))[-1]

    @property
    def query_frac(self) -> int:
        return self._layer_fracs(len(self.decoder))[-1]

    @property
    def out_frac(self) -> int:
        return min(self.key_frac, self.query_frac)

    # ---- model -----------------------------------------------------------------------------------

    def _init_weights(self) -> None:
        shifted = shift_weights(self)
        for module in shifted.values():
            module.init_from_float(module.alpha.new_empty(module.weight_shape).uniform_(-0.1, 0.1), self.quant.init)
        for name, param in self.named_parameters():
            if name.endswith("bias") and "ln_" not in name:
                nn.init.zeros_(param)
        for lstm in [*self.encoder, *self.decoder]:  # forget-gate bias 1 (Jozefowicz et al. 2015)
            for name in lstm._flat_weights_names:
                if name.startswith("bias_ih"):
                    bias = getattr(lstm, name)
                    with torch.no_grad():
                        bias[lstm.hidden_size : 2 * lstm.hidden_size] = 1.0

    def _stack(
        self, layers: nn.ModuleList, x: Tensor, frac: int | None, lengths: Tensor | None, state=None, final_state=True
    ):
        """Run LSTM layers with residuals; returns (output, its grid, new state per layer: None without final_state)."""
        integer = self.quant.integer_activations
        fracs = self._layer_fracs(len(layers))
        new_state = []
        for i, lstm in enumerate(layers):
            if i > 0:
                x = self.drop(x)
            hx = None if state is None else state[i]
            if integer:
                y, layer_state = lstm(x, hx, in_frac=frac, lengths=lengths, final_state=final_state)
            else:
                y, layer_state = lstm(x, hx, lengths=lengths, final_state=final_state)
            if self.residual and i > 0:
                y = y + x
                if integer:
                    y = snap(y, fracs[i], self.quant.act_bits)
            x, frac = y, fracs[i]
            new_state.append(layer_state)
        return x, frac, new_state

    def encode(self, feats: Tensor, lengths: Tensor) -> Encoded:
        """feats (B, T, F) float, lengths (B,) -> encoder output and its attention memory."""
        integer = self.quant.integer_activations
        x, frac = feats, None
        if integer:
            self.feat_observer.observe(feats)
            frac = self.feat_frac
            x = snap(feats, frac, 8)
        for conv in self.conv:
            x = F.relu(conv(unfold_time(x), in_frac=frac) if integer else conv(unfold_time(x)))
            frac = conv.out_frac if integer else None
            lengths = conv_lengths(lengths)
        x, frac, _ = self._stack(self.encoder, x, frac, lengths, final_state=False)  # only the outputs are used
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        memory = self.attention.precompute(x, frac, mask)
        return Encoded(x, lengths, memory)

    @property
    def feat_frac(self) -> int:
        return self.feat_observer.frac

    def _decoder_out(self, tokens: Tensor, memory: AttentionMemory, state: DecoderState | None):
        integer = self.quant.integer_activations
        x = self.drop(self.embedding(tokens))
        x, frac, new_state = self._stack(self.decoder, x, self.embedding.out_frac if integer else None, None, state)
        context, _ = self.attention(x, memory, frac) if integer else self.attention(x, memory)
        if integer:
            joined = torch.cat(
                [snap(x, self.out_frac, self.quant.act_bits), snap(context, self.out_frac, self.quant.act_bits)], -1
            )
            return self.output(self.drop(joined), in_frac=self.out_frac), new_state
        return self.output(self.drop(torch.cat([x, context], -1))), new_state

    def forward(self, feats: Tensor, feat_lens: Tensor, tokens_in: Tensor) -> tuple[Tensor, Encoded]:
        """Teacher forcing: tokens_in (B, U) (<bos> y_1 ... y_{U-1}) -> logits (B, U, V), encoder output."""
        encoded = self.encode(feats, feat_lens)
        return self.decode_sequence(tokens_in, encoded), encoded

    def decode_sequence(self, tokens_in: Tensor, encoded: Encoded) -> Tensor:
        """Logits (B, U, V) of the decoder fed tokens_in (B, U) in one pass, attending to `encoded`."""
        logits, _ = self._decoder_out(tokens_in, encoded.memory, None)
        return logits

    def ctc_logits(self, encoded: Encoded) -> Tensor:
        if self.ctc is None:
            raise ValueError("this model has no CTC layer (model.asr.ctc=false)")
        if self.quant.integer_activations:
            return self.ctc(encoded.output, in_frac=encoded.memory.key_frac)
        return self.ctc(encoded.output)

    def init_state(self, batch_size: int) -> DecoderState | None:
        return None

    def decode_step(
        self, tokens: Tensor, state: DecoderState | None, memory: AttentionMemory
    ) -> tuple[Tensor, DecoderState]:
        """Previous tokens (N,) -> (logits (N, V), new state); ``state=None`` starts from zeros."""
        logits, new_state = self._decoder_out(tokens.unsqueeze(1), memory, state)
        return logits[:, 0], new_state

    @staticmethod
    def select_state(state: DecoderState | None, index: Tensor) -> DecoderState | None:
        if state is None:
            return None
        return [(h.index_select(1, index), c.index_select(1, index)) for h, c in state]

    def export_integer(self) -> IntegerASRModel:
        """The integer-only engine model computing exactly what this model computes in eval mode."""
        if not self.quant.integer_activations:
            raise ValueError(
                f"quant.mode={self.quant.mode} has float activations: only integer-activation models "
                "(quant=irnn, irnn_denseshift) export to the integer engine"
            )
        conv, frac = [], self.feat_frac
        for layer in self.conv:
            conv.append(layer.export(frac))
            frac = layer.out_frac
        encoder, enc_fracs = [], self._layer_fracs(len(self.encoder))
        for i, lstm in enumerate(self.encoder):
            encoder.append(lstm.export(frac))
            frac = enc_fracs[i]
        decoder, dec_fracs, frac = [], self._layer_fracs(len(self.decoder)), self.embedding.out_frac
        for i, lstm in enumerate(self.decoder):
            decoder.append(lstm.export(frac))
            frac = dec_fracs[i]
        return IntegerASRModel(
            feat_frac=self.feat_frac,
            conv=conv,
            encoder=encoder,
            encoder_fracs=enc_fracs,
            residual=self.residual,
            embedding=self.embedding.export(),
            decoder=decoder,
            decoder_fracs=dec_fracs,
            attention=self.attention.export(self.query_frac, self.key_frac),
            out_frac=self.out_frac,
            output=self.output.export(self.out_frac),
            act_bits=self.quant.act_bits,
            ctc=None if self.ctc is None else self.ctc.export(self.key_frac),
        )


def build_asr(
    model_cfg: Mapping[str, Any], quant_cfg: Mapping[str, Any] | None, feature_dim: int, vocab_size: int
) -> AttentionASR:
    """Build from a ``model`` preset's ``asr:`` section (conf/model/*.yaml) and the ``quant`` config."""
    if "asr" not in model_cfg:
        raise ValueError(
            f"model={model_cfg.get('name')} has no asr section: choose an ASR preset (tiny, small, espresso_wsj)"
        )
    asr = dict(model_cfg["asr"])
    return AttentionASR(feature_dim=feature_dim, vocab_size=vocab_size, quant=quant_cfg, **asr)
