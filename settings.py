"""Settings: read once from .env, the environment and the command line, validated together.

`VARIABLES` is the one list of what can be configured: the validator reads its defaults,
and `.env.example` and the README's variables table are generated from it
(`python -m devtools.docs`; a test fails when they drift).

Values are taken literally: `.env` is read without `$VARIABLE` expansion, and a quoted
value keeps its spaces. Relative paths in settings are relative to the project directory
(where main.py is), so a run from cron in another working directory uses the same files;
paths given on the command line (--env-file, --results-dir) are relative to the working
directory, as for any other command.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from dotenv import dotenv_values

from db_connection import ConnectionSettings
from exit_codes import EXIT_CODES
from rate_limit import DEFAULT_RATE_LIMITS, PUBLISHED_RATE_LIMITS
from version import VERSION

PROJECT_DIR = Path(__file__).resolve().parent
ENV_FILE = ".env"
DEFAULT_BASE_URL = "https://api.iterable.com"
MODES = ("single", "bulk")
IDENTIFY_BY = ("email", "userId")
STATE_STORES = ("sqlite", "mysql")
ON_DELETED = ("keep", "delete")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_LOOKBACK_DAYS = 3650
MAX_CONCURRENCY = 256
# Each user is two requests in a row (~100 ms at Iterable's usual latency), so reaching
# 500 users/s needs ~60 users in flight; 128 leaves room for slower answers (make bench).
DEFAULT_CONCURRENCY = 128
# Iterable caps bulk bodies at 4 MB and documents no record count; 1,000 users (and
# 2,000 events) a request is what integrations use, so those stay the defaults. Every
# body is cut at 4 MB whatever the count, and a batch refused as too large is halved.
DEFAULT_BULK_USERS = 1000
DEFAULT_BULK_EVENTS = 2000
MAX_BULK_RECORDS = 20_000


@dataclass(frozen=True)
class Variable:
    """One setting: its name, its default as written in .env, and what it means."""

    name: str
    section: str
    help: str
    default: str = ""
    # The value .env.example shows when it differs from the default (e.g. a user name).
    example: str | None = None
    required: str = ""  # when set, says when the variable is required
    secret: bool = False
    flag: str | None = None  # the command-line flag that overrides it
    path: bool = False  # a file or directory: relative to the project directory


MYSQL, ITERABLE, WHAT, HOW, FILES, STATE, MONITORING = (
    "MySQL (a read-only user is enough: SELECT on customers and page_views)",
    "Iterable",
    "What to sync",
    "How to sync",
    "Files",
    "Sync state in MySQL (for hosts that keep no disk between runs)",
    "Monitoring (optional)",
)

# list subscribe and unsubscribe calls share one pace
LISTS_LIMIT = "lists"
RATE_LIMIT_VARIABLES = {
    "users/update": "RATE_LIMIT_USERS_UPDATE",
    "events/track": "RATE_LIMIT_EVENTS_TRACK",
    "users/bulkUpdate": "RATE_LIMIT_USERS_BULK_UPDATE",
    "events/trackBulk": "RATE_LIMIT_EVENTS_TRACK_BULK",
}


def _rate_limit_variables() -> tuple[Variable, ...]:
    return tuple(
        Variable(
            variable,
            HOW,
            f"{endpoint} requests per second (Iterable allows "
            f"{PUBLISHED_RATE_LIMITS[endpoint]:g} per project, shared with your other "
            "integrations)",
            f"{DEFAULT_RATE_LIMITS[endpoint]:g}",
        )
        for endpoint, variable in RATE_LIMIT_VARIABLES.items()
    )


VARIABLES: tuple[Variable, ...] = (
    Variable("MYSQL_HOST", MYSQL, "MySQL server host", "127.0.0.1"),
    Variable("MYSQL_PORT", MYSQL, "MySQL server port", "3306"),
    Variable(
        "MYSQL_USER", MYSQL, "user the job connects as", example="iterable_sync", required="always"
    ),
    Variable("MYSQL_PASSWORD", MYSQL, "that user's password", example="change-me", secret=True),
    Variable(
        "MYSQL_DATABASE",
        MYSQL,
        "database holding the customers and page_views tables",
        example="product",
        required="always",
    ),
    Variable(
        "MYSQL_UNIX_SOCKET",
        MYSQL,
        "path of the server's Unix socket; when set, used instead of MYSQL_HOST and MYSQL_PORT",
        path=True,
    ),
    Variable(
        "MYSQL_SSL_CA",
        MYSQL,
        "CA certificate (PEM) to require and verify TLS to MySQL; empty means no TLS",
        path=True,
    ),
    Variable(
        "MYSQL_SSL_VERIFY_IDENTITY",
        MYSQL,
        "with MYSQL_SSL_CA: also check the server certificate's host name",
        "false",
    ),
    Variable("MYSQL_CONNECT_TIMEOUT_SECONDS", MYSQL, "seconds to wait for the connection", "10"),
    Variable(
        "ITERABLE_API_KEY",
        ITERABLE,
        "server-side API key (never on the command line)",
        secret=True,
        required="except with --dry-run",
    ),
    Variable(
        "ITERABLE_BASE_URL",
        ITERABLE,
        "the data center: https://api.iterable.com (US) or https://api.eu.iterable.com "
        "(EU); plain http only for a loopback host",
        DEFAULT_BASE_URL,
    ),
    Variable(
        "CANDIDATE_NAME",
        ITERABLE,
        "optional value sent as dataFields.candidate on every profile and event",
    ),
    Variable(
        "ITERABLE_IDENTIFY_BY",
        ITERABLE,
        "email: identify users by email (email-based projects); userId: by the customer id "
        "as a string, with the email in dataFields.email (userID-based and hybrid projects)",
        "email",
    ),
    Variable(
        "ITERABLE_LIST_ID",
        ITERABLE,
        "optional id of a static list whose members are kept equal to the segment",
    ),
    Variable(
        "ON_DELETED_CUSTOMER",
        ITERABLE,
        "keep: a customer deleted from the database is only counted; delete: also delete "
        "the user in Iterable",
        "keep",
    ),
    Variable(
        "LEAVE_GUARD_PERCENT",
        ITERABLE,
        "the mass-leave guard: when more than this share of the segment (and at least 3 "
        "customers) would leave in one run, nothing is sent for them and the run exits 3; "
        "100 turns it off. A real change goes through with --allow-mass-leave, for that run",
        "20",
    ),
    Variable("REQUEST_TIMEOUT_SECONDS", ITERABLE, "read timeout per request, in seconds", "10"),
    Variable(
        "MAX_ATTEMPTS",
        ITERABLE,
        "attempts per request on 429, 5xx, timeouts and dropped connections (1 = no retry)",
        "5",
    ),
    Variable(
        "OUTAGE_SECONDS",
        ITERABLE,
        "stop the run (exit 3) when no request to Iterable has succeeded for this many "
        "seconds (at most 3600); until then, failing requests slow the run to one at a time",
        "30",
    ),
    Variable("PLAN_TYPE", WHAT, "customers on this plan ...", "pro", flag="--plan-type"),
    Variable(
        "LOOKBACK_DAYS",
        WHAT,
        "... whose latest page view is within this many days (1-3650)",
        "7",
        flag="--lookback-days",
    ),
    Variable(
        "SYNC_MODE",
        HOW,
        "single: users/update + events/track per user; bulk: users/bulkUpdate + events/trackBulk",
        "single",
        flag="--mode",
    ),
    Variable(
        "CONCURRENCY",
        HOW,
        f"users in flight at once in single mode (1-{MAX_CONCURRENCY})",
        str(DEFAULT_CONCURRENCY),
        flag="--concurrency",
    ),
    Variable(
        "BULK_BATCH_SIZE",
        HOW,
        f"users per users/bulkUpdate request (1-{MAX_BULK_RECORDS}); every body also stays "
        "under 4 MB, the only limit Iterable documents",
        str(DEFAULT_BULK_USERS),
        flag="--batch-size",
    ),
    Variable(
        "EVENTS_BATCH_SIZE",
        HOW,
        f"events per events/trackBulk request (1-{MAX_BULK_RECORDS}; under 4 MB as well)",
        str(DEFAULT_BULK_EVENTS),
    ),
    *_rate_limit_variables(),
    Variable(
        "RATE_LIMIT_LISTS",
        HOW,
        "lists/subscribe and lists/unsubscribe requests per second (Iterable publishes no "
        "limit for them)",
        "5",
    ),
    Variable(
        "LOG_LEVEL",
        FILES,
        "console log level: DEBUG, INFO, WARNING or ERROR (the log file always gets DEBUG)",
        "INFO",
        flag="--log-level",
    ),
    Variable(
        "LOG_FORMAT",
        FILES,
        "text, or json: one JSON object per log line for log collectors",
        "text",
    ),
    Variable(
        "LOG_FILE", FILES, "rotating log file (10 MB x 5)", "iterable_integration.log", path=True
    ),
    Variable(
        "RESULTS_DIR",
        FILES,
        "directory for integration_results_YYYYMMDD_HHMMSS.json files",
        ".",
        flag="--results-dir",
        path=True,
    ),
    Variable(
        "RESULTS_KEEP_DAYS",
        FILES,
        "results files (and their HTML reports) older than this many days are removed at "
        "the end of each run; 0 keeps everything",
        "30",
    ),
    Variable(
        "LOCK_FILE",
        FILES,
        "lock file that keeps two runs from overlapping",
        "iterable_sync.lock",
        path=True,
    ),
    Variable(
        "SYNC_STATE_PATH",
        FILES,
        "SQLite file remembering what Iterable accepted, so unchanged rows are not resent",
        "iterable_sync_state.sqlite3",
        path=True,
    ),
    Variable(
        "STATE_STORE",
        STATE,
        "sqlite: the state in SYNC_STATE_PATH; mysql: in STATE_MYSQL_DATABASE, with its run "
        "history and one lock for every host (a container, a CI runner, several hosts)",
        "sqlite",
    ),
    Variable(
        "STATE_MYSQL_DATABASE",
        STATE,
        "database holding the state and history tables (sql/state_schema.sql)",
        example="iterable_sync_state",
        required="with STATE_STORE=mysql",
    ),
    Variable("STATE_MYSQL_HOST", STATE, "state server host; empty: MYSQL_HOST"),
    Variable("STATE_MYSQL_PORT", STATE, "state server port; empty: MYSQL_PORT"),
    Variable("STATE_MYSQL_USER", STATE, "user for the state; empty: MYSQL_USER"),
    Variable(
        "STATE_MYSQL_PASSWORD", STATE, "that user's password; empty: MYSQL_PASSWORD", secret=True
    ),
    Variable(
        "STATE_MYSQL_UNIX_SOCKET",
        STATE,
        "state server's Unix socket; empty: MYSQL_UNIX_SOCKET",
        path=True,
    ),
    Variable(
        "HEALTHCHECK_URL",
        MONITORING,
        "healthchecks-style URL: pinged at <url>/start and at <url>/<exit code>",
    ),
    Variable(
        "METRICS_FILE",
        MONITORING,
        "Prometheus textfile for node_exporter's textfile collector",
        path=True,
    ),
)
BY_NAME = {variable.name: variable for variable in VARIABLES}
SECRET_VARIABLES = frozenset(v.name for v in VARIABLES if v.secret)
FLAG_VARIABLES = {v.flag.lstrip("-").replace("-", "_"): v.name for v in VARIABLES if v.flag}


class ConfigError(Exception):
    """The configuration or the command line is wrong; the message names every problem."""


@dataclass(frozen=True)
class Settings:
    database: ConnectionSettings
    iterable_api_key: str = field(repr=False)
    iterable_base_url: str
    identify_by: str
    list_id: int | None
    on_deleted_customer: str
    leave_guard_percent: int
    candidate_name: str | None
    plan_type: str
    lookback_days: int
    request_timeout: float
    max_attempts: int
    outage_seconds: float
    log_level: str
    log_format: str
    log_file: Path
    results_dir: Path
    results_keep_days: int
    lock_file: Path
    mode: str
    concurrency: int
    bulk_batch_size: int
    events_batch_size: int
    rate_limits: Mapping[str, float]
    sync_state_path: Path
    healthcheck_url: str | None
    metrics_file: Path | None
    # The MySQL store's connection (STATE_STORE=mysql), None for the SQLite file.
    state_database: ConnectionSettings | None = None
    dry_run: bool = False
    full_refresh: bool = False
    retry_outstanding: bool = False
    allow_mass_leave: bool = False
    check_only: bool = False

    def secrets(self) -> list[str]:
        """Values that must never be written to a log, a message or a file."""
        state = self.state_database.password if self.state_database else ""
        return [s for s in (self.iterable_api_key, self.database.password, state) if s]


class ArgumentParser(argparse.ArgumentParser):
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


def _exit_code_epilog() -> str:
    codes = ", ".join(
        f"{code} {meaning.split(':')[0].split(';')[0]}" for code, meaning in EXIT_CODES.items()
    )
    return (
        "Settings come from .env, then the environment, then these flags. The API key is "
        f"read from ITERABLE_API_KEY only. Exit codes: {codes}."
    )


COMMANDS_HELP = """commands:
  (none)                run the sync with the options above
  report RESULTS.json   write an HTML report of a results file (main.py report --help)
  state copy SQLITE_FILE [--force]
                        copy a SQLite sync state into the MySQL store (STATE_STORE=mysql);
                        reads the same settings as a run (--env-file too)"""


def build_parser() -> argparse.ArgumentParser:
    """The sync's command line; `report` is a subcommand with a parser of its own."""
    parser = ArgumentParser(
        prog="main.py",
        usage="%(prog)s [options]\n       %(prog)s report RESULTS.json [--output HTML] [--csv CSV]",
        description=(
            "Send recently active customers of one plan from MySQL to Iterable:\n"
            "a users/update and a page_view event per customer.\n"
            "A customer whose email changed has their Iterable profile moved to the new\n"
            "email; one who leaves the segment has their changed fields sent once (and,\n"
            "with ITERABLE_LIST_ID, leaves the list); one deleted from the database is\n"
            "deleted in Iterable only with ON_DELETED_CUSTOMER=delete."
        ),
        epilog=COMMANDS_HELP + "\n\n" + _exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"iterable-sync {VERSION}")
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="read settings from PATH (default: .env beside main.py)",
    )
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
        help="send every qualifying user and event again, ignoring what the sync state says "
        "was sent (email moves, forgotten users, leavers and the list still count)",
    )
    parser.add_argument(
        "--retry-outstanding",
        action="store_true",
        help="send the rows Iterable refused for good once more (after a fix in Iterable)",
    )
    parser.add_argument(
        "--allow-mass-leave",
        action="store_true",
        help="let this run act on more leavers than LEAVE_GUARD_PERCENT allows (a real change)",
    )
    parser.set_defaults(command=None)
    return parser


