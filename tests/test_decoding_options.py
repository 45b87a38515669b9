"""DecodingOptions (app/decode/options.py): one frozen value for the search, refused in one line when out of range."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from app.decode.options import DecodingOptions, DecodingRefused
from app.errors import UserInputError
from app.tasks.asr import SpeechRecognitionTask


def test_decoding_options_default_to_the_task_recipe_and_record_all_but_the_lm() -> None:
    options = DecodingOptions()
    assert (options.beam_size, options.length_norm, options.max_len_ratio, options.ctc_weight) == (5, 1.0, 1.0, 0.0)
    assert options.to_info() == {"beam_size": 5, "length_norm": 1.0, "max_len_ratio": 1.0, "ctc_weight": 0.0}
    assert DecodingOptions(**options.to_info()) == options  # an integer checkpoint's `decoding` reads back
    greedy = dataclasses.replace(options, ctc_weight=0.3, beam_size=3).attention_greedy()
    assert greedy.greedy and not options.greedy and (greedy.beam_size, greedy.ctc_weight, greedy.lm) == (1, 0.0, None)
    assert greedy.length_norm == options.length_norm and greedy.max_len_ratio == options.max_len_ratio
    # a beam of one that CTC or an LM scores is a search, not the argmax of the attention logits
    assert not DecodingOptions(beam_size=1, ctc_weight=0.3).greedy
    # ctc_weight 1: the CTC layer's best path, neither greedy search nor a beam
    ctc = DecodingOptions(beam_size=1, ctc_weight=1.0)
    assert ctc.ctc_only and not ctc.greedy and not DecodingOptions(beam_size=1, ctc_weight=0.3).ctc_only
    assert ctc.attention_greedy().greedy and not ctc.attention_greedy().ctc_only
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beam_size = 3


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beam_size": 0}, "beam_size=0: must be a whole number >= 1"),
        ({"beam_size": 2.5}, "beam_size=2.5: must be a whole number >= 1"),
        ({"length_norm": -0.5}, "length_norm=-0.5: must be >= 0"),
        ({"max_len_ratio": 0.0}, "max_len_ratio=0.0: must be above 0"),
        ({"ctc_weight": 1.5}, "ctc_weight=1.5: must be in [0, 1] (1: the CTC layer alone)"),
        ({"ctc_weight": -0.1}, "ctc_weight=-0.1: must be in [0, 1]"),
        (
            {"ctc_weight": 1.0, "beam_size": 10},
            "ctc_weight=1 decodes with the CTC layer alone, by its best path: set beam_size=1 (not 10)",
        ),
    ],
)
def test_decoding_options_refuse_a_value_out_of_range_naming_it(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        DecodingOptions(**settings)
    assert str(refused.value).startswith(message)


def test_a_refusal_names_the_settings_by_the_callers_keys_where_it_has_them() -> None:
    with pytest.raises(DecodingRefused) as refused:
        DecodingOptions(beam_size=10, ctc_weight=1.0)
    assert str(refused.value).startswith(
        "ctc_weight=1 decodes with the CTC layer alone, by its best path: set beam_size=1"
    )
    named = refused.value.under({"ctc_weight": "search.ctc", "beam_size": "search.beam"})
    assert named.startswith(
        "search.ctc=1 decodes with the CTC layer alone, by its best path: set search.beam=1 (not 10)"
    )
    with pytest.raises(DecodingRefused) as refused:
        DecodingOptions(length_norm=-1.0)
    assert refused.value.under({"ctc_weight": "search.ctc"}).startswith("length_norm=-1.0: must be >= 0")


def _task_arguments() -> dict:
    """SpeechRecognitionTask's arguments for model=tiny in float, as train.py passes them."""
    return {
        "model_cfg": OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "tiny.yaml")),
        "quant_cfg": {"name": "float"},
        "vocab_size": 10,
        "feature_dim": 8,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "lr_scheduler": {"name": "none"},
        "grad_clip_norm": None,
    }


def test_the_asr_task_refuses_its_decoding_settings_under_their_config_keys() -> None:
    common = _task_arguments()
    with pytest.raises(UserInputError, match=r"^task\.module\.beam_size=0: must be a whole number >= 1$"):
        SpeechRecognitionTask(**common, beam_size=0)
    with pytest.raises(UserInputError, match=r"^task\.module\.length_norm=-1: must be >= 0"):
        SpeechRecognitionTask(**common, length_norm=-1)
    with pytest.raises(UserInputError, match=r"^task\.module\.max_len_ratio=0: must be above 0"):
        SpeechRecognitionTask(**common, max_len_ratio=0)
    with pytest.raises(UserInputError, match=r"^task\.module\.decode_ctc_weight=1 decodes with the CTC layer alone"):
        SpeechRecognitionTask(**common, beam_size=10, decode_ctc_weight=1.0)


def test_the_asr_task_validates_greedily_unless_told_and_refuses_a_bad_validation_search() -> None:
    common = _task_arguments()
    tiny = common["model_cfg"]
    default = SpeechRecognitionTask(**common, beam_size=10, decode_ctc_weight=0.3)
    assert default.validation_decoding.greedy and default.validation_decoding == default.decoding.attention_greedy()
    joint = SpeechRecognitionTask(
        **common, beam_size=10, decode_ctc_weight=0.3, val_beam_size=4, val_decode_ctc_weight=0.3
    )
    assert (joint.validation_decoding.beam_size, joint.validation_decoding.ctc_weight) == (4, 0.3)
    assert joint.validation_decoding.lm is None and (joint.decoding.beam_size, joint.decoding.ctc_weight) == (10, 0.3)
    with pytest.raises(UserInputError, match=r"^task\.module\.val_beam_size=0: must be a whole number >= 1$"):
        SpeechRecognitionTask(**common, val_beam_size=0)
    with pytest.raises(
        UserInputError, match=r"^task\.module\.val_decode_ctc_weight=1 decodes .* set task\.module\.val_beam_size=1 "
    ):
        SpeechRecognitionTask(**common, val_beam_size=10, val_decode_ctc_weight=1.0)
    with pytest.raises(UserInputError, match=r"^task\.module\.val_decode_ctc_weight=0\.3 needs a CTC layer"):
        SpeechRecognitionTask(
            **{**common, "model_cfg": {**tiny, "asr": {**tiny["asr"], "ctc": False}}},
            ctc_weight=0.0,
            val_decode_ctc_weight=0.3,
        )
