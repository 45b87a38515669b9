"""Word-level LSTM language model (Zaremba et al. 2014; weight tying: Press & Wolf 2017, Inan et al. 2017).

Plain `nn.Module`, free of training glue: the Lightning task (`app/tasks/lm.py`) drives it. Its layers
are the quantizable drop-ins of `app/quant` (subclasses of nn.Embedding / nn.LSTM / nn.Linear with the
same parameters): `quant.mode=float` is the plain float model, `irnn` trains it with QAT, `denseshift`
trains DenseShift weights (float activations), `irnn_denseshift` both; `export_integer()` turns an
integer-activation model into the integer-only engine model.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from app.engine.lm import IntegerLanguageModel
from app.quant.config import QuantConfig
from app.quant.denseshift import set_decomposition, shift_weights
from app.quant.layers import QuantEmbedding, QuantLinear
from app.quant.lstm import QuantLSTM

LSTMState = tuple[Tensor, Tensor]  # h, c: each (num_layers, B, hidden_dim) float


class LSTMLanguageModel(nn.Module):
    """Embedding -> dropout -> stacked LSTM -> dropout -> linear decoder (tied to the embedding)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        tie_weights: bool,
        quant: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if tie_weights and embed_dim != hidden_dim:
            raise ValueError(
                f"tie_weights=true needs embed_dim == hidden_dim, got embed_dim={embed_dim}, "
                f"hidden_dim={hidden_dim}: set them equal or set tie_weights=false"
            )
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.tie_weights = tie_weights
        self.quant = QuantConfig.from_dict(quant)
        self.embedding = QuantEmbedding(vocab_size, embed_dim, quant=self.quant)
        self.drop = nn.Dropout(dropout)
        # The LSTM applies `dropout` between layers only; self.drop covers its input and output.
        self.lstm = QuantLSTM(
            embed_dim, hidden_dim, num_layers, dropout=dropout if num_layers > 1 else 0.0, quant=self.quant
        )
        self.decoder = QuantLinear(hidden_dim, vocab_size, quant=self.quant, exact_in_training=False)
        if self.quant.denseshift:
            set_decomposition(self, self.quant.decomposition)  # the layers build the decomposed weights
        if tie_weights and self.quant.denseshift:
            self.decoder.shift_weight = self.embedding.shift_weight
        elif tie_weights:
            self.decoder.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self, init_range: float = 0.1) -> None:
        # Zaremba et al. 2014 initialise every weight uniformly in [-0.1, 0.1] for the small model;
        # a DenseShift weight is derived from such a float weight (quant.init).
        shifted = shift_weights(self)
        latents = {id(param) for module in shifted.values() for param in module.parameters()}
        for param in self.parameters():
            if id(param) not in latents:
                nn.init.uniform_(param, -init_range, init_range)
        for module in shifted.values():
            weight = module.alpha.new_empty(module.weight_shape).uniform_(-init_range, init_range)
            module.init_from_float(weight, self.quant.init)
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LSTMState:
        """Zero state: h and c, each (num_layers, batch_size, hidden_dim) float32."""
        shape = (self.num_layers, batch_size, self.hidden_dim)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """tokens: (B, T) int64 -> logits (B, T, vocab_size) float, new state (h, c) each (L, B, H).

        `state=None` starts from zeros. The returned state is not detached: truncated BPTT
        detaches it between batches (the task's job).
        """
        embedded = self.drop(self.embedding(tokens))
        if not self.quant.integer_activations:
            output, new_state = self.lstm(embedded, state)
            return self.decoder(self.drop(output)), new_state
        # irnn: every activation lives on a power-of-two grid that the next layer must know.
        output, new_state = self.lstm(embedded, state, in_frac=self.embedding.out_frac)
        return self.decoder(self.drop(output), in_frac=self.quant.h_frac), new_state

    def export_integer(self, vocab: list[str]) -> IntegerLanguageModel:
        """The integer-only engine model computing exactly what this model computes in eval mode."""
        if not self.quant.integer_activations:
            raise ValueError(
                f"quant.mode={self.quant.mode} has float activations: only integer-activation models "
                "(quant=irnn, irnn_denseshift) export to the integer engine"
            )
        embedding = self.embedding.export()
        decoder = self.decoder.export(in_frac=self.quant.h_frac)
        if self.tie_weights:  # one weight matrix (int8 or DenseShift codes), stored once
            decoder.w_q, decoder.m0, decoder.exp = embedding.w_q, embedding.m0, embedding.exp
            decoder.shift_codes = embedding.shift_codes
        return IntegerLanguageModel(
            embedding=embedding,
            lstm=self.lstm.export(in_frac=self.embedding.out_frac),
            decoder=decoder,
            vocab=list(vocab),
        )


def build_lm(model_cfg: Mapping[str, Any], quant_cfg: Mapping[str, Any] | None, vocab_size: int) -> LSTMLanguageModel:
    """Build the LM from a `model` preset (`conf/model/*.yaml`; its `lm:` section) and the `quant` config."""
    if "lm" not in model_cfg:
        raise ValueError(
            f"model={model_cfg.get('name')} has no lm section: choose a language-model preset (tiny, small, medium, large)"
        )
    lm = model_cfg["lm"]
    return LSTMLanguageModel(
        vocab_size=vocab_size,
        embed_dim=lm["embed_dim"],
        hidden_dim=lm["hidden_dim"],
        num_layers=lm["num_layers"],
        dropout=lm["dropout"],
        tie_weights=lm["tie_weights"],
        quant=quant_cfg,
    )
