"""evaluate.py: re-evaluating a checkpoint gives the same numbers and the same metrics.json fields."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import UserInputError
from app.runs.metrics import METRIC_FIELDS
from evaluate import evaluate
from tests.conftest import compose_config, eval_overrides


def test_evaluate_reproduces_the_runs_perplexity_and_writes_the_same_fields(
    trained_run: tuple[Path, dict], ptb_overrides: list[str], tmp_path: Path
) -> None:
    run_dir, train_metrics = trained_run
    best = run_dir / "checkpoints" / "best.ckpt"
    metrics = evaluate(compose_config("evaluate", [*eval_overrides(ptb_overrides), f"ckpt={best}"], tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written) == list(METRIC_FIELDS) and written["command"].startswith("python evaluate.py ")
    assert (written["task"], written["quant"], written["model"], written["data"]) == ("lm", "float", "tiny", "ptb")
    assert metrics["val_ppl"] == pytest.approx(train_metrics["val_ppl"], rel=1e-5)
    assert metrics["test_ppl"] == pytest.approx(train_metrics["test_ppl"], rel=1e-5)
    assert metrics["params"] == train_metrics["params"] and metrics["epochs"] == 1


def test_evaluate_refuses_data_with_another_vocabulary(
    trained_run: tuple[Path, dict], ptb_overrides: list[str], toy_corpus: Callable[..., Path], tmp_path: Path
) -> None:
    best = trained_run[0] / "checkpoints" / "best.ckpt"
    overrides = [
        *eval_overrides(ptb_overrides),
        f"ckpt={best}",
        f"data.source={toy_corpus()}",
        "data.sha256=null",
        "data.expected_tokens=null",
        "data.expected_vocab_size=null",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    with pytest.raises(UserInputError, match="trained with another vocabulary than data=ptb has"):
        evaluate(compose_config("evaluate", overrides, tmp_path))


def test_evaluate_without_a_checkpoint_says_how_to_pass_one(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"pass ckpt=<run>/checkpoints/best.ckpt"):
        evaluate(compose_config("evaluate", [], tmp_path))


def test_evaluate_refuses_several_dithers_for_text_data(
    trained_run: tuple[Path, dict], ptb_overrides: list[str], tmp_path: Path
) -> None:
    best = trained_run[0] / "checkpoints" / "best.ckpt"
    with pytest.raises(UserInputError, match="data=ptb has none: drop eval_seeds"):
        evaluate(
            compose_config("evaluate", [*eval_overrides(ptb_overrides), f"ckpt={best}", "eval_seeds=[1,2]"], tmp_path)
        )


def test_two_evaluations_started_in_the_same_second_get_their_own_folders() -> None:
    """evaluate.py's run folder is named to the microsecond: two runs launched together (side by side, by a script)
    once shared a folder named to the second, and the later one overwrote the other's metrics.json."""
    first, second = (compose_config("evaluate", ["ckpt=x"]).hydra.run.dir for _ in range(2))
    assert first != second
    assert first.rsplit("/", 2)[-2:-1] == second.rsplit("/", 2)[-2:-1]  # the same evals/<data> parent
