"""The shape of the code: the product at the root, no import cycles, one version, docs in step."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from devtools import docs
from iterable_client import IterableClient
from version import VERSION

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PRODUCT = set(PYPROJECT["tool"]["setuptools"]["py-modules"])


def root_modules() -> dict[str, Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    names = [Path(name) for name in tracked if "/" not in name]
    if not names:  # not a git checkout: list the folder
        names = [p.relative_to(ROOT) for p in ROOT.glob("*.py")]
    return {p.stem: ROOT / p for p in names}


def imported_root_modules(path: Path, modules: set[str]) -> dict[str, bool]:
    """Root modules `path` imports -> whether every such import is at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name in modules and name != path.stem:
                found[name] = found.get(name, True) and id(node) in top_level
    return found


def test_the_root_holds_the_product_modules_only():
    assert set(root_modules()) == PRODUCT


def test_no_import_cycle_among_root_modules_and_no_import_inside_a_function():
    modules = root_modules()
    edges = {}
    for name, path in modules.items():
        imports = imported_root_modules(path, set(modules))
        nested = [other for other, at_top in imports.items() if not at_top]
        assert not nested, f"{name} imports {nested} inside a function"
        edges[name] = set(imports)

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(name for name in modules if name in reachable(name))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_one_version_everywhere():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "version.VERSION"}
    shown = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.strip() == f"iterable-sync {VERSION}"
    with IterableClient("k", "https://api.iterable.com") as client:
        assert client.headers["User-Agent"] == f"iterable-sync/{VERSION}"


def test_env_example_and_readme_tables_are_generated_from_the_code():
    assert docs.drifted() == [], "run: python -m devtools.docs"
