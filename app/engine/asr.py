"""Integer-only attention encoder-decoder speech recognizer: int8 features in, int32 logits out.

The engine starts where the front end ends: log-mel / fbank features (float signal processing, like the
LM's tokenizer) rounded to int8 on the model's input grid 2^-feat_frac (``quantize_features``, host
side). From there every op is integer:

    conv front end   time convolutions (kernel 3, stride 2: 2x fewer frames each) = unfold + IntLinear, ReLU
    encoder          bidirectional IntLSTM layers; layers >= 1 add their input (saturating residual)
    decoder step     IntEmbedding of the previous token -> IntLSTM layers (residual as the encoder)
                     -> additive attention over the encoder output -> IntLinear on [query; context]
                     -> int32 logits at 2^-logit_frac
    CTC (optional)   IntLinear on the encoder output -> int32 logits per frame at 2^-logit_frac
The search (greedy argmax, or beam search ranking hypotheses by log-softmax of these logits) runs on the
host, as the LM's softmax does: ``app.decode.search``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.attention import IntAdditiveAttention
from app.engine.fixed_point import qrange, shift_round
from app.engine.layers import IntEmbedding, IntLinear, residual_add
from app.engine.lstm import IntLSTM

CONV_KERNEL = 3
CONV_STRIDE = 2


def conv_lengths(lengths: Tensor) -> Tensor:
    """Frames after one kernel-3 stride-2 convolution without padding (at least 1)."""
    return torch.div(lengths - CONV_KERNEL, CONV_STRIDE, rounding_mode="floor").clamp_min(0) + 1


def unfold_time(x: Tensor) -> Tensor:
    """(B, T, C) -> (B, T', 3C): the kernel-3 stride-2 windows over time, frames concatenated in order."""
    if x.shape[1] < CONV_KERNEL:  # an utterance shorter than one window: pad with zeros (one output frame)
        x = torch.cat([x, x.new_zeros(x.shape[0], CONV_KERNEL - x.shape[1], x.shape[2])], dim=1)
    windows = x.unfold(1, CONV_KERNEL, CONV_STRIDE)  # (B, T', C, k)
    return windows.transpose(2, 3).reshape(x.shape[0], windows.shape[1], -1)


def regrid(x: Tensor, from_frac: int, to_frac: int, bits: int) -> Tensor:
    """Move integers from the 2^-from_frac grid to 2^-to_frac (round half up), saturated to ``bits``."""
    lo, hi = qrange(bits)
    return shift_round(x.to(torch.int64), from_frac - to_frac).clamp(lo, hi)


@dataclass
class IntEncoderMemory:
    keys: Tensor  # (B, T, 2H) int8 at 2^-key_frac
    keys_proj: Tensor  # (B, T, A) int64 Q3.12
    mask: Tensor  # (B, T) bool
    lengths: Tensor  # (B,) int64

    def select(self, index: Tensor) -> IntEncoderMemory:
        return IntEncoderMemory(
            *(t.index_select(0, index) for t in (self.keys, self.keys_proj, self.mask, self.lengths))
        )


@dataclass
class IntegerASRModel:
    feat_frac: int  # input features: int8 at 2^-feat_frac
    conv: list[IntLinear]  # the time convolutions (weights over 3 stacked frames), ReLU after each
    encoder: list[IntLSTM]  # one bidirectional layer each
    encoder_fracs: list[int]  # output grid of each encoder layer (after its residual)
    residual: bool
    embedding: IntEmbedding
    decoder: list[IntLSTM]  # one unidirectional layer each
    decoder_fracs: list[int]
    attention: IntAdditiveAttention
    out_frac: int  # grid of [query; context] entering the output layer
    output: IntLinear  # int32 logits
    act_bits: int
    ctc: IntLinear | None = None  # CTC layer on the encoder output (joint CTC/attention decoding); None: absent

    def ctc_logits(self, memory: IntEncoderMemory) -> Tensor:
        """(B, T, V) int32 CTC logits at 2^-logit_frac of each encoder frame."""
        if self.ctc is None:
            raise ValueError("this integer model has no CTC layer (exported from a model with model.asr.ctc=false)")
        return self.ctc(memory.keys).to(torch.int32)

    @property
    def logit_frac(self) -> int:
        return self.output.out_frac

    def encode(self, feats_q: Tensor, lengths: Tensor) -> IntEncoderMemory:
        """feats (B, T, F) int8, lengths (B,) int64 -> the attention memory of the encoder output."""
        if feats_q.is_floating_point() or lengths.is_floating_point():
            raise TypeError("IntegerASRModel.encode takes int8 features (quantize_features) and int64 lengths")
        x = feats_q
        for conv in self.conv:
            x = conv(unfold_time(x)).clamp_min(0).to(torch.int8)
            lengths = conv_lengths(lengths)
        frac = self.conv[-1].out_frac
        for layer, (lstm, out_frac) in enumerate(zip(self.encoder, self.encoder_fracs)):
            y, _ = lstm(x, lengths=lengths)
            if self.residual and layer > 0:
                y = residual_add(y, lstm.formats[0].h_frac, x, frac, out_frac, self.act_bits)
            x, frac = y.to(torch.int8), out_frac
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return IntEncoderMemory(x, self.attention.project_keys(x), mask, lengths)

    def init_state(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        hidden = self.decoder[0].layers[0][0].hidden_size
        return [
            (
                torch.zeros(1, batch_size, hidden, dtype=torch.int8),
                torch.zeros(1, batch_size, hidden, dtype=torch.int16),
            )
            for _ in self.decoder
        ]

    def decode_step(
        self, tokens: Tensor, state: list[tuple[Tensor, Tensor]], memory: IntEncoderMemory
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Previous tokens (N,) int64 -> (logits (N, V) int32 at 2^-logit_frac, new state)."""
        x = self.embedding(tokens.unsqueeze(1))
        frac = self.embedding.out_frac
        new_state = []
        for layer, (lstm, out_frac) in enumerate(zip(self.decoder, self.decoder_fracs)):
            y, layer_state = lstm(x, state[layer])
            if self.residual and layer > 0:
                y = residual_add(y, lstm.formats[0].h_frac, x, frac, out_frac, self.act_bits)
            x, frac = y.to(torch.int8), out_frac
            new_state.append(layer_state)
        query = x[:, 0]
        context, _ = self.attention(query, memory.keys, memory.keys_proj, memory.mask)
        key_frac = self.encoder_fracs[-1]
        joined = torch.cat(
            [
                regrid(query, frac, self.out_frac, self.act_bits),
                regrid(context, key_frac, self.out_frac, self.act_bits),
            ],
            dim=-1,
        ).to(torch.int8)
        return self.output(joined).to(torch.int32), new_state

    @staticmethod
    def select_state(state: list[tuple[Tensor, Tensor]], index: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [(h.index_select(1, index), c.index_select(1, index)) for h, c in state]
