"""Every config in conf/ composes, and everything in it with a `_target_` instantiates."""

import re
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from app.models.lm import build_lm
from tests.conftest import CONF_DIR, compose_config, run_script

GROUPS = ("paths", "task", "quant", "model", "data", "trainer", "experiment")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
INSTANTIATED = {"data", "trainer", "task.module"}  # every node with a _target_; each is built below


def _task_arguments(cfg: DictConfig) -> dict:
    """What train.py passes to `task.module` besides its config, per task (vocab size 50 for the LM)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    quant_cfg = OmegaConf.to_container(cfg.quant, resolve=True)
    if cfg.task.name == "lm":
        return {"model_cfg": model_cfg, "quant_cfg": quant_cfg, "vocab_size": 50}
    if cfg.task.name == "asr":
        return {"model_cfg": model_cfg, "quant_cfg": quant_cfg, "vocab_size": 50, "feature_dim": 80}
    raise AssertionError(f"task={cfg.task.name}: say here how train.py instantiates its task.module")


def _target_paths(node: DictConfig, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in node.items():
        if isinstance(value, DictConfig):
            if "_target_" in value:
                paths.add(f"{prefix}{key}")
            paths |= _target_paths(value, f"{prefix}{key}.")
    return paths


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_option_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}", f"paths.output_root={tmp_path}"], tmp_path)
    if group == "model" and "lm" not in cfg.model:  # an ASR-only preset: the LM task refuses it in one line
        with pytest.raises(InstantiationException, match="has no lm section"):
            instantiate(cfg.task.module, **_task_arguments(cfg), _convert_="all")
        cfg = compose_config("train", ["task=asr", f"{group}={option}", f"paths.output_root={tmp_path}"], tmp_path)
    user_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.to_container(user_config, resolve=True, throw_on_missing=True)  # every interpolation resolves
    assert _target_paths(user_config) <= INSTANTIATED, "a new _target_ node: instantiate it in this test"

    instantiate(cfg.data)
    task = instantiate(cfg.task.module, **_task_arguments(cfg), _convert_="all")
    assert sum(parameter.numel() for parameter in task.parameters()) > 0
    if cfg.task.name == "lm" and "lm" in cfg.model:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        assert build_lm(model_cfg, cfg.quant, vocab_size=50).lstm.hidden_size == cfg.model.lm.hidden_dim
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return  # a GPU trainer cannot be built on a CPU-only machine; its composition was checked above
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == cfg.task.max_epochs


@pytest.mark.parametrize("config_name", ["evaluate", "prepare_lm"])
def test_entry_point_configs_compose(config_name: str, tmp_path: Path) -> None:
    cfg = compose_config(config_name, [f"paths.output_root={tmp_path}"], tmp_path)
    assert cfg.data.name == "ptb"
    instantiate(cfg.data)


def test_train_help_and_cfg_job_print_the_config() -> None:
    help_text = run_script("train.py", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert re.search(r"^quant: .*\bfloat\b", help_text.stdout, re.MULTILINE)  # the groups and their options
    assert re.search(r"^experiment: .*\blm_ptb_small\b", help_text.stdout, re.MULTILINE)
    job = run_script("train.py", "--cfg", "job", "model=tiny", "data=wikitext2")
    assert job.returncode == 0, job.stderr
    assert "hidden_dim: 32" in job.stdout and "name: wikitext2" in job.stdout


def test_unknown_config_value_names_the_group_and_the_choices() -> None:
    result = run_script("train.py", "quant=foo")
    assert result.returncode != 0
    assert "Could not find 'quant/foo'" in result.stderr
    assert "Available options in 'quant':" in result.stderr and "float" in result.stderr


def test_two_trainings_started_in_the_same_second_get_their_own_folders() -> None:
    """train.py's run folder is named to the microsecond, as evaluate.py's: two runs of one run_name launched
    together (a script, a pair of seeds) would otherwise share a folder and each other's checkpoints."""
    first, second = (compose_config("train", ["run_name=same"]).hydra.run.dir for _ in range(2))
    assert first != second
    assert first.rsplit("/", 1)[0] == second.rsplit("/", 1)[0]  # the same runs/<task>/<run_name> parent
