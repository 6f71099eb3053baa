"""Settings: read once from .env, the environment and the command line, validated together."""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from dotenv import dotenv_values

DEFAULT_BASE_URL = "https://api.iterable.com"
MODES = ("single", "bulk")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_LOOKBACK_DAYS = 3650
MAX_CONCURRENCY = 256
# Each user is two requests in a row (~100 ms at Iterable's usual latency), so reaching
# 500 users/s needs ~60 users in flight; 128 leaves room for slower answers (make bench).
DEFAULT_CONCURRENCY = 128
# Iterable's bulk endpoints take at most 4 MB a request and document no record count;
# integrations send 1,000 users or 2,000 events a request, hence the defaults. Larger
# batches are allowed (bulk.py still splits any batch at 4 MB); the cap only stops a typo.
DEFAULT_BULK_USERS = 1000
DEFAULT_BULK_EVENTS = 2000
MAX_BULK_USERS = 20_000
MAX_BULK_EVENTS = 20_000

# Iterable publishes these per-project limits; our defaults stay below them because
# the customer's other integrations share the same budget.
PUBLISHED_RATE_LIMITS = {
    "users/update": 500.0,
    "events/track": 2000.0,
    "users/bulkUpdate": 5.0,
    "events/trackBulk": 10.0,
}
DEFAULT_RATE_LIMITS = {
    "users/update": 400.0,
    "events/track": 1600.0,
    "users/bulkUpdate": 4.0,
    "events/trackBulk": 8.0,
}
RATE_LIMIT_VARIABLES = {
    "users/update": "RATE_LIMIT_USERS_UPDATE",
    "events/track": "RATE_LIMIT_EVENTS_TRACK",
    "users/bulkUpdate": "RATE_LIMIT_USERS_BULK_UPDATE",
    "events/trackBulk": "RATE_LIMIT_EVENTS_TRACK_BULK",
}

# Every variable the job reads; anything else in the environment is ignored.
VARIABLES = (
    "MYSQL_HOST",
    "MYSQL_PORT",
    "MYSQL_USER",
    "MYSQL_PASSWORD",
    "MYSQL_DATABASE",
    "MYSQL_SSL_CA",
    "MYSQL_SSL_VERIFY_IDENTITY",
    "MYSQL_CONNECT_TIMEOUT_SECONDS",
    "ITERABLE_API_KEY",
    "ITERABLE_BASE_URL",
    "CANDIDATE_NAME",
    "PLAN_TYPE",
    "LOOKBACK_DAYS",
    "REQUEST_TIMEOUT_SECONDS",
    "MAX_ATTEMPTS",
    "LOG_LEVEL",
    "LOG_FILE",
    "RESULTS_DIR",
    "LOCK_FILE",
    "SYNC_MODE",
    "CONCURRENCY",
    "BULK_BATCH_SIZE",
    "EVENTS_BATCH_SIZE",
    *RATE_LIMIT_VARIABLES.values(),
    "SYNC_STATE_PATH",
    "HEALTHCHECK_URL",
    "METRICS_FILE",
)
SECRET_VARIABLES = frozenset({"MYSQL_PASSWORD", "ITERABLE_API_KEY"})


class ConfigError(Exception):
    """The configuration or the command line is wrong; the message names every problem."""


@dataclass(frozen=True)
class Settings:
    mysql_host: str
    mysql_port: int
    mysql_user: str
    mysql_password: str = field(repr=False)
    mysql_database: str
    mysql_ssl_ca: Path | None
    mysql_ssl_verify_identity: bool
    mysql_connect_timeout: float
    iterable_api_key: str = field(repr=False)
    iterable_base_url: str
    candidate_name: str | None
    plan_type: str
    lookback_days: int
    request_timeout: float
    max_attempts: int
    log_level: str
    log_file: Path
    results_dir: Path
    lock_file: Path
    mode: str
    concurrency: int
    bulk_batch_size: int
    events_batch_size: int
    rate_limits: Mapping[str, float]
    sync_state_path: Path
    healthcheck_url: str | None
    metrics_file: Path | None
    dry_run: bool = False
    full_refresh: bool = False
    check_only: bool = False

    def secrets(self) -> list[str]:
        """Values that must never be written to a log, a message or a file."""
        return [s for s in (self.iterable_api_key, self.mysql_password) if s]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a ConfigError instead of exiting on its own."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(_without_values(message))


