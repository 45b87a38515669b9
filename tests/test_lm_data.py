"""LM data: standard PTB counts, batchify/BPTT windows, DDP sharding, downloads from a URL, bad input."""

import http.server
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from app.data.download import file_sha256
from app.data.lm import IGNORE_INDEX, LMDataModule, batchify
from app.data.lm_corpus import prepare_lm_corpus, read_meta
from app.errors import UserInputError
from tests.conftest import PTB_DIR, TOY_FILES, run_script

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}


def _datamodule(source: str | Path, cache_dir: Path, **overrides) -> LMDataModule:
    settings = dict(
        name="ptb",
        source=str(source),
        files=PTB_FILES,
        cache_dir=str(cache_dir),
        batch_size=4,
        eval_batch_size=3,
        bptt=5,
    )
    return LMDataModule(**{**settings, **overrides})


def test_ptb_has_929589_train_tokens_and_a_10000_word_vocabulary(cache_dir: Path) -> None:
    if not PTB_DIR.is_dir():
        pytest.fail(f"PTB not found at {PTB_DIR}: set QRNN_DATA_ROOT to the folder holding ptb/")
    datamodule = _datamodule(PTB_DIR, cache_dir, expected_tokens=None, expected_vocab_size=None)
    datamodule.prepare_data()
    assert datamodule.vocab_size == 10_000
    assert {split: datamodule.num_tokens(split) for split in PTB_FILES} == {
        "train": 929_589,
        "valid": 73_760,
        "test": 82_430,
    }
    assert datamodule.vocab[0] == "the" and "<eos>" in datamodule.vocab and "<unk>" in datamodule.vocab


def test_evaluation_batches_predict_every_token_of_the_split_exactly_once() -> None:
    ids = torch.arange(1, 24)  # 23 tokens, eos_id 0: 3 rows of 8 with one padded target
    inputs, targets = batchify(ids, num_rows=3, eos_id=0, pad_remainder=True)
    assert inputs.shape == targets.shape == (3, 8)
    real = targets.flatten()[targets.flatten() != IGNORE_INDEX]
    assert torch.equal(real, ids)
    assert torch.equal(inputs.flatten()[: ids.numel()], torch.cat([torch.tensor([0]), ids[:-1]]))


def test_training_batches_drop_only_the_remainder_and_keep_rows_contiguous() -> None:
    inputs, targets = batchify(torch.arange(1, 24), num_rows=3, eos_id=0, pad_remainder=False)
    assert targets.shape == (3, 7) and (targets != IGNORE_INDEX).all()
    assert torch.equal(targets[1], torch.arange(8, 15))  # row 1 continues where row 0 stopped
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_each_ddp_rank_gets_its_own_contiguous_rows(toy_corpus: Callable[..., Path], tmp_path: Path) -> None:
    corpus = toy_corpus()
    shards = []
    for rank in (0, 1):
        datamodule = _datamodule(corpus, tmp_path / "cache", expected_tokens=None, batch_size=2, bptt=3)
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        datamodule.setup("fit")
        windows = datamodule.windows["train"]
        shards.append(torch.cat([windows[i][1] for i in range(len(windows))], dim=1))
    assert shards[0].shape == shards[1].shape == (2, 13)  # the 52-token stream in 4 rows, 2 per rank
    stream = torch.cat([shards[0].flatten(), shards[1].flatten()])
    assert torch.equal(stream, datamodule.token_ids["train"])


def test_missing_data_directory_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"data directory .*nowhere/ptb does not exist: set paths.data_root"):
        _datamodule(tmp_path / "nowhere" / "ptb", tmp_path / "cache").prepare_data()


def test_a_corpus_with_unexpected_token_counts_is_refused(toy_corpus: Callable[..., Path], tmp_path: Path) -> None:
    datamodule = _datamodule(toy_corpus(), tmp_path / "cache", expected_tokens={"train": 929_589})
    with pytest.raises(UserInputError, match="ptb train has 52 tokens .*, expected 929,589"):
        datamodule.prepare_data()


def test_a_changed_source_file_is_prepared_again(toy_corpus: Callable[..., Path], tmp_path: Path) -> None:
    corpus = toy_corpus()
    prepared = prepare_lm_corpus("toy", str(corpus), TOY_FILES, tmp_path / "cache")
    assert read_meta(prepared)["tokens"]["valid"] == 16
    (corpus / TOY_FILES["valid"]).write_text("the cat\n")
    prepare_lm_corpus("toy", str(corpus), TOY_FILES, tmp_path / "cache")
    assert read_meta(prepared)["tokens"]["valid"] == 3


