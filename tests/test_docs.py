"""The docs stay true to the repository: no machine paths in tracked files, every file a doc or a comment
cites exists, and the results the report writes have no duplicate rows."""

import re
import subprocess
from pathlib import Path

import pytest

from app.reporting.report import block_markers, main

ROOT = Path(__file__).resolve().parents[1]
# Absolute paths of somebody's machine: /work/..., /tmp/<name>, /root/..., /home/...
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/work/|/tmp/[A-Za-z]|/root/|/home/)")
# Tests that need such a path as data (an error message naming one, a path outside the repository)
MACHINE_PATH_ALLOWED = {"tests/test_docs.py", "tests/test_report.py"}
# `path/to/file.ext` named in a doc or a comment: a repository file (docs, app, conf, tests, data_scripts, ...)
CITED_PATH = re.compile(
    r"(?<![\w./<-])((?:docs|app|conf|tests|data_scripts|\.ci|outputs)/[\w./-]*\w\.(?:py|md|yaml|c|h|json|txt)|"
    r"(?:train|evaluate)\.py|pyproject\.toml|README\.md)(?![\w/])"
)
# files that are written by the code, not tracked: a doc may name where they go
WRITTEN_BY_CODE = re.compile(r"^outputs/(?!README\.md)")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines() if (ROOT / name).is_file()]


def _text(name: str) -> str | None:
    try:
        return (ROOT / name).read_text()
    except (UnicodeDecodeError, OSError):
        return None  # a binary file


def test_no_tracked_file_holds_an_absolute_path_of_a_developers_machine() -> None:
    found = []
    for name in tracked_files():
        text = _text(name)
        if text is None or name in MACHINE_PATH_ALLOWED:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "machine paths (make them relative, or a placeholder like <run>):\n" + "\n".join(found)


def test_every_file_the_docs_link_to_exists() -> None:
    missing = []
    for name in ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]:
        for target in MARKDOWN_LINK.findall((ROOT / name).read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            if not ((ROOT / name).parent / target).exists():
                missing.append(f"{name} links to {target}")
    assert not missing, "\n".join(missing)


def test_every_repository_file_a_doc_or_comment_cites_exists() -> None:
    """`docs/methods.md section 5` in a comment, `app/engine/pwl.py` in a doc: each must be a real file."""
    missing = []
    for name in tracked_files():
        if not name.endswith((".py", ".md", ".yaml", ".toml", ".c", ".h")) or name == "tests/test_docs.py":
            continue
        text = _text(name) or ""
        for cited in sorted(set(CITED_PATH.findall(text))):
            if WRITTEN_BY_CODE.match(cited) or "<" in cited or "*" in cited:
                continue
            if not (ROOT / cited).exists():
                missing.append(f"{name} cites {cited}")
    assert not missing, "\n".join(missing)


def test_code_cites_the_methods_in_the_repository_not_notes_outside_it() -> None:
    """METHODS.md and shared/research/*.md were project notes outside the repository: docs/methods.md replaces them."""
    found = []
    for name in tracked_files():
        if name == "tests/test_docs.py":
            continue
        for number, line in enumerate((_text(name) or "").splitlines(), 1):
            if re.search(r"\bMETHODS\.md|research/\w+\.md|python -m app\.export", line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "cite docs/methods.md (section N) instead:\n" + "\n".join(found)


def _data_rows(markdown: str) -> list[str]:
    """The rows of every markdown table, without headers (a header is the line above a |---| line)."""
    lines = markdown.splitlines()
    return [
        line
        for i, line in enumerate(lines)
        if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))
    ]


def test_results_md_has_every_block_the_report_writes_and_no_duplicate_rows() -> None:
    text = (ROOT / "docs" / "results.md").read_text()
    for name in ("claims", "sweeps", "accuracy", "peers", "size", "speed", "ablations"):
        start, end = block_markers(name)
        assert text.count(start) == 1 and text.count(end) == 1, f"docs/results.md: block {name}"
    rows = _data_rows(text)
    assert rows and len(rows) == len(set(rows)), [row for row in rows if rows.count(row) > 1][:3]


@pytest.fixture
def copied_results(tmp_path: Path) -> Path:
    results = tmp_path / "results.md"
    results.write_text((ROOT / "docs" / "results.md").read_text())
    return results


def test_app_report_regenerates_results_without_duplicate_rows(tmp_path: Path, copied_results: Path) -> None:
    """The same run found twice (a command run again) and two runs of equal size give one row each."""
    import json
    import os

    outputs = tmp_path / "outputs"
    metrics = {
        "command": "python train.py quant=irnn",
        "task": "lm",
        "quant": "irnn",
        "model": "small",
        "data": "ptb",
        "engine": "qat",
        "val_ppl": 12.0,
        "test_ppl": 11.0,
        "integer": {"float_param_bytes": 400, "integer_param_bytes": 100},
    }
    for index, (where, command) in enumerate(
        (("a/t1", metrics["command"]), ("a/t2", metrics["command"]), ("b/t3", "python train.py quant=irnn seed=2"))
    ):
        directory = outputs / "runs" / "lm" / where
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text(json.dumps({**metrics, "command": command}))
        os.utime(directory / "metrics.json", (1_000 + index, 1_000 + index))
    main(["--outputs", str(outputs), "--no-plots", "--results", str(copied_results)])
    for text in ((outputs / "reports" / "results.md").read_text(), copied_results.read_text()):
        rows = _data_rows(text)
        assert len(rows) == len(set(rows)), [row for row in rows if rows.count(row) > 1][:3]
    accuracy = (outputs / "reports" / "accuracy.md").read_text()
    assert accuracy.count("`python train.py quant=irnn`") == 1
    assert len(_data_rows((outputs / "reports" / "size.md").read_text())) == 1


@pytest.mark.parametrize("command", ["app.report", "app.bench", "app.peers", "app.average", "app.transcribe"])
def test_the_documented_tool_commands_run(command: str) -> None:
    """README.md's `python -m app.report`, `app.bench`, `app.peers` (their code is in app/reporting/), `app.average`
    (app/runs/averaging.py) and `app.transcribe`."""
    from tests.conftest import run_script

    done = run_script("-m", command, "--help")
    assert done.returncode == 0 and f"python -m {command}" in done.stdout, done.stderr