def _without_values(message: str) -> str:
    """argparse echoes unknown arguments; show only the flags, as a value may be a secret."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    tokens = message[len(prefix) :].split()
    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("-")]
    shown = prefix + (" ".join(flags) if flags else "(values not shown)")
    if any("key" in flag.lower() for flag in flags):
        shown += "; the API key is read from ITERABLE_API_KEY only, never from the command line"
    return shown


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py",
        description=(
            "Send recently active customers of one plan from MySQL to Iterable: "
            "a users/update and a page_view event per customer."
        ),
        epilog="Settings come from .env, then the environment, then these flags. "
        "The API key is read from ITERABLE_API_KEY only. Exit codes: 0 ok, 1 some rows "
        "failed, 2 bad configuration, 3 run aborted, 4 another run holds the lock.",
    )
    parser.add_argument("--env-file", metavar="PATH", help="read settings from PATH (default .env)")
    parser.add_argument(
        "--dry-run", action="store_true", help="build payloads and results, call nothing"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check configuration, database, query and API key, then exit",
    )
    parser.add_argument("--mode", choices=MODES, help="single (per user) or bulk (SYNC_MODE)")
    parser.add_argument("--concurrency", metavar="N", help="parallel users in single mode")
    parser.add_argument(
        "--batch-size", metavar="N", help="users per bulk request (BULK_BATCH_SIZE)"
    )
    parser.add_argument("--plan-type", metavar="PLAN", help="customers of this plan (PLAN_TYPE)")
    parser.add_argument("--lookback-days", metavar="N", help="window in days (LOOKBACK_DAYS)")
    parser.add_argument("--results-dir", metavar="DIR", help="where results files go")
    parser.add_argument("--log-level", metavar="LEVEL", help="console log level")
    parser.add_argument(
        "--full-refresh",
        action="store_true",
        help="send every qualifying user and event, ignoring the sync state",
    )
    return parser


FLAG_VARIABLES = {
    "mode": "SYNC_MODE",
    "concurrency": "CONCURRENCY",
    "batch_size": "BULK_BATCH_SIZE",
    "plan_type": "PLAN_TYPE",
    "lookback_days": "LOOKBACK_DAYS",
    "results_dir": "RESULTS_DIR",
    "log_level": "LOG_LEVEL",
}


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags, merge .env < environment < flags, validate, and report all problems at once."""
    args = build_parser().parse_args(list(argv))
    environ = os.environ if environ is None else environ
    values = _read_env_file(args.env_file)
    values.update({k: v for k, v in environ.items() if k in VARIABLES})
    for flag, variable in FLAG_VARIABLES.items():
        value = getattr(args, flag)
        if value is not None:
            values[variable] = str(value)
    return _Validator(values, args).build()


def _read_env_file(path: str | None) -> dict[str, str]:
    env_path = Path(path) if path else Path(".env")
    if not env_path.exists():
        if path:
            raise ConfigError(f"env file {path} does not exist")
        return {}
    try:
        with env_path.open(encoding="utf-8") as stream:
            raw = dotenv_values(stream=stream)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read env file {env_path}: {reason}") from None
    return {k: v for k, v in raw.items() if k in VARIABLES and v is not None}


