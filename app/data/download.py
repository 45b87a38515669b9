"""Fetch a file over http(s) and unpack archives into a cache directory, atomically and verified."""

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from app.errors import UserInputError

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` (written as `dest.part`, then renamed); check its sha256 when given.

    An existing `dest` with the right checksum is reused, so a second call needs no network.
    """
    if dest.exists() and (sha256 is None or file_sha256(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        raise UserInputError(
            f"cannot download {url}: {err}; check the URL, or set data.source to a local directory"
        ) from err
    if sha256 is not None and (actual := file_sha256(partial)) != sha256:
        partial.unlink()
        raise UserInputError(
            f"{url} has sha256 {actual}, expected {sha256}: the download is corrupt or a different file; "
            "fix the URL or the expected checksum in the data config"
        )
    os.replace(partial, dest)
    return dest


def extract(archive: Path, dest: Path) -> Path:
    """Unpack a zip / tar(.gz) archive into `dest` (unpacked beside it first, then renamed into place).

    Zip members are CRC-checked; tar members that would land outside `dest` are refused.
    """
    if dest.is_dir():
        return dest
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                if (bad_member := zipped.testzip()) is not None:
                    raise UserInputError(f"{archive} is corrupt (bad CRC in {bad_member}): delete it and retry")
                zipped.extractall(staging)
        else:
            with tarfile.open(archive) as tarred:
                tarred.extractall(staging, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserInputError(f"cannot unpack {archive}: {err}; delete it and retry") from err
    os.replace(staging, dest)
    return dest


def cached_download_path(url: str, downloads_dir: Path) -> Path:
    """Where `url` is cached: `<downloads_dir>/<host>/<url path>` (readable, and distinct per URL)."""
    parsed = urllib.parse.urlparse(url)
    host = parsed.netloc.replace(":", "_")
    return downloads_dir / host / parsed.path.lstrip("/")
