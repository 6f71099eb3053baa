"""Monitoring for scheduled runs: healthchecks-style pings and a Prometheus textfile."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from http_connections import NoAnswer, describe_connection_error, open_connections
from results import write_atomically
from version import VERSION

log = logging.getLogger(__name__)

PING_TIMEOUT_SECONDS = 5.0
LAST_SUCCESS = "iterable_sync_last_success_timestamp_seconds"
_LAST_SUCCESS_LINE = re.compile(rf"^{LAST_SUCCESS} ([0-9.e+]+)$", re.MULTILINE)


def ping(url: str | None, suffix: str) -> None:
    """GET <url>/<suffix> ("start", or the exit code); a failed ping never fails the run.

    The request's timeout bounds each connect and each read, not the whole exchange: a
    server that trickles its answer a byte at a time would hold the run for as long as
    it likes. So the ping runs in a daemon thread, and the run waits PING_TIMEOUT_SECONDS
    for it at most.
    """
    if not url:
        return
    target = f"{url}/{suffix}" if suffix else url
    name = suffix or "success"
    thread = threading.Thread(target=_get, args=(target, name), name="ping", daemon=True)
    thread.start()
    thread.join(PING_TIMEOUT_SECONDS)
    if thread.is_alive():
        log.warning("health check ping %s failed: no answer within %gs", name, PING_TIMEOUT_SECONDS)


def _get(target: str, name: str) -> None:
    """GET `target` over the transport the client uses (proxy and CA bundle included)."""
    parts = urlsplit(target)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": f"iterable-sync/{VERSION}"}
    timeouts = (PING_TIMEOUT_SECONDS, PING_TIMEOUT_SECONDS)
    transport = open_connections(f"{parts.scheme}://{parts.netloc}", headers, timeouts)
    try:
        transport.request("GET", path, None)
    except NoAnswer as exc:
        log.warning("health check ping %s failed: %s", name, describe_connection_error(exc.cause))
    finally:
        transport.close()


def metrics_text(
    exit_code: int,
    duration: float,
    summary: Mapping[str, int],
    rows_read: int,
    api: Mapping[str, Any],
    last_success: float | None,
    now: float,
) -> str:
    """The run's numbers in the Prometheus text exposition format."""
    lines = [
        "# HELP iterable_sync_rows_read Rows Query 2 returned in the last run.",
        "# TYPE iterable_sync_rows_read gauge",
        f"iterable_sync_rows_read {rows_read}",
        "# HELP iterable_sync_rows Rows of the last run by outcome.",
        "# TYPE iterable_sync_rows gauge",
    ]
    for status in ("succeeded", "failed", "skipped"):
        lines.append(f'iterable_sync_rows{{status="{status}"}} {summary.get(status, 0)}')
    lines += [
        "# HELP iterable_sync_rows_outstanding Failed rows that had already failed on an "
        "earlier run, data unchanged.",
        "# TYPE iterable_sync_rows_outstanding gauge",
        f"iterable_sync_rows_outstanding {summary.get('outstanding', 0)}",
        "# HELP iterable_sync_rows_left Customers who left the segment in the last run.",
        "# TYPE iterable_sync_rows_left gauge",
        f"iterable_sync_rows_left {summary.get('left', 0)}",
    ]
    lines += [
        "# HELP iterable_sync_requests API requests of the last run by endpoint and HTTP status.",
        "# TYPE iterable_sync_requests gauge",
    ]
    for endpoint, statuses in sorted((api.get("requests") or {}).items()):
        for status, count in sorted(statuses.items()):
            lines.append(
                f'iterable_sync_requests{{endpoint="{endpoint}",status="{status}"}} {count}'
            )
    lines += [
        "# HELP iterable_sync_retries Retried API requests of the last run by endpoint.",
        "# TYPE iterable_sync_retries gauge",
    ]
    for endpoint, count in sorted((api.get("retries") or {}).items()):
        lines.append(f'iterable_sync_retries{{endpoint="{endpoint}"}} {count}')
    lines += [
        "# HELP iterable_sync_run_duration_seconds Wall time of the last run.",
        "# TYPE iterable_sync_run_duration_seconds gauge",
        f"iterable_sync_run_duration_seconds {duration:.3f}",
        "# HELP iterable_sync_last_exit_code Exit code of the last run.",
        "# TYPE iterable_sync_last_exit_code gauge",
        f"iterable_sync_last_exit_code {exit_code}",
        "# HELP iterable_sync_last_run_timestamp_seconds When the last run finished.",
        "# TYPE iterable_sync_last_run_timestamp_seconds gauge",
        f"iterable_sync_last_run_timestamp_seconds {now:.3f}",
    ]
    if last_success is not None:
        lines += [
            f"# HELP {LAST_SUCCESS} When a run last finished with exit code 0.",
            f"# TYPE {LAST_SUCCESS} gauge",
            f"{LAST_SUCCESS} {last_success:.3f}",
        ]
    return "\n".join(lines) + "\n"


def previous_last_success(path: Path) -> float | None:
    """Carry the last success time over a failed run, from the file the last run wrote."""
    try:
        match = _LAST_SUCCESS_LINE.search(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return float(match.group(1)) if match else None


def write_metrics(path: Path, text: str) -> None:
    """Atomic: node_exporter never reads a half-written file."""
    write_atomically(path, lambda out: out.write(text))
