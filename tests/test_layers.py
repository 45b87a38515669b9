"""The one-way layers of README.md's repository map, read from the import statements of app/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each package of app/ and the packages its modules may import (besides itself and the small helpers)
HELPERS = {"app", "app.errors", "app.files", "app.config", "app.data"}
ALLOWED = {
    "app.engine": set(),
    "app.quant": {"app.engine"},
    "app.models": {"app.quant", "app.engine"},
    "app.runs": {"app.quant"},
    "app.decode": {"app.models"},
    "app.tasks": {"app.decode", "app.runs", "app.models", "app.quant", "app.engine"},
    "app.export": {"app.decode", "app.runs", "app.models", "app.quant", "app.engine"},
}


def imported_packages(path: Path) -> set[str]:
    """`app.<package>` of every `import app.x...` / `from app.x... import` in the file (function bodies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {".".join(name.split(".")[:2]) for name in names if name.startswith("app.") or name == "app"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        for imported in imported_packages(path) - HELPERS - ALLOWED[package] - {package}:
            wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_nothing_in_app_imports_the_tools_but_their_commands() -> None:
    commands = {ROOT / "app" / f"{name}.py" for name in ("report", "bench", "peers")}  # python -m app.report, ...
    wrong = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "app").rglob("*.py"))
        if path not in commands and "reporting" not in path.parts and "app.reporting" in imported_packages(path)
    ]
    assert not wrong, "these import app.reporting: " + ", ".join(wrong)
