"""How a test set is decoded: one frozen value instead of a chain of positional arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # search.py imports this module: the annotation alone names it
    from app.decode.search import LanguageModelFusion


class DecodingRefused(ValueError):
    """A decoding setting out of range. ``str()`` names the DecodingOptions fields (`beam_size=0: ...`);
    ``under(keys)`` names them by the caller's config keys, e.g. ``{"ctc_weight": "task.module.decode_ctc_weight"}``
    (a field without a key keeps its own name), so one check serves callers with different keys."""

    def __init__(self, message: Callable[[Callable[[str], str]], str]) -> None:
        super().__init__(message(lambda field: field))
        self._message = message

    def under(self, keys: Mapping[str, str]) -> str:
        return self._message(lambda field: keys.get(field, field))


@dataclass(frozen=True)
class DecodingOptions:
    """The search's settings, shared by the QAT model and the integer engine (app/decode/search.py).

    Raises DecodingRefused (a ValueError) naming the field for a value out of range (`beam_size=0: must be ...`);
    a caller whose config keys differ from the field names names them with ``refused.under(keys)``.
    """

    beam_size: int = 5  # hypotheses kept per step; 1 with no CTC and no LM is greedy search (an argmax)
    length_norm: float = 1.0  # finished hypotheses ranked by log-prob / length^length_norm; 0: raw log-prob
    max_len_ratio: float = 1.0  # longest hypothesis in tokens per encoder frame (max_decode_length)
    ctc_weight: float = 0.0  # weight of the CTC prefix score in the beam (joint CTC/attention); 0: attention only;
    # 1: the CTC layer alone, best path (ctc_greedy_search; beam_size 1, no LM)
    lm: LanguageModelFusion | None = None  # shallow fusion with an integer LM, at lm.weight; None: no LM

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise DecodingRefused(problem)

    def _problem(self) -> Callable[[Callable[[str], str]], str] | None:
        """None, or the refusal's message as a function of how each field is named (``name("beam_size")``)."""
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int) or self.beam_size < 1:
            return lambda name: f"{name('beam_size')}={self.beam_size}: must be a whole number >= 1"
        if not self.length_norm >= 0.0:
            return lambda name: f"{name('length_norm')}={self.length_norm}: must be >= 0 (0: rank by log-prob alone)"
        if not self.max_len_ratio > 0.0:
            return lambda name: (
                f"{name('max_len_ratio')}={self.max_len_ratio}: must be above 0 (tokens per encoder frame)"
            )
        if not 0.0 <= self.ctc_weight <= 1.0:
            return lambda name: f"{name('ctc_weight')}={self.ctc_weight}: must be in [0, 1] (1: the CTC layer alone)"
        if self.ctc_weight == 1.0 and (self.beam_size != 1 or self.lm is not None):
            no_lm = " and no LM" if self.lm is not None else ""
            return lambda name: (
                f"{name('ctc_weight')}=1 decodes with the CTC layer alone, by its best path: set "
                f"{name('beam_size')}=1 (not {self.beam_size}){no_lm}, or a weight below 1 for a joint CTC/attention "
                "beam search"
            )
        return None

    @property
    def greedy(self) -> bool:
        """Plain argmax decoding, batched: a beam of one scored by attention alone.

        A beam of one with ``ctc_weight`` > 0 or an LM is a search too: each step keeps the best joint score, so
        CTC can stop a decoder that loops on a long utterance (it cannot emit more labels than the audio holds)."""
        return self.beam_size == 1 and self.ctc_weight == 0.0 and self.lm is None

    @property
    def ctc_only(self) -> bool:
        """Best-path CTC decoding (``ctc_weight`` 1): the CTC layer's argmax per frame, no decoder, no search."""
        return self.ctc_weight == 1.0

    def attention_greedy(self) -> DecodingOptions:
        """The same settings as plain greedy search (attention only, no LM): what validation decodes with."""
        return dataclasses.replace(self, beam_size=1, ctc_weight=0.0, lm=None)

    def to_info(self) -> dict[str, Any]:
        """The settings an integer checkpoint records (``info["decoding"]``): all but the LM."""
        return {
            "beam_size": self.beam_size,
            "length_norm": self.length_norm,
            "max_len_ratio": self.max_len_ratio,
            "ctc_weight": self.ctc_weight,
        }
