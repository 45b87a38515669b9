"""train.py: a run trains, evaluates, writes its directory, resumes, and refuses bad input in one line."""

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from app.errors import UserInputError
from app.files import write_bytes_atomic
from app.runs.directory import AtomicCheckpointIO
from app.runs.metrics import METRIC_FIELDS
from tests.conftest import compose_config, run_script
from train import train


def test_fast_dev_run_trains_and_evaluates_through_train(ptb_overrides: list[str], tmp_path: Path) -> None:
    metrics = train(compose_config("train", [*ptb_overrides, "trainer.fast_dev_run=true"], tmp_path))
    assert set(metrics) == set(METRIC_FIELDS)
    assert math.isfinite(metrics["val_ppl"]) and math.isfinite(metrics["test_ppl"])
    assert metrics["val_tokens"] == metrics["test_tokens"] == 8 * 35  # one batch of each
    assert json.loads((tmp_path / "metrics.json").read_text())["test_ppl"] == metrics["test_ppl"]


def test_a_run_writes_checkpoints_config_epoch_log_tensorboard_and_metrics(trained_run: tuple[Path, dict]) -> None:
    run_dir, metrics = trained_run
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (run_dir / "config.yaml").read_text().count("hidden_dim: 32") == 1
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in epochs] == [0] and epochs[0]["quant"] == {}
    written = json.loads((run_dir / "metrics.json").read_text())
    assert list(written) == list(METRIC_FIELDS)
    assert written["command"].startswith("python train.py ") and "model=tiny" in written["command"]
    assert (written["task"], written["quant"], written["model"], written["data"]) == ("lm", "float", "tiny", "ptb")
    assert written["checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert written["val_tokens"] == written["test_tokens"] == 3 * 8 * 35
    assert written["epochs"] == 1 and written["params"] == 10_000 * 32 + 10_000 + 2 * 4 * 32 * (32 + 32 + 2)
    assert written["hardware"].endswith(f"{torch.get_num_threads()} threads")  # the CPU it ran on
    assert written["train_tokens_per_s"] > 0 and written["val_ppl"] == pytest.approx(metrics["val_ppl"])


def test_resume_continues_the_interrupted_run_in_its_own_directory(
    trained_run: tuple[Path, dict], ptb_overrides: list[str], tmp_path: Path
) -> None:
    run_dir = shutil.copytree(trained_run[0], tmp_path / "run")
    overrides = [*ptb_overrides, "task.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]["ElapsedTime"][
        "elapsed_s"
    ]
    assert 0 < before < trained_run[1]["wall_time_s"]  # the checkpoint was written before the test evaluation
    started = time.perf_counter()
    metrics = train(compose_config("train", overrides))  # no run dir given: resuming picks the checkpoint's
    assert metrics["epochs"] == 2
    assert metrics["wall_time_s"] > before  # the first invocation's time counts
    # ... and nothing more: testing best.ckpt (epoch 1, written in this invocation) does not add its time again
    assert metrics["wall_time_s"] <= before + time.perf_counter() - started
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_last_checkpoint_is_written_after_an_epoch_that_did_not_improve(
    ptb_overrides: list[str], tmp_path: Path
) -> None:
    # lr 0: epoch 1 repeats epoch 0's validation perplexity, so best.ckpt stays epoch 0's
    overrides = [*ptb_overrides, "task.max_epochs=2", "task.module.optimizer.lr=0"]
    train(compose_config("train", overrides, tmp_path))
    assert torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)["epoch"] == 0
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    )  # a resume goes on from here


def test_resume_with_another_model_config_names_the_differing_key_and_changes_nothing(
    trained_run: tuple[Path, dict], ptb_overrides: list[str], tmp_path: Path
) -> None:
    run_dir = shutil.copytree(trained_run[0], tmp_path / "run")
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    overrides = [
        *ptb_overrides,
        "model.lm.embed_dim=48",
        "model.lm.hidden_dim=48",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
    ]
    with pytest.raises(UserInputError, match=r"trained with model.lm.embed_dim=32, this run has model.lm.embed_dim=48"):
        train(compose_config("train", overrides))
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


def test_bad_input_on_the_command_line_fails_with_one_clear_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    cases = {
        f"ckpt_path={garbage}": f"ckpt_path={garbage} is not a readable checkpoint",
        f"paths.data_root={tmp_path / 'nowhere'}": f"data directory {tmp_path / 'nowhere' / 'ptb'} does not exist",
    }
    for override, message in cases.items():
        result = run_script("train.py", override, "model=tiny", f"paths.output_root={tmp_path / 'out'}")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def test_a_missing_checkpoint_is_reported_before_anything_runs(ptb_overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"ckpt_path=.*missing.ckpt does not exist"):
        train(compose_config("train", [*ptb_overrides, f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path))


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=False) == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no partial file left behind
    monkeypatch.undo()
    write_bytes_atomic(path, b"x")
    assert path.read_bytes() == b"x"
