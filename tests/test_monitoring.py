"""Monitoring: healthchecks-style pings and the Prometheus textfile, against a real HTTP server.

Pings: `<url>/start` when a run starts and `<url>/<exit code>` when it ends. A configuration
error (exit 2 from the settings) stops the job before the first ping: the settings that
hold HEALTHCHECK_URL are themselves unusable, so the check goes overdue instead. Errors
found once the run has started (a corrupt state file, 2; another run holding the lock, 4)
are pinged like any other exit code. A ping never changes the exit code and never holds
the run for long, whatever the monitoring server does.
"""

from __future__ import annotations

import fcntl
import http.server
import math
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import monitoring
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER, SEED_QUALIFYING

SENT = len(SEED_QUALIFYING) - 1


# -- a tiny healthchecks server ------------------------------------------------------------


@dataclass
class PingServer:
    url: str
    paths: list[str] = field(default_factory=list)
    behaviour: str = "ok"  # ok | hang | trickle
    release: threading.Event = field(default_factory=threading.Event)


def _handler(ping: PingServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            ping.paths.append(self.path)
            if ping.behaviour == "hang":
                ping.release.wait(60)
            if ping.behaviour == "trickle":
                # A byte of the status line at a time, each well within the read timeout.
                for char in b"HTTP/1.1 200 OK\r\n":
                    if ping.release.wait(1.0):
                        return
                    self.wfile.write(bytes([char]))
                    self.wfile.flush()
                return
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def ping_server() -> Iterator[PingServer]:
    ping = PingServer(url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(ping))
    server.daemon_threads = True
    ping.url = f"http://127.0.0.1:{server.server_address[1]}/ping/abc-123"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ping
    finally:
        ping.release.set()
        server.shutdown()
        server.server_close()


def pings(ping: PingServer) -> list[str]:
    prefix = "/ping/abc-123/"
    assert all(p.startswith(prefix) for p in ping.paths), ping.paths
    return [p[len(prefix) :] for p in ping.paths]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fix_the_malformed_email(mariadb, seeded_db) -> None:
    mariadb.execute(
        "UPDATE customers SET email = 'fixed@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=seeded_db.name,
    )


# -- pings ----------------------------------------------------------------------------------


def test_success_pings_start_then_zero(job, ping_server, mariadb, seeded_db):
    fix_the_malformed_email(mariadb, seeded_db)
    run = job.run(HEALTHCHECK_URL=ping_server.url)
    assert run.code == 0, run.stderr
    assert pings(ping_server) == ["start", "0"]


def test_failed_rows_ping_one(job, ping_server):
    run = job.run(HEALTHCHECK_URL=ping_server.url + "/")  # a trailing slash is tolerated
    assert run.code == 1
    assert pings(ping_server) == ["start", "1"]


def test_an_unreachable_database_pings_three(job, ping_server, sandbox):
    run = job.run(HEALTHCHECK_URL=ping_server.url, MYSQL_PORT=str(closed_port()))
    assert run.code == 3
    assert pings(ping_server) == ["start", "3"]


def test_a_rejected_key_pings_three(job, ping_server):
    run = job.run(HEALTHCHECK_URL=ping_server.url, ITERABLE_API_KEY="wrong")
    assert run.code == 3
    assert pings(ping_server) == ["start", "3"]


def test_a_configuration_error_pings_nothing(job, ping_server, sandbox):
    run = job.run(HEALTHCHECK_URL=ping_server.url, LOOKBACK_DAYS="-1")
    assert run.code == 2
    assert ping_server.paths == []


def test_a_corrupt_state_file_pings_two(job, ping_server):
    job.state_file.write_bytes(b"not a database" * 100)
    run = job.run(HEALTHCHECK_URL=ping_server.url)
    assert run.code == 2
    assert pings(ping_server) == ["start", "2"]


def test_a_run_that_finds_the_lock_held_pings_four(job, ping_server, sandbox):
    fd = os.open(job.env["LOCK_FILE"], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = job.run(HEALTHCHECK_URL=ping_server.url)
    finally:
        os.close(fd)
    assert run.code == 4
    assert pings(ping_server) == ["start", "4"]
    assert sandbox.stats()["total_requests"] == 0


def test_check_and_report_commands_ping_nothing(job, ping_server):
    assert job.run("--check", HEALTHCHECK_URL=ping_server.url).code == 0
    results = job.run().results_path
    ping_server.paths.clear()
    report = job.run("report", str(results), HEALTHCHECK_URL=ping_server.url)
    assert report.code == 0, report.stderr
    assert ping_server.paths == []


def test_a_monitoring_server_that_is_down_never_fails_the_run(job):
    url = f"http://127.0.0.1:{closed_port()}/ping/abc"
    started = time.monotonic()
    run = job.run(HEALTHCHECK_URL=url)
    assert run.code == 1  # the rows decide, not the pings
    assert time.monotonic() - started < 10
    log = job.log_file.read_text()
    assert "health check ping start failed" in log and "health check ping 1 failed" in log
    assert run.results["summary"]["succeeded"] == SENT


@pytest.mark.parametrize("behaviour", ["hang", "trickle"])
def test_a_monitoring_server_that_hangs_holds_the_run_only_briefly(
    job, ping_server, mariadb, seeded_db, behaviour
):
    fix_the_malformed_email(mariadb, seeded_db)
    ping_server.behaviour = behaviour
    started = time.monotonic()
    run = job.run(HEALTHCHECK_URL=ping_server.url, timeout=60)
    elapsed = time.monotonic() - started
    assert run.code == 0, run.stderr
    assert pings(ping_server) == ["start", "0"]
    # Two pings, each given up after PING_TIMEOUT_SECONDS, plus the run itself.
    assert elapsed < 2 * monitoring.PING_TIMEOUT_SECONDS + 8, elapsed
    assert "health check ping start" in job.log_file.read_text()


# -- the metrics file -----------------------------------------------------------------------

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\""
    r"(?:,[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\")*)\})?"
    r" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|Inf))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_COMMENT = re.compile(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$")

Labels = frozenset[tuple[str, str]]


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """A strict reading of the text exposition format: every line a comment or a sample,
    every sample's family TYPEd before it, no family split, no duplicate series."""
    assert text.endswith("\n") and "\n\n" not in text
    families: dict[str, dict[Labels, float]] = {}
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current = None
    for line in text.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            kind, name, rest = comment.groups()
            if kind == "TYPE":
                assert name not in typed, f"TYPE {name} twice"
                assert rest in ("gauge", "counter", "untyped"), line
                typed[name] = rest
            continue
        assert not line.startswith("#"), line
        sample = _SAMPLE.match(line)
        assert sample, f"not a sample: {line!r}"
        name = sample["name"]
        assert name in typed, f"{name} has no TYPE line before it"
        if name != current:
            assert name not in finished, f"{name} is split"
            if current:
                finished.add(current)
            current = name
        labels = frozenset(_LABEL.findall(sample["labels"] or ""))
        series = families.setdefault(name, {})
        assert labels not in series, f"duplicate series {line}"
        series[labels] = float(sample["value"])
    return families


def value(metrics, name: str, **labels: str) -> float:
    return metrics[name][frozenset(labels.items())]


def test_metrics_after_a_run_with_retries_and_a_failed_row(job, sandbox):
    metrics_file = job.workdir / "metrics" / "iterable_sync.prom"
    metrics_file.parent.mkdir()
    sandbox.add_fault("status", endpoint="users/update", status=503, times=2, retry_after=0)
    run = job.run(METRICS_FILE=str(metrics_file))
    assert run.code == 1
    metrics = parse_metrics(metrics_file.read_text())
    assert value(metrics, "iterable_sync_rows_read") == len(SEED_QUALIFYING)
    assert value(metrics, "iterable_sync_rows", status="succeeded") == SENT
    assert value(metrics, "iterable_sync_rows", status="failed") == 1
    assert value(metrics, "iterable_sync_rows", status="skipped") == 0
    assert value(metrics, "iterable_sync_requests", endpoint="users/update", status="200") == SENT
    assert value(metrics, "iterable_sync_requests", endpoint="users/update", status="503") == 2
    assert value(metrics, "iterable_sync_requests", endpoint="events/track", status="200") == SENT
    assert value(metrics, "iterable_sync_retries", endpoint="users/update") == 2
    assert value(metrics, "iterable_sync_last_exit_code") == 1
    duration = value(metrics, "iterable_sync_run_duration_seconds")
    assert 0 < duration < 60
    assert abs(value(metrics, "iterable_sync_last_run_timestamp_seconds") - time.time()) < 60
    assert "iterable_sync_last_success_timestamp_seconds" not in metrics  # never succeeded
    assert stat.S_IMODE(metrics_file.stat().st_mode) == 0o600
    assert [p.name for p in metrics_file.parent.iterdir()] == [metrics_file.name]


def test_metrics_count_the_requests_a_rejected_key_got(job, sandbox):
    metrics_file = job.workdir / "iterable_sync.prom"
    run = job.run(METRICS_FILE=str(metrics_file), ITERABLE_API_KEY="not-the-key")
    assert run.code == 3
    refused = sandbox.request_count("users/update", 401)
    assert refused > 0
    metrics = parse_metrics(metrics_file.read_text())
    assert (
        value(metrics, "iterable_sync_requests", endpoint="users/update", status="401") == refused
    )
    assert run.results["run"]["api"]["requests"] == {"users/update": {"401": refused}}


def test_last_success_is_kept_across_failing_runs(job, sandbox, mariadb, seeded_db):
    metrics_file = job.workdir / "iterable_sync.prom"
    fix_the_malformed_email(mariadb, seeded_db)
    assert job.run(METRICS_FILE=str(metrics_file)).code == 0
    first = parse_metrics(metrics_file.read_text())
    success = value(first, "iterable_sync_last_success_timestamp_seconds")
    assert abs(success - time.time()) < 60
    inode = metrics_file.stat().st_ino

    mariadb.execute(
        "UPDATE customers SET email = 'broken' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=seeded_db.name,
    )
    assert job.run(METRICS_FILE=str(metrics_file)).code == 1
    failed = parse_metrics(metrics_file.read_text())
    assert value(failed, "iterable_sync_last_success_timestamp_seconds") == success
    assert value(failed, "iterable_sync_last_exit_code") == 1
    assert value(failed, "iterable_sync_last_run_timestamp_seconds") > success  # milliseconds
    # Second run: the incremental sync skipped the unchanged rows.
    assert value(failed, "iterable_sync_rows", status="skipped") == SENT
    assert metrics_file.stat().st_ino != inode  # replaced by a rename, never rewritten in place

    assert job.run(METRICS_FILE=str(metrics_file), MYSQL_PORT=str(closed_port())).code == 3
    aborted = parse_metrics(metrics_file.read_text())
    assert value(aborted, "iterable_sync_last_success_timestamp_seconds") == success
    assert value(aborted, "iterable_sync_last_exit_code") == 3
    assert value(aborted, "iterable_sync_rows_read") == 0


def test_an_unwritable_metrics_file_never_fails_the_run(job, tmp_path):
    target = tmp_path / "is-a-directory.prom"
    target.mkdir()
    run = job.run(METRICS_FILE=str(target))
    assert run.code == 1  # the rows decide
    assert "could not write METRICS_FILE" in job.log_file.read_text()
    assert list(tmp_path.glob(".metrics-*")) == []


def test_the_format_parser_rejects_what_prometheus_would():
    good = '# TYPE a gauge\na 1\n# TYPE b gauge\nb{x="1",y="z"} 2.5e3\n'
    assert parse_metrics(good)["b"][frozenset({("x", "1"), ("y", "z")})] == 2500
    for bad in (
        "a 1\n",  # no TYPE
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na{x=1} 1\n",
        "# TYPE a gauge\na 1\na 2\n",
        "# TYPE a gauge\na 1",
    ):
        with pytest.raises(AssertionError):
            parse_metrics(bad)
    assert math.isnan(parse_metrics("# TYPE a gauge\na NaN\n")["a"][frozenset()])


def test_metrics_text_round_trips_last_success(tmp_path: Path):
    path = tmp_path / "m.prom"
    text = monitoring.metrics_text(
        0, 1.5, {"succeeded": 3}, 3, {}, 1_700_000_000.0, now=1_700_000_123.25
    )
    assert "iterable_sync_last_run_timestamp_seconds 1700000123.250\n" in text
    monitoring.write_metrics(path, text)
    assert monitoring.previous_last_success(path) == 1_700_000_000.0
    assert monitoring.previous_last_success(tmp_path / "missing.prom") is None