class _Validator:
    """Turns raw strings into typed values, collecting every problem instead of stopping at one."""

    def __init__(self, values: Mapping[str, str], args: argparse.Namespace) -> None:
        self.values = {k: v.strip() for k, v in values.items()}
        self.args = args
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None, required: bool = False) -> str:
        value = self.values.get(name, "")
        if value:
            return value
        if required:
            self.problems.append(f"{name} is not set")
        return default or ""

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.values.get(name, "")
        if not raw:
            return default
        try:
            number = int(raw)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            shown = "a secret value" if name in SECRET_VARIABLES else repr(raw)
            self.problems.append(
                f"{name} must be a whole number from {low} to {high} (got {shown})"
            )
            return default
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.values.get(name, "")
        if not raw:
            return default
        try:
            number = float(raw)
        except ValueError:
            number = None
        if number is None or not low < number <= high:
            self.problems.append(
                f"{name} must be a number above {low:g} and at most {high:g} (got {raw!r})"
            )
            return default
        return number

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.values.get(name, "").lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false (got {raw!r})")
        return default

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        raw = self.values.get(name, "") or default
        if raw.lower() not in [c.lower() for c in choices]:
            self.problems.append(f"{name} must be one of {', '.join(choices)} (got {raw!r})")
            return default
        return next(c for c in choices if c.lower() == raw.lower())

    def base_url(self) -> str:
        raw = self.text("ITERABLE_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        problem = url_problem(raw, "ITERABLE_BASE_URL")
        if problem:
            self.problems.append(problem)
        return raw

    def optional_url(self, name: str) -> str | None:
        raw = self.text(name)
        if not raw:
            return None
        problem = url_problem(raw.rstrip("/"), name)
        if problem:
            self.problems.append(problem)
            return None
        return raw.rstrip("/")

    def rate_limits(self) -> dict[str, float]:
        limits = {}
        for endpoint, variable in RATE_LIMIT_VARIABLES.items():
            limits[endpoint] = self.number(variable, DEFAULT_RATE_LIMITS[endpoint], 0, 100_000)
        return limits

    def build(self) -> Settings:
        dry_run = bool(self.args.dry_run)
        # A dry run and a check of the database alone need no key; everything else does.
        needs_key = not dry_run
        results_dir = Path(self.text("RESULTS_DIR", "."))
        log_file = Path(self.text("LOG_FILE", "iterable_integration.log"))
        settings = Settings(
            mysql_host=self.text("MYSQL_HOST", "127.0.0.1"),
            mysql_port=self.integer("MYSQL_PORT", 3306, 1, 65535),
            mysql_user=self.text("MYSQL_USER", required=True),
            mysql_password=self.values.get("MYSQL_PASSWORD", ""),
            mysql_database=self.text("MYSQL_DATABASE", required=True),
            mysql_ssl_ca=Path(self.text("MYSQL_SSL_CA")) if self.text("MYSQL_SSL_CA") else None,
            mysql_ssl_verify_identity=self.boolean("MYSQL_SSL_VERIFY_IDENTITY", False),
            mysql_connect_timeout=self.number("MYSQL_CONNECT_TIMEOUT_SECONDS", 10.0, 0, 300),
            iterable_api_key=self.text("ITERABLE_API_KEY", required=needs_key),
            iterable_base_url=self.base_url(),
            candidate_name=self.text("CANDIDATE_NAME") or None,
            plan_type=self.text("PLAN_TYPE", "pro"),
            lookback_days=self.integer("LOOKBACK_DAYS", 7, 1, MAX_LOOKBACK_DAYS),
            request_timeout=self.number("REQUEST_TIMEOUT_SECONDS", 10.0, 0, 300),
            max_attempts=self.integer("MAX_ATTEMPTS", 5, 1, 20),
            log_level=self.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            log_file=log_file,
            results_dir=results_dir,
            lock_file=Path(self.text("LOCK_FILE", "iterable_sync.lock")),
            mode=self.choice("SYNC_MODE", "single", MODES),
            concurrency=self.integer("CONCURRENCY", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY),
            bulk_batch_size=self.integer("BULK_BATCH_SIZE", DEFAULT_BULK_USERS, 1, MAX_BULK_USERS),
            events_batch_size=self.integer(
                "EVENTS_BATCH_SIZE", DEFAULT_BULK_EVENTS, 1, MAX_BULK_EVENTS
            ),
            rate_limits=self.rate_limits(),
            sync_state_path=Path(self.text("SYNC_STATE_PATH", "iterable_sync_state.sqlite3")),
            healthcheck_url=self.optional_url("HEALTHCHECK_URL"),
            metrics_file=Path(self.text("METRICS_FILE")) if self.text("METRICS_FILE") else None,
            dry_run=dry_run,
            full_refresh=bool(self.args.full_refresh),
            check_only=bool(self.args.check),
        )
        self.check_paths(settings)
        if self.problems:
            raise ConfigError("; ".join(self.problems))
        return settings

    def check_paths(self, settings: Settings) -> None:
        if settings.mysql_ssl_ca and not settings.mysql_ssl_ca.is_file():
            self.problems.append(f"MYSQL_SSL_CA {settings.mysql_ssl_ca} is not a readable file")
        elif settings.mysql_ssl_ca and not _holds_certificates(settings.mysql_ssl_ca):
            self.problems.append(
                f"MYSQL_SSL_CA {settings.mysql_ssl_ca} holds no PEM certificate we can load"
            )
        if not settings.results_dir.is_dir():
            self.problems.append(f"RESULTS_DIR {settings.results_dir} is not a directory")
        elif not _can_create_files_in(settings.results_dir):
            self.problems.append(f"RESULTS_DIR {settings.results_dir} is not writable")
        for name, path in (
            ("LOG_FILE", settings.log_file),
            ("LOCK_FILE", settings.lock_file),
            ("SYNC_STATE_PATH", settings.sync_state_path),
            ("METRICS_FILE", settings.metrics_file),
        ):
            if path is not None and not _parent_writable(path):
                self.problems.append(
                    f"{name} {path}: its directory does not exist or is not writable"
                )


def _holds_certificates(path: Path) -> bool:
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError):
        return False
    return True


def _can_create_files_in(directory: Path) -> bool:
    """Try it: permission bits do not tell about read-only mounts, and root ignores them."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _parent_writable(path: Path) -> bool:
    parent = path.parent if str(path.parent) else Path(".")
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def url_problem(url: str, name: str) -> str | None:
    """Why an Iterable base URL is unsafe or malformed, or None when it is fine."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"{name} has an invalid port (got {url!r})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name} must be an https URL (got {url!r})"
    if parts.username or parts.password or parts.query or parts.fragment:
        return f"{name} must not carry credentials, a query or a fragment"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (
            f"{name} must use https; plain http is allowed only for a loopback host (got {url!r})"
        )
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
