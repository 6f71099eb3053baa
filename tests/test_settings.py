"""Settings: precedence, validation (every problem in one message), and no secret echoed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from settings import ConfigError, load_settings

KEY = "sk-live-abcdef0123456789"
BASE = {
    "MYSQL_USER": "sync",
    "MYSQL_PASSWORD": "db-secret-pw",
    "MYSQL_DATABASE": "product",
    "ITERABLE_API_KEY": KEY,
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(argv=(), **env):
    return load_settings(list(argv), {**BASE, **env})


def problem(argv=(), **env) -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, **env)
    return str(caught.value)


def test_defaults():
    s = load()
    assert (s.mysql_host, s.mysql_port, s.plan_type, s.lookback_days) == (
        "127.0.0.1",
        3306,
        "pro",
        7,
    )
    assert s.iterable_base_url == "https://api.iterable.com"
    assert s.request_timeout == 10.0 and s.log_level == "INFO" and s.mode == "single"
    assert s.log_file == Path("iterable_integration.log") and s.results_dir == Path(".")


def test_env_file_then_environment_then_flags(in_tmp):
    Path(".env").write_text("PLAN_TYPE=basic\nLOOKBACK_DAYS=3\nMYSQL_HOST=db.internal\n")
    s = load_settings([], {**BASE, "LOOKBACK_DAYS": "5"})
    assert (s.plan_type, s.lookback_days, s.mysql_host) == ("basic", 5, "db.internal")
    s = load_settings(["--lookback-days", "9"], {**BASE, "LOOKBACK_DAYS": "5"})
    assert s.lookback_days == 9


def test_named_env_file(in_tmp):
    Path("prod.env").write_text("MYSQL_DATABASE=warehouse\nCANDIDATE_NAME='Jane Doe'\n")
    env = {k: v for k, v in BASE.items() if k != "MYSQL_DATABASE"}
    s = load_settings(["--env-file", "prod.env"], env)
    assert s.mysql_database == "warehouse" and s.candidate_name == "Jane Doe"


def test_every_problem_is_named_in_one_message():
    message = problem(
        MYSQL_USER="", MYSQL_PORT="abc", LOOKBACK_DAYS="-1", LOG_LEVEL="LOUD", CONCURRENCY="0"
    )
    for expected in (
        "MYSQL_USER is not set",
        "MYSQL_PORT",
        "LOOKBACK_DAYS",
        "LOG_LEVEL",
        "CONCURRENCY",
    ):
        assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOOKBACK_DAYS": "100000"}, "LOOKBACK_DAYS must be a whole number from 1 to 3650"),
        ({"LOOKBACK_DAYS": "7.5"}, "LOOKBACK_DAYS"),
        ({"REQUEST_TIMEOUT_SECONDS": "0"}, "REQUEST_TIMEOUT_SECONDS"),
        ({"ITERABLE_BASE_URL": "api.iterable.com"}, "must be an https URL"),
        (
            {"ITERABLE_BASE_URL": "http://api.iterable.com"},
            "plain http is allowed only for a loopback",
        ),
        ({"ITERABLE_BASE_URL": "https://api.iterable.com:99999"}, "invalid port"),
        ({"HEALTHCHECK_URL": "ftp://hc.example.com/x"}, "HEALTHCHECK_URL"),
        ({"SYNC_MODE": "turbo"}, "SYNC_MODE must be one of single, bulk"),
        ({"MYSQL_SSL_VERIFY_IDENTITY": "maybe"}, "MYSQL_SSL_VERIFY_IDENTITY must be true or false"),
        ({"MYSQL_SSL_CA": "/nonexistent/ca.pem"}, "MYSQL_SSL_CA"),
        ({"RESULTS_DIR": "/nonexistent/dir"}, "RESULTS_DIR /nonexistent/dir is not a directory"),
        ({"LOG_FILE": "/nonexistent/dir/x.log"}, "LOG_FILE"),
        ({"RATE_LIMIT_USERS_UPDATE": "-5"}, "RATE_LIMIT_USERS_UPDATE"),
        ({"BULK_BATCH_SIZE": "20001"}, "BULK_BATCH_SIZE must be a whole number from 1 to 20000"),
        ({"ITERABLE_API_KEY": "  "}, "ITERABLE_API_KEY is not set"),
    ],
)
def test_bad_values_are_refused(env, expected):
    assert expected in problem(**env)


def test_loopback_http_is_allowed_for_the_local_sandbox():
    assert (
        load(ITERABLE_BASE_URL="http://127.0.0.1:8080").iterable_base_url == "http://127.0.0.1:8080"
    )
    assert (
        load(ITERABLE_BASE_URL="http://localhost:8080/").iterable_base_url
        == "http://localhost:8080"
    )


def test_results_dir_not_writable(in_tmp):
    # /proc takes no new files, even from root, for whom permission bits mean nothing.
    assert "RESULTS_DIR /proc is not writable" in problem(RESULTS_DIR="/proc")
    if os.geteuid() != 0:
        locked = in_tmp / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in problem(RESULTS_DIR=str(locked))


def test_unknown_flag_and_key_on_command_line_are_refused():
    assert "unrecognized arguments: --turbo" in problem(["--turbo"])
    assert "unrecognized arguments" in problem(["--api-key", KEY])


def test_secrets_never_echoed():
    message = problem(ITERABLE_API_KEY=KEY, MYSQL_PASSWORD="db-secret-pw", MYSQL_PORT="x")
    assert KEY not in message and "db-secret-pw" not in message
    assert KEY not in repr(load()) and "db-secret-pw" not in repr(load())


def test_dry_run_needs_no_api_key():
    s = load_settings(["--dry-run"], {k: v for k, v in BASE.items() if k != "ITERABLE_API_KEY"})
    assert s.dry_run and s.iterable_api_key == ""


def test_missing_or_unreadable_env_file(in_tmp):
    assert "env file nope.env does not exist" in problem(["--env-file", "nope.env"])
    Path("bad.env").write_bytes(b"PLAN_TYPE=\xff\xfe\n")
    assert "is not UTF-8" in problem(["--env-file", "bad.env"])