# ---- http(s) sources, served from 127.0.0.1 ----------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def web_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A local HTTP server on 127.0.0.1 serving a temporary folder: (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *args, **kwargs: _QuietHandler(*args, directory=str(root), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _archive(corpus: Path, archive: Path) -> Path:
    """Pack the corpus under a `simple-examples/data/` prefix, as Mikolov's tarball does."""
    members = {f"simple-examples/data/{name}": corpus / name for name in TOY_FILES.values()}
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for arcname, path in members.items():
                zipped.write(path, arcname)
    else:
        with tarfile.open(archive, "w:gz") as tarred:
            for arcname, path in members.items():
                tarred.add(path, arcname)
    return archive


@pytest.mark.parametrize("archive_name", ["simple-examples.tgz", "ptb.zip"])
def test_an_archive_url_is_downloaded_verified_and_unpacked_into_the_cache(
    archive_name: str, web_root: tuple[Path, str], toy_corpus: Callable[..., Path], tmp_path: Path
) -> None:
    root, url = web_root
    corpus = toy_corpus()
    archive = _archive(corpus, root / archive_name)
    local = _datamodule(corpus, tmp_path / "local-cache", expected_tokens=None)
    local.prepare_data()
    downloaded = _datamodule(
        f"{url}/{archive_name}", tmp_path / "cache", expected_tokens=None, archive_sha256=file_sha256(archive)
    )
    downloaded.prepare_data()
    assert downloaded.vocab == local.vocab
    assert all(torch.equal(downloaded.token_ids[s], local.token_ids[s]) for s in PTB_FILES)
    archive_sha256 = file_sha256(archive)
    archive.unlink()  # preparing again with the same settings reuses the cache: no network
    again = _datamodule(
        f"{url}/{archive_name}", tmp_path / "cache", expected_tokens=None, archive_sha256=archive_sha256
    )
    again.prepare_data()
    assert again.vocab == local.vocab


def test_raw_file_urls_are_fetched_and_checked_against_their_sha256(
    web_root: tuple[Path, str], toy_corpus: Callable[..., Path], tmp_path: Path
) -> None:
    root, url = web_root
    corpus = toy_corpus(root / "data")
    sha256 = {split: file_sha256(corpus / name) for split, name in TOY_FILES.items()}
    datamodule = _datamodule(f"{url}/data/", tmp_path / "cache", expected_tokens=None, sha256=sha256)
    datamodule.prepare_data()
    assert datamodule.num_tokens("train") == 52


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(
    web_root: tuple[Path, str], toy_corpus: Callable[..., Path], tmp_path: Path
) -> None:
    root, url = web_root
    _archive(toy_corpus(), root / "ptb.tgz")
    datamodule = _datamodule(f"{url}/ptb.tgz", tmp_path / "cache", expected_tokens=None, archive_sha256="0" * 64)
    with pytest.raises(UserInputError, match=r"ptb.tgz has sha256 [0-9a-f]{64}, expected 0{64}"):
        datamodule.prepare_data()
    assert not list((tmp_path / "cache" / "downloads").rglob("ptb.tgz*"))


def test_an_unreachable_url_names_the_url_and_the_fix(tmp_path: Path, web_root: tuple[Path, str]) -> None:
    _, url = web_root
    with pytest.raises(UserInputError, match=f"cannot download {url}/missing.zip: .*set data.source"):
        _datamodule(f"{url}/missing.zip", tmp_path / "cache").prepare_data()


def test_prepare_script_writes_what_the_datamodule_reads(toy_corpus: Callable[..., Path], tmp_path: Path) -> None:
    corpus = toy_corpus()
    result = run_script(
        "data_scripts/prepare_lm.py",
        "data=ptb",
        f"data.source={corpus}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.sha256=null",
        "data.expected_tokens=null",
        "data.expected_vocab_size=null",
    )
    assert result.returncode == 0, result.stderr
    prepared = tmp_path / "cache" / "lm" / "ptb"
    assert f"prepared {prepared}" in result.stdout
    assert sorted(p.name for p in prepared.iterdir()) == [
        "meta.json",
        "test.txt",
        "train.txt",
        "valid.txt",
        "vocab.txt",
    ]
    assert read_meta(prepared)["tokens"] == {"train": 52, "valid": 16, "test": 16}