def build_report_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="main.py report",
        description="Write a self-contained HTML report of a results file.",
    )
    parser.add_argument("results", type=Path, help="a results JSON file written by a run")
    parser.add_argument(
        "--output", "-o", type=Path, help="HTML file to write (default: RESULTS with .html)"
    )
    parser.add_argument(
        "--csv", type=Path, metavar="PATH", help="also write the failed and outstanding rows as CSV"
    )
    parser.set_defaults(command="report")
    return parser


def build_state_copy_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="main.py state copy",
        description="Copy a SQLite sync state into the MySQL store the settings name.",
    )
    parser.add_argument("source", type=Path, metavar="SQLITE_FILE", help="a sync state file")
    parser.add_argument(
        "--force", action="store_true", help="replace a state the MySQL store already holds"
    )
    parser.add_argument("--env-file", metavar="PATH", help="read settings from PATH")
    return parser


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; `command` is "report", "state copy" or None (the sync).

    Not argparse subparsers: they would take a stray value (a key passed as a flag's
    value) for a command name and echo it in the error.
    """
    argv = list(argv)
    if argv[:1] == ["report"]:
        return build_report_parser().parse_args(argv[1:])
    if argv[:2] == ["state", "copy"]:
        copy = build_state_copy_parser().parse_args(argv[2:])
        # The settings of a run, read as a run reads them.
        args = build_parser().parse_args(["--env-file", copy.env_file] if copy.env_file else [])
        args.command, args.source, args.force = "state copy", copy.source, copy.force
        return args
    return build_parser().parse_args(argv)


def load_settings(
    argv: Sequence[str] | argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    project_dir: Path = PROJECT_DIR,
) -> Settings:
    """Parse flags, merge .env < environment < flags, validate, and report all problems at once.

    `project_dir` is where `.env` is looked for and what relative paths in settings are
    relative to.
    """
    args = argv if isinstance(argv, argparse.Namespace) else parse_command_line(argv)
    environ = os.environ if environ is None else environ
    env_path = Path(args.env_file) if args.env_file else project_dir / ENV_FILE
    values = _read_env_file(env_path, required=bool(args.env_file))
    values.update({k: _from_environment(k, v) for k, v in environ.items() if k in BY_NAME})
    for flag, variable in FLAG_VARIABLES.items():
        value = getattr(args, flag)
        if value is not None:
            values[variable] = _from_command_line(variable, str(value))
    not_found = None if args.env_file or env_path.exists() else env_path
    return _Validator(values, args, project_dir, not_found).build()


# A MySQL password may begin or end with a space; every other value is trimmed.
VERBATIM_VARIABLES = frozenset({"MYSQL_PASSWORD", "STATE_MYSQL_PASSWORD"})


def _from_environment(name: str, value: str) -> str:
    """An environment variable has no quotes to say its spaces are meant, so they are not."""
    return value if name in VERBATIM_VARIABLES else value.strip()


def _from_command_line(name: str, value: str) -> str:
    value = value.strip()
    if BY_NAME[name].path and value:
        return str(Path.cwd() / value)  # a path typed on the command line: from here
    return value


def _read_env_file(env_path: Path, required: bool) -> dict[str, str]:
    """The file's settings as written: no `$VAR` expansion, quoted values keep their spaces.

    python-dotenv trims unquoted values and keeps quoted ones as they are.
    """
    if not env_path.exists():
        if required:
            raise ConfigError(f"env file {env_path} does not exist")
        return {}
    try:
        with env_path.open(encoding="utf-8") as stream:
            raw = dotenv_values(stream=stream, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read env file {env_path}: {reason}") from None
    return {k: v for k, v in raw.items() if k in BY_NAME and v is not None}


class _Validator:
    """Turns raw strings into typed values, collecting every problem instead of stopping at one.

    A variable that is not set takes its default from VARIABLES. `env_file_not_found`
    is the .env path that was looked for and not found, named when settings are missing.
    """

    def __init__(
        self,
        values: Mapping[str, str],
        args: argparse.Namespace,
        project_dir: Path,
        env_file_not_found: Path | None = None,
    ) -> None:
        self.values = dict(values)
        self.args = args
        self.project_dir = project_dir
        self.env_file_not_found = env_file_not_found
        self.problems: list[str] = []
        self.missing: list[str] = []

    def raw(self, name: str) -> str:
        return self.values.get(name, "") or BY_NAME[name].default

    def text(self, name: str, required: bool = False) -> str:
        value = self.raw(name)
        if not value.strip() and required:
            self.problems.append(f"{name} is not set")
            self.missing.append(name)
        return value

    def path(self, name: str) -> Path:
        # An absolute value replaces project_dir in the join.
        return self.project_dir / self.raw(name)

    def optional_path(self, name: str) -> Path | None:
        return self.path(name) if self.raw(name) else None

    def integer(self, name: str, low: int, high: int) -> int:
        """The variable as a whole number in range, or a problem recorded."""
        raw = self.raw(name)
        try:
            number = int(raw)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            shown = "a secret value" if name in SECRET_VARIABLES else repr(raw)
            self.problems.append(
                f"{name} must be a whole number from {low} to {high} (got {shown})"
            )
            # Settings are not built once a problem is found; any number stands in.
            return low
        return number

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        return self.integer(name, low, high) if self.raw(name) else None

    def number(self, name: str, low: float, high: float) -> float:
        raw = self.raw(name)
        try:
            number = float(raw)
        except ValueError:
            number = None
        if number is None or not low < number <= high:
            self.problems.append(
                f"{name} must be a number above {low:g} and at most {high:g} (got {raw!r})"
            )
            return float(BY_NAME[name].default)
        return number

    def boolean(self, name: str) -> bool:
        raw = self.raw(name).lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false (got {raw!r})")
        return BY_NAME[name].default == "true"

    def choice(self, name: str, choices: Sequence[str]) -> str:
        raw = self.raw(name)
        if raw.lower() not in [c.lower() for c in choices]:
            self.problems.append(f"{name} must be one of {', '.join(choices)} (got {raw!r})")
            return BY_NAME[name].default
        return next(c for c in choices if c.lower() == raw.lower())

    def base_url(self) -> str:
        raw = self.text("ITERABLE_BASE_URL").rstrip("/")
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
        limits = {
            endpoint: self.number(variable, 0, 100_000)
            for endpoint, variable in RATE_LIMIT_VARIABLES.items()
        }
        limits[LISTS_LIMIT] = self.number("RATE_LIMIT_LISTS", 0, 100_000)
        return limits

    def database(self) -> ConnectionSettings:
        return ConnectionSettings(
            host=self.text("MYSQL_HOST"),
            port=self.integer("MYSQL_PORT", 1, 65535),
            unix_socket=self.optional_path("MYSQL_UNIX_SOCKET"),
            user=self.text("MYSQL_USER", required=True),
            password=self.values.get("MYSQL_PASSWORD", ""),
            database=self.text("MYSQL_DATABASE", required=True),
            connect_timeout=self.number("MYSQL_CONNECT_TIMEOUT_SECONDS", 0, 300),
            ssl_ca=self.optional_path("MYSQL_SSL_CA"),
            ssl_verify_identity=self.boolean("MYSQL_SSL_VERIFY_IDENTITY"),
        )

    def state_database(self, source: ConnectionSettings) -> ConnectionSettings | None:
        """The MySQL store's connection: the source's, with the STATE_MYSQL_* set."""
        if self.choice("STATE_STORE", STATE_STORES) != "mysql":
            return None
        socket = self.optional_path("STATE_MYSQL_UNIX_SOCKET")
        port = self.optional_integer("STATE_MYSQL_PORT", 1, 65535)
        password = self.values.get("STATE_MYSQL_PASSWORD", "")
        return replace(
            source,
            host=self.text("STATE_MYSQL_HOST") or source.host,
            port=source.port if port is None else port,
            user=self.text("STATE_MYSQL_USER") or source.user,
            password=password or source.password,
            unix_socket=socket or source.unix_socket,
            database=self.text("STATE_MYSQL_DATABASE", required=True),
        )

    def build(self) -> Settings:
        dry_run = bool(self.args.dry_run)
        database = self.database()
        settings = Settings(
            database=database,
            # A dry run and a check of the database alone need no key; everything else does.
            iterable_api_key=self.text("ITERABLE_API_KEY", required=not dry_run),
            iterable_base_url=self.base_url(),
            identify_by=self.choice("ITERABLE_IDENTIFY_BY", IDENTIFY_BY),
            list_id=self.optional_integer("ITERABLE_LIST_ID", 1, 2**63 - 1),
            on_deleted_customer=self.choice("ON_DELETED_CUSTOMER", ON_DELETED),
            leave_guard_percent=self.integer("LEAVE_GUARD_PERCENT", 0, 100),
            candidate_name=self.text("CANDIDATE_NAME") or None,
            plan_type=self.text("PLAN_TYPE"),
            lookback_days=self.integer("LOOKBACK_DAYS", 1, MAX_LOOKBACK_DAYS),
            request_timeout=self.number("REQUEST_TIMEOUT_SECONDS", 0, 300),
            max_attempts=self.integer("MAX_ATTEMPTS", 1, 20),
            outage_seconds=self.number("OUTAGE_SECONDS", 0, 3600),
            log_level=self.choice("LOG_LEVEL", LOG_LEVELS),
            log_format=self.choice("LOG_FORMAT", LOG_FORMATS),
            log_file=self.path("LOG_FILE"),
            results_dir=self.path("RESULTS_DIR"),
            results_keep_days=self.integer("RESULTS_KEEP_DAYS", 0, 36500),
            lock_file=self.path("LOCK_FILE"),
            mode=self.choice("SYNC_MODE", MODES),
            concurrency=self.integer("CONCURRENCY", 1, MAX_CONCURRENCY),
            bulk_batch_size=self.integer("BULK_BATCH_SIZE", 1, MAX_BULK_RECORDS),
            events_batch_size=self.integer("EVENTS_BATCH_SIZE", 1, MAX_BULK_RECORDS),
            rate_limits=self.rate_limits(),
            sync_state_path=self.path("SYNC_STATE_PATH"),
            healthcheck_url=self.optional_url("HEALTHCHECK_URL"),
            metrics_file=self.optional_path("METRICS_FILE"),
            state_database=self.state_database(database),
            dry_run=dry_run,
            full_refresh=bool(self.args.full_refresh),
            retry_outstanding=bool(self.args.retry_outstanding),
            allow_mass_leave=bool(self.args.allow_mass_leave),
            check_only=bool(self.args.check),
        )
        self.check_paths(settings)
        if self.missing and self.env_file_not_found is not None:
            self.problems.append(
                f"no settings file at {self.env_file_not_found} (copy .env.example there, "
                "or name one with --env-file)"
            )
        if self.problems:
            raise ConfigError("; ".join(self.problems))
        return settings

    def check_paths(self, settings: Settings) -> None:
        unix_socket = settings.database.unix_socket
        # A missing socket usually means the server is down: a database failure at connect
        # time (exit 3). Something else at that path is a configuration mistake.
        if unix_socket is not None and unix_socket.exists() and not unix_socket.is_socket():
            self.problems.append(f"MYSQL_UNIX_SOCKET {unix_socket} is not a socket")
        ssl_ca = settings.database.ssl_ca
        if ssl_ca and not ssl_ca.is_file():
            self.problems.append(f"MYSQL_SSL_CA {ssl_ca} is not a readable file")
        elif ssl_ca and not _holds_certificates(ssl_ca):
            self.problems.append(f"MYSQL_SSL_CA {ssl_ca} holds no PEM certificate we can load")
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
