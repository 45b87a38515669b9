"""Checkpoint averaging (task.average_best, app/runs/averaging.py): the run keeps its N best epochs, tests the
mean of their weights, and resumes with them."""

import json
from pathlib import Path

import pytest
import torch

from app.runs.averaging import average_state_dicts
from app.runs.averaging import main as average_main
from tests.conftest import compose_config, eval_overrides, run_script
from train import train


def test_floating_tensors_are_averaged_and_the_others_come_from_the_best() -> None:
    best = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "frac": torch.tensor(7)}
    other = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "frac": torch.tensor(5)}
    averaged = average_state_dicts([best, other])
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0]))
    assert averaged["h"].dtype == torch.float16 and averaged["h"].item() == 1.5
    assert averaged["frac"].item() == 7  # an integer format is not averaged
    with pytest.raises(ValueError, match="different tensors"):
        average_state_dicts([best, {"w": other["w"]}])


def test_a_run_tests_the_mean_of_its_best_epochs_and_resumes_with_them(
    ptb_overrides: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    overrides = [*ptb_overrides, "task.max_epochs=3", "task.average_best=2", "task.module.optimizer.lr=5"]
    metrics = train(compose_config("train", overrides, run))
    top = sorted((run / "checkpoints" / "top").glob("*.ckpt"))
    assert len(top) == 2  # the third epoch's file was dropped (or never written)
    assert metrics["checkpoint"] == str(run / "checkpoints" / "averaged.ckpt")
    kept = [torch.load(path, weights_only=False) for path in top]
    assert sorted(metrics["averaged_epochs"]) == sorted(k["epoch"] for k in kept)
    averaged = torch.load(run / "checkpoints" / "averaged.ckpt", weights_only=False)
    for key, value in averaged["state_dict"].items():
        assert torch.allclose(value, (kept[0]["state_dict"][key] + kept[1]["state_dict"][key]) / 2), key
    assert averaged["hyper_parameters"] == kept[0]["hyper_parameters"] and averaged["task"] == "lm"

    # the test numbers are the averaged weights', not the best epoch's
    common = [*eval_overrides(ptb_overrides), "trainer.enable_progress_bar=false"]
    for name in ("averaged", "best"):
        result = run_script(
            "evaluate.py", f"ckpt={run / 'checkpoints' / f'{name}.ckpt'}", f"output_dir={tmp_path / name}", *common
        )
        assert result.returncode == 0, result.stderr[-2000:]
    evaluated = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("averaged", "best")}
    assert evaluated["averaged"]["test_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-5)
    assert evaluated["averaged"]["averaged_epochs"] == metrics["averaged_epochs"]
    assert evaluated["best"]["test_ppl"] != pytest.approx(metrics["test_ppl"], rel=1e-5)

    # resuming (in place) for one more epoch keeps ranking the epochs it had kept
    more = [*overrides, "task.max_epochs=4", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    resumed = train(compose_config("train", more))
    assert resumed["epochs"] == 4 and len(resumed["averaged_epochs"]) == 2
    assert len(list((run / "checkpoints" / "top").glob("*.ckpt"))) == 2


def test_a_negative_count_is_refused_in_one_line(ptb_overrides: list[str], tmp_path: Path) -> None:
    result = run_script("train.py", *ptb_overrides, "task.average_best=-1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: task.average_best=-1")


def test_a_run_resumed_with_a_smaller_average_best_keeps_its_best_epochs_and_goes_on(tmp_path):
    """Lightning restores the kept files but not a k-th best for the smaller count: plain ModelCheckpoint then
    fails with KeyError('') at the next epoch's end (seen resuming task.average_best 5 -> 3 after 3 epochs)."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from app.runs.averaging import BestEpochs

    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision))
    saved = BestEpochs(tmp_path, "val/wer", 5)
    saved.best_k_models = {
        str(tmp_path / f"top/epoch00{i}.ckpt"): torch.tensor(s) for i, s in enumerate([88.0, 85.0, 86.0])
    }
    state = saved.state_dict()

    plain = ModelCheckpoint(dirpath=tmp_path / "top", monitor="val/wer", save_top_k=2)
    plain.load_state_dict(state)
    with pytest.raises(KeyError):
        plain.check_monitor_top_k(trainer, torch.tensor(80.0))

    resumed = BestEpochs(tmp_path, "val/wer", 2)
    resumed.load_state_dict(state)
    assert [path.name for path in resumed.best_first()] == ["epoch001.ckpt", "epoch002.ckpt"]
    assert resumed.kth_best_model_path.endswith("epoch002.ckpt") and float(resumed.kth_value) == 86.0
    assert resumed.check_monitor_top_k(trainer, torch.tensor(85.5))  # better than the k-th: kept
    assert not resumed.check_monitor_top_k(trainer, torch.tensor(87.0))


def test_the_average_command_averages_whole_checkpoints_and_refuses_mixed_ones(
    ptb_overrides: list[str], tmp_path: Path
) -> None:
    """`python -m app.average`: the weights of whole checkpoints (e.g. the rounds of a staged recipe) averaged on
    the first one's other state; evaluate.py takes the result; a checkpoint of another model, quant format or
    vocabulary, a missing file, a repeated one or an output over an input is refused in one line."""
    for seed in (1, 2):  # two runs of one model: two weight sets
        train(compose_config("train", [*ptb_overrides, f"seed={seed}"], tmp_path / f"run{seed}"))
    first, second = (tmp_path / f"run{seed}" / "checkpoints" / "best.ckpt" for seed in (1, 2))
    a, b = (torch.load(path, weights_only=False) for path in (first, second))
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    out = tmp_path / "avg" / "mean.ckpt"
    result = run_script("-m", "app.average", str(first), str(second), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    averaged = torch.load(out, weights_only=False)
    for key, value in averaged["state_dict"].items():
        assert torch.allclose(value, (a["state_dict"][key] + b["state_dict"][key]) / 2), key
    assert averaged["epoch"] == a["epoch"] and averaged["averaged_from"] == [str(first), str(second)]
    evaluated = run_script(
        "evaluate.py", f"ckpt={out}", f"output_dir={tmp_path / 'eval'}", *eval_overrides(ptb_overrides)
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test_ppl"] > 1

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:  # main() as the command runs it, in this process
            average_main(list(args))
        (line,) = str(exit_info.value.code).splitlines()
        assert line.startswith("error: ")
        return line

    older = {k: v for k, v in b["hyper_parameters"]["quant_cfg"].items() if k != "decomposition"}
    torch.save({**b, "hyper_parameters": {**b["hyper_parameters"], "quant_cfg": older}}, tmp_path / "older.ckpt")
    average_main([str(first), str(tmp_path / "older.ckpt"), "--out", str(tmp_path / "older-mean.ckpt")])  # default
    irnn = {**b, "hyper_parameters": {**b["hyper_parameters"], "quant_cfg": {"mode": "irnn"}}}
    torch.save(irnn, tmp_path / "irnn.ckpt")
    assert "quant.mode='irnn'" in refused(str(first), str(tmp_path / "irnn.ckpt"), "--out", str(tmp_path / "x.ckpt"))
    model_cfg = {**b["hyper_parameters"]["model_cfg"], "name": "other"}
    torch.save({**b, "hyper_parameters": {**b["hyper_parameters"], "model_cfg": model_cfg}}, tmp_path / "model.ckpt")
    assert "has model=" in refused(str(first), str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "x.ckpt"))
    torch.save({**b, "hyper_parameters": {**b["hyper_parameters"], "vocab_sha256": "0" * 64}}, tmp_path / "voc.ckpt")
    assert "vocab_sha256" in refused(str(first), str(tmp_path / "voc.ckpt"), "--out", str(tmp_path / "x.ckpt"))
    assert "does not exist" in refused(str(first), str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x.ckpt"))
    assert "given twice" in refused(str(first), str(first), "--out", str(tmp_path / "x.ckpt"))
    assert "is one of the inputs" in refused(str(first), str(second), "--out", str(second))
    assert "two or more" in refused(str(first), "--out", str(tmp_path / "x.ckpt"))
    assert not (tmp_path / "x.ckpt").exists()
