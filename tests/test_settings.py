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
    """A temporary project directory, which is also the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(argv=(), **env):
    """Settings from BASE with `env` on top; a value of None leaves that variable unset."""
    merged = {**BASE, **env}
    environ = {k: v for k, v in merged.items() if v is not None}
    return load_settings(list(argv), environ, project_dir=Path.cwd())


def problem(argv=(), **env) -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, **env)
    return str(caught.value)


def test_defaults():
    s = load()
    assert (s.database.host, s.database.port, s.plan_type, s.lookback_days) == (
        "127.0.0.1",
        3306,
        "pro",
        7,
    )
    assert s.iterable_base_url == "https://api.iterable.com"
    assert s.request_timeout == 10.0 and s.log_level == "INFO" and s.mode == "single"
    assert s.outage_seconds == 30.0
    assert s.log_file == Path.cwd() / "iterable_integration.log"
    assert s.results_dir == Path.cwd()


def test_env_file_then_environment_then_flags(in_tmp):
    Path(".env").write_text("PLAN_TYPE=basic\nLOOKBACK_DAYS=3\nMYSQL_HOST=db.internal\n")
    s = load_settings([], {**BASE, "LOOKBACK_DAYS": "5"}, project_dir=in_tmp)
    assert (s.plan_type, s.lookback_days, s.database.host) == ("basic", 5, "db.internal")
    s = load_settings(["--lookback-days", "9"], {**BASE, "LOOKBACK_DAYS": "5"}, project_dir=in_tmp)
    assert s.lookback_days == 9


def test_named_env_file(in_tmp):
    Path("prod.env").write_text("MYSQL_DATABASE=warehouse\nCANDIDATE_NAME='Jane Doe'\n")
    env = {k: v for k, v in BASE.items() if k != "MYSQL_DATABASE"}
    s = load_settings(["--env-file", "prod.env"], env, project_dir=in_tmp)
    assert s.database.database == "warehouse" and s.candidate_name == "Jane Doe"


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
        ({"MYSQL_USER": None}, "MYSQL_USER is not set"),
        ({"MYSQL_DATABASE": None}, "MYSQL_DATABASE is not set"),
        ({"MYSQL_PORT": "eighty"}, "MYSQL_PORT must be a whole number from 1 to 65535"),
        ({"LOOKBACK_DAYS": "100000"}, "LOOKBACK_DAYS must be a whole number from 1 to 3650"),
        ({"LOOKBACK_DAYS": "-3"}, "LOOKBACK_DAYS must be a whole number from 1 to 3650 (got '-3')"),
        ({"LOOKBACK_DAYS": "0"}, "LOOKBACK_DAYS must be a whole number from 1 to 3650 (got '0')"),
        ({"LOOKBACK_DAYS": "7.5"}, "LOOKBACK_DAYS"),
        ({"REQUEST_TIMEOUT_SECONDS": "0"}, "REQUEST_TIMEOUT_SECONDS"),
        (
            {"OUTAGE_SECONDS": "0"},
            "OUTAGE_SECONDS must be a number above 0 and at most 3600 (got '0')",
        ),
        ({"OUTAGE_SECONDS": "forever"}, "OUTAGE_SECONDS must be a number above 0"),
        (
            {"ITERABLE_IDENTIFY_BY": "phone"},
            "ITERABLE_IDENTIFY_BY must be one of email, userId (got 'phone')",
        ),
        ({"SYNC_MODE": "turbo"}, "SYNC_MODE must be one of single, bulk"),
        ({"MYSQL_SSL_VERIFY_IDENTITY": "maybe"}, "MYSQL_SSL_VERIFY_IDENTITY must be true or false"),
        ({"MYSQL_SSL_CA": "/nonexistent/ca.pem"}, "MYSQL_SSL_CA"),
        # Any file that is not PEM will do: this one.
        ({"MYSQL_SSL_CA": __file__}, f"MYSQL_SSL_CA {__file__} holds no PEM certificate"),
        ({"RESULTS_DIR": "/nonexistent/dir"}, "RESULTS_DIR /nonexistent/dir is not a directory"),
        ({"LOG_FILE": "/nonexistent/dir/x.log"}, "LOG_FILE"),
        ({"RATE_LIMIT_USERS_UPDATE": "-5"}, "RATE_LIMIT_USERS_UPDATE"),
        ({"BULK_BATCH_SIZE": "20001"}, "BULK_BATCH_SIZE must be a whole number from 1 to 20000"),
        ({"ITERABLE_API_KEY": "  "}, "ITERABLE_API_KEY is not set"),
        ({"ITERABLE_API_KEY": None}, "ITERABLE_API_KEY is not set"),
    ],
)
def test_bad_values_are_refused(env, expected):
    # URLs have a table of their own in test_security.py.
    assert expected in problem(**env)


def test_results_dir_not_writable(in_tmp):
    # /proc takes no new files, even from root, for whom permission bits mean nothing.
    assert "RESULTS_DIR /proc is not writable" in problem(RESULTS_DIR="/proc")
    if os.geteuid() != 0:
        locked = in_tmp / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in problem(RESULTS_DIR=str(locked))


def test_bad_flags_are_refused():
    assert "unrecognized arguments: --turbo" in problem(["--turbo"])
    assert "unrecognized arguments" in problem(["--api-key", KEY])
    assert "argument --mode: invalid choice: 'fast'" in problem(["--mode", "fast"])


def test_secrets_never_echoed():
    message = problem(ITERABLE_API_KEY=KEY, MYSQL_PASSWORD="db-secret-pw", MYSQL_PORT="x")
    assert KEY not in message and "db-secret-pw" not in message
    assert KEY not in repr(load()) and "db-secret-pw" not in repr(load())


def test_dry_run_needs_no_api_key():
    s = load(["--dry-run"], ITERABLE_API_KEY="")
    assert s.dry_run and s.iterable_api_key == ""


def test_missing_or_unreadable_env_file(in_tmp):
    assert "env file nope.env does not exist" in problem(["--env-file", "nope.env"])
    Path("bad.env").write_bytes(b"PLAN_TYPE=\xff\xfe\n")
    assert "is not UTF-8" in problem(["--env-file", "bad.env"])


# -- values are taken literally ------------------------------------------------------------

DOLLAR_PASSWORD = "pa$word${HOME}x"


@pytest.mark.parametrize(
    "line",
    [
        f"MYSQL_PASSWORD={DOLLAR_PASSWORD}",
        f"MYSQL_PASSWORD='{DOLLAR_PASSWORD}'",
        f'MYSQL_PASSWORD="{DOLLAR_PASSWORD}"',
        f"MYSQL_PASSWORD=  {DOLLAR_PASSWORD}  ",
    ],
)
def test_env_file_values_are_not_expanded(in_tmp, line):
    Path(".env").write_text(line + "\n")
    env = {k: v for k, v in BASE.items() if k != "MYSQL_PASSWORD"}
    assert load_settings([], env, project_dir=in_tmp).database.password == DOLLAR_PASSWORD


def test_quoted_values_keep_their_spaces_and_unquoted_ones_are_trimmed(in_tmp):
    Path(".env").write_text(
        "CANDIDATE_NAME=\" padded \"\nMYSQL_PASSWORD='  two  '\nPLAN_TYPE=   basic   \n"
    )
    env = {k: v for k, v in BASE.items() if k != "MYSQL_PASSWORD"}
    s = load_settings([], env, project_dir=in_tmp)
    assert s.candidate_name == " padded " and len(s.candidate_name) == 8
    assert s.database.password == "  two  "
    assert s.plan_type == "basic"


def test_environment_values_are_trimmed_except_the_password():
    s = load(PLAN_TYPE="  basic\n", CANDIDATE_NAME=" Jane ", MYSQL_PASSWORD=" pw with spaces ")
    assert (s.plan_type, s.candidate_name) == ("basic", "Jane")
    assert s.database.password == " pw with spaces "
    assert "ITERABLE_API_KEY is not set" in problem(ITERABLE_API_KEY="  ")


# -- a missing .env is named -------------------------------------------------------------


def test_missing_settings_name_the_env_file_that_was_looked_for(in_tmp):
    message = problem(MYSQL_USER="", ITERABLE_API_KEY="")
    assert message.startswith("MYSQL_USER is not set; ITERABLE_API_KEY is not set; ")
    assert f"no settings file at {in_tmp / '.env'}" in message


def test_no_env_file_note_when_the_file_exists_or_nothing_is_missing(in_tmp):
    assert "no settings file" not in problem(LOOKBACK_DAYS="0")  # nothing missing
    Path(".env").write_text("PLAN_TYPE=pro\n")
    assert "no settings file" not in problem(MYSQL_USER="")


# -- relative paths ----------------------------------------------------------------------

PATHS = {
    "RESULTS_DIR": "results",
    "LOG_FILE": "logs/sync.log",
    "LOCK_FILE": "sync.lock",
    "SYNC_STATE_PATH": "state/state.sqlite3",
    "METRICS_FILE": "metrics.prom",
    "MYSQL_UNIX_SOCKET": "run/mysqld.sock",
}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A project directory and, apart from it, the working directory."""
    project = tmp_path / "project"
    for directory in ("results", "logs", "state", "run"):
        (project / directory).mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return project


