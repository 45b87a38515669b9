"""The learning-rate schedules of task.module.lr_scheduler (app/tasks/optim.py), warm restarts included."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from app.errors import UserInputError
from app.tasks.optim import check_optimization, configure_optimization
from tests.conftest import compose_config
from tests.test_train_asr import _overrides
from train import train


def _learning_rates(cfg, epochs: int) -> list[float]:
    """The lr of each of `epochs` epochs under cfg's task.module optimizer and schedule, stepped per epoch."""
    module = OmegaConf.to_container(cfg.task.module, resolve=True)
    check_optimization(module["optimizer"], module["lr_scheduler"])
    built = configure_optimization(torch.nn.Linear(2, 2), module["optimizer"], module["lr_scheduler"], "val/wer")
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_one_command_real_voice_recipe_trains_at_the_two_stages_learning_rates():
    stage_1 = compose_config("train", ["experiment=asr_voices_small"])
    stage_2 = compose_config("train", ["experiment=asr_voices_continue"])
    both = compose_config("train", ["experiment=asr_voices"])
    assert both.task.max_epochs == stage_1.task.max_epochs + stage_2.task.max_epochs == 21
    expected = _learning_rates(stage_1, stage_1.task.max_epochs) + _learning_rates(stage_2, stage_2.task.max_epochs)
    assert _learning_rates(both, both.task.max_epochs) == pytest.approx(expected, rel=1e-12)
    assert expected[6] == pytest.approx(0.002 * 0.6**3) and expected[7] == 0.0015  # stage 1 ends, the warm restart
    assert (both.data.name, both.model.name, both.task.average_best) == ("asr_voices", "small", 5)


def test_a_warm_restart_sets_the_lr_of_a_real_training_run_at_its_epoch(asr_root, tmp_path):
    restart = "task.module.lr_scheduler.restarts=[{epoch: 1, lr: 0.0005, hold_epochs: 1, gamma: 0.5}]"
    extra = ("quant=float", "trainer.max_epochs=3", "trainer.limit_train_batches=1", restart)
    train(compose_config("train", [o for o in _overrides(asr_root, *extra) if o != "trainer.max_epochs=1"], tmp_path))
    epochs = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in epochs] == pytest.approx([0.002, 0.0005, 0.00025])


DECAY = {"name": "exponential", "hold_epochs": 1, "gamma": 0.5}
RESTART = {"epoch": 2, "lr": 0.1, "hold_epochs": 1, "gamma": 0.5}


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "plateau", "factor": 0.5, "patience": 1, "restarts": [{"epoch": 1}]}, "needs name=exponential"),
        ({**DECAY, "restarts": [{"epoch": 2, "lr": 0.1}]}, "must have exactly the keys"),
        ({**DECAY, "restarts": [{**RESTART, "epoch": 0}]}, "an epoch after"),
        ({**DECAY, "restarts": [{**RESTART, "epoch": 3}, {**RESTART, "epoch": 3}]}, r"previous restart's \(3"),
        ({**DECAY, "restarts": [{**RESTART, "lr": 0}]}, "lr > 0"),
    ],
)
def test_bad_warm_restarts_fail_with_one_clear_line(schedule, message):
    with pytest.raises(UserInputError, match=message):
        check_optimization({"name": "adam", "lr": 0.002}, schedule)
