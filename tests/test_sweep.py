"""Sweep presets (conf/sweep/, conf/mode/): every grid point composes and builds, and a sweep run again
skips the points it finished (app/runs/sweeps.py)."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from app.errors import UserInputError
from app.runs.sweeps import finished_run
from tests.conftest import CONF_DIR, ROOT, compose_config, eval_overrides, run_script

PRESETS = sorted(path.stem for path in (CONF_DIR / "sweep").glob("*.yaml"))


def grid(params: dict) -> list[list[str]]:
    """The overrides of every point of `hydra.sweeper.params`, as Hydra's basic sweeper expands them."""
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
        for o in overrides
    ]
    return [list(point) for point in itertools.product(*choices)]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_point_of_every_sweep_preset_composes_and_builds(preset: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"+sweep={preset}", f"paths.output_root={tmp_path}"], tmp_path)
    assert cfg.hydra.sweep.dir == f"{tmp_path}/sweeps/{preset}"
    subdir = "${sweep_point}" if preset == "cpu" else "${hydra.job.override_dirname}"  # cpu: fixed point names
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == subdir
    points = grid(cfg.hydra.sweeper.params)
    assert len(points) >= 2
    for point in points:
        point_cfg = compose_config("train", [f"+sweep={preset}", f"paths.output_root={tmp_path}", *point], tmp_path)
        if point_cfg.task.name != "lm":
            assert point_cfg.data.name.startswith(point_cfg.task.name), point  # the task's own data
            continue  # ASR modules need the data's features to be built: test_configs builds task=asr
        tiny = compose_config(
            "train", [f"+sweep={preset}", f"paths.output_root={tmp_path}", *point, "model=tiny"], tmp_path
        )
        model_cfg = OmegaConf.to_container(tiny.model, resolve=True)  # the point's quant settings, built small
        quant_cfg = OmegaConf.to_container(tiny.quant, resolve=True)
        if quant_cfg.get("init_from"):  # a fine-tune of the sweep's own float point (that chain: the test below)
            assert quant_cfg["init_from"] == f"{tmp_path}/sweeps/{preset}/lm_float/checkpoints/best.ckpt", point
            quant_cfg["init_from"] = None
        task = instantiate(tiny.task.module, model_cfg=model_cfg, quant_cfg=quant_cfg, vocab_size=50, _convert_="all")
        assert task.model.quant.mode == point_cfg.quant.mode, point


def test_modes_set_the_quant_mode_bits_and_optimizer(tmp_path: Path) -> None:
    expected = {  # mode: (quant, weight bits, optimizer)
        "float": ("float", None, "sgd"),
        "float_adam": ("float", None, "adam"),
        "irnn": ("irnn", 8, "sgd"),
        "denseshift_2bit": ("denseshift", 2, "adam"),
        "denseshift_3bit": ("denseshift", 3, "adam"),
        "denseshift_4bit": ("denseshift", 4, "adam"),
        "irnn_denseshift_2bit": ("irnn_denseshift", 2, "adam"),
        "irnn_denseshift_3bit": ("irnn_denseshift", 3, "adam"),
    }
    assert sorted(path.stem for path in (CONF_DIR / "mode").glob("*.yaml")) == sorted(expected)
    for mode, (quant, bits, optimizer) in expected.items():
        cfg = compose_config("train", [f"+mode={mode}", "experiment=lm_ptb_small"], tmp_path)
        assert (cfg.quant.name, cfg.quant.get("weight_bits"), cfg.task.module.optimizer.name) == (
            quant,
            bits,
            optimizer,
        )