def test_relative_paths_in_settings_are_relative_to_the_project_directory(elsewhere):
    (elsewhere / ".env").write_text("".join(f"{k}={v}\n" for k, v in PATHS.items()))
    s = load_settings([], BASE, project_dir=elsewhere)
    found = {
        "RESULTS_DIR": s.results_dir,
        "LOG_FILE": s.log_file,
        "LOCK_FILE": s.lock_file,
        "SYNC_STATE_PATH": s.sync_state_path,
        "METRICS_FILE": s.metrics_file,
        "MYSQL_UNIX_SOCKET": s.database.unix_socket,
    }
    assert found == {k: elsewhere / v for k, v in PATHS.items()}


def test_absolute_paths_are_used_as_given(elsewhere, tmp_path):
    s = load_settings([], {**BASE, "LOG_FILE": str(tmp_path / "x.log")}, project_dir=elsewhere)
    assert s.log_file == tmp_path / "x.log"


def test_command_line_paths_are_relative_to_the_working_directory(elsewhere):
    Path("results").mkdir()
    Path("mine.env").write_text("PLAN_TYPE=basic\n")
    (elsewhere / ".env").write_text("PLAN_TYPE=enterprise\n")
    s = load_settings(["--results-dir", "results"], BASE, project_dir=elsewhere)
    assert s.results_dir == Path.cwd() / "results"
    assert s.plan_type == "enterprise"  # the project's .env, not one in the working directory
    s = load_settings(["--env-file", "mine.env"], BASE, project_dir=elsewhere)
    assert s.plan_type == "basic"


def test_something_else_at_the_socket_path_is_refused(in_tmp):
    assert "MYSQL_UNIX_SOCKET" not in problem(MYSQL_UNIX_SOCKET="gone.sock", MYSQL_PORT="x")
    assert f"MYSQL_UNIX_SOCKET {in_tmp} is not a socket" in problem(MYSQL_UNIX_SOCKET=str(in_tmp))


INTEGER_SETTINGS = [
    "MYSQL_PORT",
    "ITERABLE_LIST_ID",
    "LEAVE_GUARD_PERCENT",
    "LOOKBACK_DAYS",
    "MAX_ATTEMPTS",
    "RESULTS_KEEP_DAYS",
    "CONCURRENCY",
    "BULK_BATCH_SIZE",
    "EVENTS_BATCH_SIZE",
]


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "0x10", "1e3", "99999999999999999999"])
@pytest.mark.parametrize("name", INTEGER_SETTINGS)
def test_every_integer_setting_refuses_what_is_not_a_whole_number_in_range(name, value):
    message = problem(**{name: value})
    assert name in message and "whole number" in message


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_list_id_must_be_positive(value):
    assert "ITERABLE_LIST_ID must be a whole number from 1" in problem(ITERABLE_LIST_ID=value)
