"""Prepare a word-level corpus (PTB, WikiText-2: one sentence per line) for the LM datamodule.

`prepare_lm_corpus` reads a raw corpus (a local directory, an http(s) archive, or an http(s) directory of
raw .txt files), verifies it, and writes `<cache_dir>/lm/<name>/`:

    train.txt valid.txt test.txt   the source lines, tokens joined by single spaces
    vocab.txt                      one token per line, its line number is its id (train tokens and <eos>,
                                   most frequent first)
    meta.json                      the request it was made from, token counts, fingerprints; written last,
                                   so its presence means the directory is complete

Token counts follow the usual convention (Mikolov's PTB, pytorch/examples): every line, empty lines
included, ends with one <eos>.
"""

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.data.download import cached_download_path, download, extract, file_sha256, is_archive, is_url
from app.errors import UserInputError
from app.files import write_text_atomic

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"
META_FILE = "meta.json"
VOCAB_FILE = "vocab.txt"


def prepare_lm_corpus(
    name: str,
    source: str,
    files: Mapping[str, str],
    cache_dir: str | Path,
    sha256: Mapping[str, str] | None = None,
    archive_sha256: str | None = None,
    expected_tokens: Mapping[str, int] | None = None,
    expected_vocab_size: int | None = None,
) -> Path:
    """Prepare corpus `name` once and return its directory; later calls with the same request reuse it.

    source: a directory holding `files[split]`, the URL of a .zip/.tar.gz/.tgz/.tar that contains them
        (searched by file name at any depth), or a URL prefix to which each file name is appended.
    sha256: per split, the expected sha256 of the raw file. archive_sha256: of the downloaded archive.
    expected_tokens / expected_vocab_size: checked after counting (tokens include <eos>).
    """
    out_dir = Path(cache_dir) / "lm" / name
    request = {
        "source": source,
        "files": {split: files[split] for split in SPLITS},
        "sha256": dict(sha256) if sha256 else None,
        "archive_sha256": archive_sha256,
    }
    raw_files = None if is_url(source) else _local_split_files(name, Path(source), request["files"])
    stamp = None if raw_files is None else {split: _file_stamp(path) for split, path in raw_files.items()}
    meta = read_meta(out_dir)
    if meta is not None and meta["request"] == request and meta["stamp"] == stamp:
        return out_dir

    if raw_files is None:
        raw_files = _fetch_split_files(source, request["files"], Path(cache_dir) / "downloads", archive_sha256)
    for split, path in raw_files.items():
        if sha256 and sha256.get(split) and (actual := file_sha256(path)) != sha256[split]:
            raise UserInputError(
                f"{path} has sha256 {actual}, expected data.sha256.{split}={sha256[split]}: "
                "the file is not the expected corpus; fix data.source, or set data.sha256=null to skip the check"
            )

    lines = {split: _read_normalized_lines(path) for split, path in raw_files.items()}
    counts = Counter(token for line in lines["train"] for token in line.split())
    counts[EOS] += len(lines["train"])
    vocab = sorted(counts, key=lambda token: (-counts[token], token))
    vocab_set = set(vocab)
    tokens = {split: sum(len(line.split()) + 1 for line in split_lines) for split, split_lines in lines.items()}
    oov = {split: sum(token not in vocab_set for line in lines[split] for token in line.split()) for split in SPLITS}
    if any(oov.values()) and UNK not in vocab_set:
        raise UserInputError(
            f"{name}: valid/test contain {oov} tokens not seen in train and the vocabulary has no {UNK}; "
            "map rare words to <unk> in the source files"
        )
    _check_expected(name, tokens, len(vocab), expected_tokens, expected_vocab_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # the directory is incomplete until meta.json is back
    vocab_text = "\n".join(vocab) + "\n"
    write_text_atomic(out_dir / VOCAB_FILE, vocab_text)
    fingerprints = {}
    for split in SPLITS:
        split_text = "".join(line + "\n" for line in lines[split])
        write_text_atomic(out_dir / f"{split}.txt", split_text)
        fingerprints[split] = hashlib.sha256((vocab_text + "\0" + split_text).encode()).hexdigest()[:16]
    meta = {
        "name": name,
        "request": request,
        "stamp": stamp,
        "tokens": tokens,
        "oov_tokens": oov,
        "vocab_size": len(vocab),
        "vocab_sha256": hashlib.sha256(vocab_text.encode()).hexdigest(),
        "fingerprints": fingerprints,
    }
    write_text_atomic(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return out_dir


def read_meta(corpus_dir: Path) -> dict[str, Any] | None:
    """The meta.json of a prepared corpus, or None if it is missing or unreadable (then it is re-prepared)."""
    try:
        return json.loads((corpus_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_vocab(corpus_dir: Path) -> list[str]:
    return (corpus_dir / VOCAB_FILE).read_text(encoding="utf-8").splitlines()


def _local_split_files(name: str, raw_dir: Path, files: Mapping[str, str]) -> dict[str, Path]:
    if not raw_dir.is_dir():
        raise UserInputError(
            f"data directory {raw_dir} does not exist: set paths.data_root=<folder that holds {raw_dir.name}/> "
            "(or the QRNN_DATA_ROOT environment variable), or data.source=<directory or http(s) URL>"
        )
    paths = {split: raw_dir / files[split] for split in SPLITS}
    if missing := [str(path) for path in paths.values() if not path.is_file()]:
        raise UserInputError(
            f"{name}: missing {', '.join(missing)}: point data.source at the folder with the "
            f"{name} split files, or set data.files.<split> to their names"
        )
    return paths


def _fetch_split_files(
    source: str, files: Mapping[str, str], downloads_dir: Path, archive_sha256: str | None
) -> dict[str, Path]:
    if is_archive(source):
        archive = download(source, cached_download_path(source, downloads_dir), archive_sha256)
        unpacked = extract(archive, archive.with_name(archive.name + ".unpacked"))
        return {split: _find_unique(unpacked, files[split], source) for split in SPLITS}
    prefix = source.rstrip("/")
    return {
        split: download(f"{prefix}/{files[split]}", cached_download_path(f"{prefix}/{files[split]}", downloads_dir))
        for split in SPLITS
    }


def _find_unique(root: Path, file_name: str, source: str) -> Path:
    matches = sorted(path for path in root.rglob(file_name) if path.is_file())
    if len(matches) != 1:
        found = "no file" if not matches else f"{len(matches)} files"
        raise UserInputError(f"{source} has {found} named {file_name}: set data.files to the names of its split files")
    return matches[0]


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_normalized_lines(path: Path) -> list[str]:
    # Split on newlines only (as `for line in file` does), then on any whitespace: this reproduces the
    # standard token counts, and the written lines hold no other line separators.
    try:
        with open(path, encoding="utf-8") as file:
            return [" ".join(line.split()) for line in file]
    except UnicodeDecodeError:
        try:  # decoded whole once more for the error's offset in the file (the reader's is within its chunk)
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserInputError(
                f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start:,}): re-encode it "
                f"(e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}) and point data.source at it"
            ) from None
        raise


def _check_expected(
    name: str,
    tokens: Mapping[str, int],
    vocab_size: int,
    expected_tokens: Mapping[str, int] | None,
    expected_vocab_size: int | None,
) -> None:
    for split, expected in (expected_tokens or {}).items():
        if expected is not None and tokens[split] != expected:
            raise UserInputError(
                f"{name} {split} has {tokens[split]:,} tokens (with <eos>), expected {expected:,}: the source is "
                "not the standard corpus; fix data.source, or set data.expected_tokens=null to accept it"
            )
    if expected_vocab_size is not None and vocab_size != expected_vocab_size:
        raise UserInputError(
            f"{name} has a vocabulary of {vocab_size:,}, expected {expected_vocab_size:,}: fix data.source, "
            "or set data.expected_vocab_size=null to accept it"
        )