def test_a_sweep_run_again_skips_the_points_it_finished_and_evaluate_covers_every_point_and_engine(
    ptb_overrides: list[str], tmp_path: Path
) -> None:
    tiny = [o for o in ptb_overrides if not o.startswith("trainer.enable_progress_bar")]
    command = [
        "tests/sweep_probe.py",
        "-m",
        "+sweep=lm_cpu",
        "+mode=float,irnn",
        *tiny,
        f"paths.output_root={tmp_path}",
        "trainer.enable_progress_bar=false",
    ]

    def points(result) -> dict[str, dict]:
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [
            json.loads(line.removeprefix("SWEEP_POINT "))
            for line in result.stdout.splitlines()
            if line.startswith("SWEEP_POINT ")
        ]
        return {Path(p["directory"]).name.split("__")[0]: p for p in lines}

    env = {"PYTHONPATH": str(ROOT)}  # the probe imports train.py
    first = points(run_script(*command, timeout=300, env=env))
    assert sorted(first) == ["+mode-float", "+mode-irnn"] and not any(p["skipped"] for p in first.values())
    for point in first.values():  # one directory per point, named by its overrides only
        assert Path(point["directory"]).parent == tmp_path / "sweeps" / "lm_cpu"
        assert (Path(point["directory"]) / "metrics.json").is_file()
    shutil.rmtree(Path(first["+mode-irnn"]["directory"]) / "checkpoints")
    (Path(first["+mode-irnn"]["directory"]) / "metrics.json").unlink()  # as if it had been stopped before a checkpoint

    again = points(run_script(*command, timeout=300, env=env))
    assert again["+mode-float"]["skipped"] and again["+mode-float"]["test_ppl"] == first["+mode-float"]["test_ppl"]
    assert not again["+mode-irnn"]["skipped"]  # no metrics.json: trained again, in its own directory
    assert again["+mode-irnn"]["directory"] == first["+mode-irnn"]["directory"]

    # evaluate.py sweep_dir=: every point with every engine it has, each on its own data, then resumable
    # (ASR decoding options are for the ASR points of a mixed sweep such as +sweep=cpu: LM points go without them)
    evaluate = ["evaluate.py", f"sweep_dir={tmp_path / 'sweeps' / 'lm_cpu'}", *eval_overrides(tiny)]
    result = run_script(*evaluate, "ctc_weight=0.3", "beam_size=2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = {
        (point, engine): json.loads((Path(again[point]["directory"]) / "evals" / engine / "metrics.json").read_text())
        for point, engine in (("+mode-float", "qat"), ("+mode-irnn", "qat"), ("+mode-irnn", "integer"))
    }
    assert not (Path(again["+mode-float"]["directory"]) / "evals" / "integer").exists()  # float: no integer checkpoint
    assert any(
        line.startswith("skipped: +mode-float__") and "engine=integer (float activations" in line
        for line in result.stdout.splitlines()
    ), result.stdout
    trained = {point: json.loads((Path(again[point]["directory"]) / "metrics.json").read_text()) for point in again}
    assert evals[("+mode-float", "qat")]["test_ppl"] == pytest.approx(trained["+mode-float"]["test_ppl"], rel=1e-5)
    assert evals[("+mode-irnn", "integer")]["engine"] == "integer"
    assert evals[("+mode-irnn", "integer")]["test_ppl"] == pytest.approx(
        trained["+mode-irnn"]["integer"]["test_ppl"], rel=1e-5
    )
    rerun = run_script(*evaluate, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("(already evaluated:") == 3, rerun.stdout
    unfinished = shutil.copytree(
        Path(again["+mode-irnn"]["directory"]) / "checkpoints",
        tmp_path / "sweeps" / "lm_cpu" / "training" / "checkpoints",
    )
    rerun = run_script(*evaluate, timeout=300)  # a point with a best.ckpt but no metrics.json is still training
    assert rerun.returncode == 0 and "skipped: training (still training" in rerun.stdout, rerun.stdout
    assert not (unfinished.parent / "evals").exists()
    shutil.rmtree(unfinished.parent)

    # a point stopped after a checkpoint resumes from its last.ckpt instead of starting over
    (Path(again["+mode-float"]["directory"]) / "metrics.json").unlink()
    result = run_script(*command, timeout=300, env=env)
    resumed = points(result)
    assert (
        f"resuming: {again['+mode-float']['directory']} from " in result.stdout
        and not resumed["+mode-float"]["skipped"]
    )
    assert resumed["+mode-irnn"]["skipped"]


def test_finished_run_returns_the_metrics_of_the_same_config_only(trained_run, ptb_overrides: list[str]) -> None:
    run_dir, metrics = trained_run
    same = compose_config("train", ptb_overrides, run_dir)
    assert finished_run(run_dir, same) == json.loads((run_dir / "metrics.json").read_text())
    assert finished_run(run_dir, compose_config("train", [*ptb_overrides, "trainer.enable_progress_bar=true"], run_dir))
    resumed = compose_config("train", [*ptb_overrides, f"ckpt_path={run_dir}/checkpoints/last.ckpt"], run_dir)
    assert finished_run(run_dir, resumed) is None  # resuming (e.g. to train longer) is always allowed
    assert finished_run(run_dir.parent / "never-ran", same) is None
    with pytest.raises(UserInputError, match=r"holds a run with task.max_epochs=1, this run has task.max_epochs=2"):
        finished_run(run_dir, compose_config("train", [*ptb_overrides, "task.max_epochs=2"], run_dir))


def test_a_damaged_metrics_json_is_not_a_finished_run(trained_run, ptb_overrides: list[str], tmp_path: Path) -> None:
    run_dir, _ = trained_run
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "config.yaml", copy / "config.yaml")
    (copy / "metrics.json").write_text('{"command": "python train.py", "test_')
    assert finished_run(copy, compose_config("train", ptb_overrides, copy)) is None


def test_the_cpu_sweep_fine_tunes_from_the_float_point_it_trained_first(
    ptb_overrides: list[str], tmp_path: Path
) -> None:
    tiny = [o for o in ptb_overrides if not o.startswith("trainer.enable_progress_bar")]
    command = [
        "tests/sweep_probe.py",
        "-m",
        "+sweep=cpu",
        "+point=lm_float,lm_irnn",
        *tiny,
        f"paths.output_root={tmp_path}",
        "trainer.enable_progress_bar=false",
    ]
    result = run_script(*command, timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "cpu"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["lm_float", "lm_irnn"]
    config = OmegaConf.load(sweep / "lm_irnn" / "config.yaml")
    assert config.quant.name == "irnn" and config.quant.init_from == str(
        sweep / "lm_float" / "checkpoints" / "best.ckpt"
    )
    assert (sweep / "lm_irnn" / "model.int.safetensors").is_file()
