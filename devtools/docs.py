"""Generate .env.example and the README's variables and exit-code tables from the code.

`python -m devtools.docs` rewrites them; `python -m devtools.docs --check` exits 1 when
either has drifted from settings.VARIABLES or exit_codes.EXIT_CODES (a test runs it too).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from pathlib import Path

from exit_codes import EXIT_CODES
from settings import VARIABLES, Variable

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- generated: (\w[\w-]*) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)

ENV_HEADER = """\
# iterable-sync settings. Copy to .env (chmod 600 .env: it holds secrets).
# Real environment variables win over this file; command-line flags win over both.
# Values are taken literally: no $VARIABLE expansion; quotes keep surrounding spaces.
# Relative paths are relative to this directory (where main.py is). Generated from settings.py.
"""


def env_example() -> str:
    lines = [ENV_HEADER.rstrip("\n")]
    section = None
    for variable in VARIABLES:
        if variable.section != section:
            section = variable.section
            lines += ["", f"# --- {section} ---"]
        lines.append(f"# {_sentence(variable.help)}")
        value = variable.example if variable.example is not None else variable.default
        lines.append(f"{variable.name}={value}")
    return "\n".join(lines) + "\n"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "...")) else ".")


def variables_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable in VARIABLES:
        rows.append(f"| `{variable.name}` | {_default(variable)} | {_meaning(variable)} |")
    return "\n".join(rows) + "\n"


def _default(variable: Variable) -> str:
    if variable.required:
        return "required" + ("" if variable.required == "always" else f" ({variable.required})")
    return f"`{variable.default}`" if variable.default else "empty"


def _meaning(variable: Variable) -> str:
    flag = f" (`{variable.flag}`)" if variable.flag else ""
    return variable.help.replace("|", "\\|") + flag


def exit_codes_table() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    for code, meaning in EXIT_CODES.items():
        name, _, text = meaning.partition(": ")
        rows.append(f"| {code} | **{name}**: {text} |")
    return "\n".join(rows) + "\n"


def product_modules() -> list[str]:
    """The product's modules in pipeline order, as pyproject.toml lists them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(pyproject["tool"]["setuptools"]["py-modules"])


def modules_table() -> str:
    """Each product module with the first paragraph of its docstring."""
    rows = ["| module | what it does |", "|---|---|"]
    for name in product_modules():
        tree = ast.parse((ROOT / f"{name}.py").read_text(encoding="utf-8"))
        doc = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
        rows.append(f"| `{name}.py` | " + doc.replace("|", "\\|") + " |")
    return "\n".join(rows) + "\n"


GENERATORS = {
    "variables": variables_table,
    "exit-codes": exit_codes_table,
    "modules": modules_table,
}


def readme_with_tables(text: str) -> str:
    def fill(match: re.Match[str]) -> str:
        generate = GENERATORS.get(match.group(2))
        if generate is None:
            raise SystemExit(f"README.md: unknown generated block {match.group(2)!r}")
        return match.group(1) + generate() + match.group(4)

    return _BLOCK.sub(fill, text)


def drifted() -> list[str]:
    """The files whose generated parts differ from what the code says now."""
    stale = []
    if not ENV_EXAMPLE.exists() or ENV_EXAMPLE.read_text(encoding="utf-8") != env_example():
        stale.append(ENV_EXAMPLE.name)
    readme = README.read_text(encoding="utf-8")
    if readme_with_tables(readme) != readme or set(GENERATORS) - set(
        m.group(2) for m in _BLOCK.finditer(readme)
    ):
        stale.append(README.name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        if stale:
            print(f"out of date: {', '.join(stale)} (run: python -m devtools.docs)")
            return 1
        print("generated docs are up to date")
        return 0
    ENV_EXAMPLE.write_text(env_example(), encoding="utf-8")
    README.write_text(readme_with_tables(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {ENV_EXAMPLE.name} and the tables in {README.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
