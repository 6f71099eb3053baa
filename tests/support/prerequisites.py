"""A test whose tool or server is missing: a skip on a workstation, a failure in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def prerequisite_missing(message: str) -> NoReturn:
    """Skip locally; under CI fail, as a skip there would hide that the check never ran."""
    if running_in_ci():
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)
