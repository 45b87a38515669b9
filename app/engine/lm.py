"""Integer-only LSTM language model: token ids in, int32 logits out (softmax stays outside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.layers import IntEmbedding, IntLinear
from app.engine.lstm import IntLSTM


@dataclass
class IntegerLanguageModel:
    embedding: IntEmbedding
    lstm: IntLSTM
    decoder: IntLinear  # int32 logits at 2^-logit_frac
    vocab: list[str]

    @property
    def logit_frac(self) -> int:
        return self.decoder.out_frac

    def init_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        layers = len(self.lstm.layers) * len(self.lstm.layers[0])
        hidden = self.lstm.layers[0][0].hidden_size
        return (
            torch.zeros(layers, batch_size, hidden, dtype=torch.int8),
            torch.zeros(layers, batch_size, hidden, dtype=torch.int16),
        )

    def __call__(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """tokens (B, T) int64 -> (logits (B, T, V) int32 at 2^-logit_frac, (h int8, c int16) each (L, B, H))."""
        if tokens.is_floating_point():
            raise TypeError("IntegerLanguageModel takes integer token ids")
        x_q = self.embedding(tokens)
        y_q, state = self.lstm(x_q, state)
        return self.decoder(y_q).to(torch.int32), state
