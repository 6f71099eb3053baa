"""Run the job apart from the user's own setup: the demo and the tests use this.

The job reads `.env` beside main.py and every settings variable of its environment. A
demo or a test that ran it the ordinary way would read the user's `.env` (their
HEALTHCHECK_URL, METRICS_FILE, PLAN_TYPE, ...) and their exported variables. So these
callers write a settings file of their own, pass it with `--env-file`, and give the job
an environment that holds only what a process needs to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PASSED_THROUGH = ("PATH", "HOME", "LANG", "TERM", "TMPDIR")


def clean_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's PATH, HOME, LANG, TERM and TMPDIR, and nothing else."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in PASSED_THROUGH if name in environ}


def write_env_file(path: Path, settings: Mapping[str, str]) -> Path:
    """Write `settings` as a .env file (owner-only, it may hold a password); return path."""
    lines = [f"{name}={_quoted(value)}\n" for name, value in settings.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# written for one run of the job; the project's own .env is not read\n")
        out.writelines(lines)
    return path


def _quoted(value: str) -> str:
    """Single quotes: python-dotenv takes the value as written, unescaping only \\\\ and \\'."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
