"""Shared fixtures: composing configs the way train.py does, a prepared PTB cache, small corpora."""

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.config import register_resolvers
from app.data.manifest import fsdd_utterances, pocketsphinx_utterances, write_manifest, yesno_utterances
from app.data.text import normalize_text, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DATA_ROOT = Path(os.environ.get("QRNN_DATA_ROOT", ROOT.parent / "shared" / "data")).resolve()
PTB_DIR = DATA_ROOT / "ptb"

register_resolvers()


def compose_config(config_name: str, overrides: Sequence[str], run_dir: Path | None = None) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides and install it as the current Hydra config."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def eval_overrides(ptb_overrides: Sequence[str]) -> list[str]:
    """ptb_overrides for evaluate.py, which has no model group and does not train."""
    return [o for o in ptb_overrides if not o.startswith(("model=", "trainer.limit_train"))]


def run_script(*args: str, timeout: int = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a repo script (train.py, evaluate.py, ...) as a user would, from the repo root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for the whole session (PTB is prepared once, ~5 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ptb_overrides(cache_dir: Path) -> list[str]:
    """Overrides for a seconds-long PTB run: tiny model, a few batches, the session cache."""
    if not PTB_DIR.is_dir():
        pytest.fail(f"PTB not found at {PTB_DIR}: set QRNN_DATA_ROOT to the folder holding ptb/")
    return [
        f"paths.data_root={PTB_DIR.parent}",
        f"paths.cache_dir={cache_dir}",
        "model=tiny",
        "data=ptb",
        "task.batch_size=8",
        "task.eval_batch_size=8",
        "task.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=3",
        "trainer.limit_test_batches=3",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
    ]


def write_corpus(directory: Path, lines_per_split: dict[str, list[str]], names: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, lines in lines_per_split.items():
        (directory / names[split]).write_text("".join(f" {line} \n" for line in lines))
    return directory


@pytest.fixture()
def toy_corpus(tmp_path: Path) -> Callable[[Path], Path]:
    """A factory for a PTB-formatted toy corpus: 'a b c' sentences, 12 lines train, 4 valid, 4 test."""

    def make(directory: Path = tmp_path / "toy") -> Path:
        lines = {
            "train": ["the cat sat", "a dog ran <unk>", "the dog sat"] * 4,
            "valid": ["the cat ran", "a dog sat"] * 2,
            "test": ["a cat sat", "the dog ran"] * 2,
        }
        return write_corpus(directory, lines, TOY_FILES)

    return make


TOY_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}


@pytest.fixture(scope="session")
def trained_run(ptb_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished 1-epoch tiny PTB run: (its run directory, the metrics train() returned). Do not modify it."""
    from train import train

    run_dir = tmp_path_factory.mktemp("run")
    metrics = train(compose_config("train", ptb_overrides, run_dir))
    return run_dir, metrics


# ---- ASR: small manifests of the real recordings in shared/data, laid out as data_scripts/ writes them ----


def asr_tokenizer(directory: Path) -> Path:
    texts = [normalize_text(str(digit)) for digit in range(10)] * 20 + ["yes no yes", "no yes", "the market said"] * 20
    return train_tokenizer(texts, directory / "spm", vocab_size=40)


def real_asr_manifests(root: Path) -> None:
    """Small copies of the real sets, laid out as data_scripts/ writes them under paths.asr_root."""
    fsdd = fsdd_utterances(DATA_ROOT / "fsdd")
    write_manifest(root / "synth" / "train.jsonl", fsdd["train"][::40])  # stands in for the synthetic corpus
    write_manifest(root / "synth" / "valid.jsonl", fsdd["valid"][::60])
    write_manifest(root / "synth" / "test.jsonl", fsdd["test"][1::60])
    write_manifest(root / "fsdd" / "train.jsonl", fsdd["train"][1::40])
    write_manifest(root / "fsdd" / "valid.jsonl", fsdd["valid"][1::60])
    write_manifest(root / "fsdd" / "test.jsonl", fsdd["test"][::60])
    write_manifest(root / "piper" / "train.jsonl", fsdd["train"][2::80])  # stand-ins for conf/data/asr_voices.yaml's
    write_manifest(root / "asterisk" / "train.jsonl", fsdd["train"][3::80])  # Piper and Asterisk sets
    write_manifest(root / "asterisk" / "dev.jsonl", fsdd["valid"][2::60])
    write_manifest(root / "yesno" / "test.jsonl", yesno_utterances(DATA_ROOT / "yesno")[:3])
    write_manifest(
        root / "pocketsphinx" / "test.jsonl",
        pocketsphinx_utterances(DATA_ROOT / "pocketsphinx_testdata", root / "pocketsphinx" / "wav"),
    )
    asr_tokenizer(root / "tokenizer")
    asr_tokenizer(root / "librispeech" / "tokenizer")


@pytest.fixture(scope="session")
def asr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("asr")
    real_asr_manifests(root)
    return root


@pytest.fixture(scope="session")
def fsdd_batch(asr_root):
    """A padded batch of real FSDD test utterances (different lengths), features as training sees them, and its
    datamodule (tokenizer included)."""
    from hydra.utils import instantiate

    cfg = compose_config(
        "train",
        ["task=asr", f"+paths.asr_root={asr_root}", f"paths.cache_dir={asr_root / 'cache'}", "data.num_workers=0"],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()["fsdd"]))
    assert batch["feat_lens"].min() < batch["feat_lens"].max()  # really padded
    return batch, datamodule
