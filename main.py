"""iterable-sync: send recently active customers from MySQL to Iterable.

`main()` wires settings -> rows -> payloads -> client -> results, and is the only
place that turns an error into an exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import monitoring
import preflight
from db_connection import DatabaseConnection, DatabaseError, ReadAhead, RowSource
from exit_codes import EXIT_ABORTED, EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, run_exit_code
from iterable_client import IterableClient, RequestStats, RetryPolicy
from logger_config import setup_logging
from progress import Progress, is_terminal
from rate_limit import RateLimiters
from report import report_command
from results import Changes, ResultsWriter, Summary, remove_old_results
from segment import LeaveGuard, ListMirror, ListPreview, Lists, check_list_exists, stale_source
from settings import ConfigError, Settings, load_settings, parse_command_line
from state_mysql import LockTaken, MySQLState, StoreLock, copy_state
from sync import Outcome, Syncer, check_project
from sync_state import RESULTS_FILES, StateError, StateStore, SyncState
from version import VERSION

log = logging.getLogger("iterable_sync")

# Container objects allocated between two collections of the youngest generation (700 by
# default): a collection then comes every few thousand rows, not every few rows.
GC_YOUNG_OBJECTS = 100_000


class LockHeld(Exception):
    """Another run holds the lock file."""


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """A non-blocking exclusive OS lock: an overlapping cron run exits instead of sending twice."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another run holds the lock {path}; not starting") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


class StopNow:
    """What a second SIGTERM/SIGINT does: save the sync state and the results, exit 3 at
    once, without waiting for the requests in flight (each may take REQUEST_TIMEOUT_SECONDS)."""

    def __init__(self) -> None:
        self.save: Callable[[], None] = lambda: None

    def start(self) -> None:
        # Not in the signal handler itself: the handler interrupts the main thread, which
        # may be holding a lock the saving needs (the sync state's, the results writer's).
        threading.Thread(target=self._save_and_exit, name="stop-now", daemon=True).start()

    def _save_and_exit(self) -> None:
        try:
            self.save()
        except Exception:
            log.exception("could not save everything before stopping")
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            # Pool threads waiting on Iterable would hold up a normal exit.
            os._exit(EXIT_ABORTED)


@contextlib.contextmanager
def graceful_stop(stop: threading.Event, stop_now: StopNow) -> Iterator[None]:
    """SIGTERM and SIGINT ask the run to stop taking rows; in-flight work then finishes.
    A second one stops at once (StopNow)."""
    received = 0

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            log.warning(
                "%s received: finishing the rows in flight, then stopping (again: stop at once)",
                name,
            )
            stop.set()
        elif received == 2:
            log.warning("%s received again: saving the state and stopping at once", name)
            stop_now.start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunFiles:
    """The sync state and the results file of one run, closed once: when the run ends, or
    when a second signal stops it at once. Then requests may still be in flight, so the
    state is committed but left open for the threads waiting on them."""

    def __init__(
        self,
        settings: Settings,
        run_id: str,
        started_at: datetime,
        stats: RequestStats,
        state: StateStore | None,
        writer: ResultsWriter,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.started_at = started_at
        self.stats = stats
        self.state = state
        self.writer = writer
        self.path: Path | None = None
        self.warnings: list[str] = []  # run-level warnings, for the results file
        self._lock = threading.Lock()

    def close(self, outcome: Outcome, error: str | None, at_once: bool = False) -> Path:
        with self._lock:
            if self.path is None:
                if self.state is not None:
                    self.state.flush()
                run_info = run_details(
                    self.settings, self.run_id, self.started_at, outcome, self.stats, error
                )
                run_info["warnings"] = [
                    *(self.state.warnings if self.state else []),
                    *self.warnings,
                ]
                self.path = self.writer.finish(run_info, self.started_at)
                log.info("results written to %s", self.path)
                if self.state is not None:
                    code = (
                        EXIT_ABORTED if error else outcome_exit_code(outcome, self.writer.summary)
                    )
                    record_history(self.settings, self.state, run_info, self.writer.summary, code)
                    if not at_once:
                        self.state.close()
            return self.path


@dataclass
class RunReport:
    path: Path
    summary: Summary
    outcome: Outcome
    seconds: float
    api: dict[str, Any]


def make_client(settings: Settings, stop: threading.Event, stats: RequestStats) -> IterableClient:
    return IterableClient(
        api_key=settings.iterable_api_key,
        base_url=settings.iterable_base_url,
        timeout=settings.request_timeout,
        retry=RetryPolicy(max_attempts=settings.max_attempts),
        outage_seconds=settings.outage_seconds,
        limiters=RateLimiters(settings.rate_limits),
        stop=stop,
        stats=stats,
    )


def open_state(settings: Settings) -> StateStore | None:
    """The sync state; a dry run reads a state file when present but never creates one."""
    if settings.state_database is not None:
        return MySQLState(settings.state_database, settings.list_id, settings.results_dir)
    if settings.dry_run and not settings.sync_state_path.exists():
        return None
    return SyncState(settings.sync_state_path, settings.list_id, settings.results_dir)


def outcome_exit_code(outcome: Outcome, summary: Summary) -> int:
    cut_short = bool(outcome.aborted or outcome.stopped or outcome.held_back)
    return run_exit_code(cut_short, summary.new_failures)


def record_history(
    settings: Settings, state: StateStore, run: dict[str, Any], summary: Summary, code: int
) -> None:
    """The run into sync_runs (its rows went to sync_results as they were written), and
    runs older than RESULTS_KEEP_DAYS out of the history."""
    state.record_run(run, summary.to_dict(), code)
    if settings.results_keep_days:
        cutoff = datetime.now(UTC) - timedelta(days=settings.results_keep_days)
        removed = state.remove_runs_before(cutoff)
        if removed:
            log.info(
                "removed %d runs older than %d days from the run history",
                removed,
                settings.results_keep_days,
            )


def open_list(
    settings: Settings, client: IterableClient | None, state: StateStore | None
) -> Lists | None:
    """The list to mirror the segment into; Iterable must have it before the first call.
    A dry run decides the same list changes and sends none."""
    if settings.list_id is None:
        return None
    if client is None:
        return ListPreview(settings.list_id, settings.identify_by)
    if state is None:
        return None
    list_id = settings.list_id
    client.set_gate(lambda: check_list_exists(client, list_id))
    return ListMirror(client, state, list_id, settings.identify_by)


def run(settings: Settings, stop: threading.Event, stop_now: StopNow, run_id: str) -> RunReport:
    """One sync run; always writes a results file once rows have started to flow."""
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    stats = RequestStats()
    state = open_state(settings)
    client = None if settings.dry_run else make_client(settings, stop, stats)
    history = None if state is None else functools.partial(state.record_results, run_id)
    writer = ResultsWriter(settings.results_dir, also=history)
    files = RunFiles(settings, run_id, started_at, stats, state, writer)
    lists: Lists | None = None
    outcome = Outcome()
    progress: Progress | None = None
    syncer: Syncer | None = None
    error: str | None = None

    def save_at_once() -> None:
        if progress is not None:
            progress.finish()
        so_far = syncer.outcome if syncer is not None else outcome
        files.close(replace(so_far, stopped=True), None, at_once=True)

    stop_now.save = save_at_once
    try:
        if state is not None:
            files.warnings += lost_state_warnings(settings, state)
        if state is not None and client is not None:
            check_project(state, client, settings.identify_by, settings.full_refresh)
        lists = open_list(settings, client, state)
        syncer = Syncer(
            client=client,
            writer=writer,
            state=state,
            candidate=settings.candidate_name,
            full_refresh=settings.full_refresh,
            stop=stop,
            identify_by=settings.identify_by,
            lists=lists,
            delete_deleted=settings.on_deleted_customer == "delete",
            retry_outstanding=settings.retry_outstanding,
        )
        with DatabaseConnection(settings.database) as db:
            source = RowSource(db, settings.plan_type, settings.lookback_days)
            newest_view = source.newest_view()
            stale = stale_source(newest_view, settings.lookback_days, datetime.now(UTC))
            if stale:
                log.warning("%s", stale)
                files.warnings.append(stale)
            progress = start_progress(settings, source)
            syncer.on_rows = progress.advance
            syncer.on_leavers = progress.leavers
            guard = LeaveGuard(settings.leave_guard_percent, settings.allow_mass_leave, newest_view)
            outcome = sync_rows(settings, source, syncer, progress, guard)
    except DatabaseError as exc:
        error = str(exc)
        raise
    except Exception as exc:
        error = f"unexpected error: {type(exc).__name__}: {exc}"[:300]
        raise
    finally:
        if lists is not None:
            lists.close()
        if client is not None:
            client.close()
        path = files.close(outcome, error)
    return RunReport(path, writer.summary, outcome, time.monotonic() - clock, stats.snapshot())


def lost_state_warnings(settings: Settings, state: StateStore) -> list[str]:
    """A new (or empty) state beside results of earlier runs: the state was lost, and the
    run cannot see email changes or leavers since. Said once, on the console and in the
    results file."""
    if not state.is_new or not any(settings.results_dir.glob(RESULTS_FILES)):
        return []
    warning = (
        f"the sync state at {state.where} is new, but earlier runs wrote results here "
        f"({settings.results_dir}): email changes since then create second profiles in "
        "Iterable, and customers who left the segment are not seen; check SYNC_STATE_PATH"
    )
    log.warning("%s", warning)
    return [warning]


def start_progress(settings: Settings, source: RowSource) -> Progress:
    """Say what the run will do, and start the progress display."""
    # Counting runs Query 2 a second time (seconds at 100k rows), so only a
    # terminal, where the bar shows an ETA, pays for it; cron logs the rate.
    total = source.count() if is_terminal(sys.stderr) else None
    log.info(
        "syncing %s %s customers active in the last %d days; mode %s%s",
        "all" if total is None else total,
        settings.plan_type,
        settings.lookback_days,
        settings.mode,
        " (dry run)" if settings.dry_run else "",
    )
    return Progress(total)


def sync_rows(
    settings: Settings, source: RowSource, syncer: Syncer, progress: Progress, guard: LeaveGuard
) -> Outcome:
    """Query 2's rows through the syncer, then the customers who left the segment."""
    rows = ReadAhead(source.chunks())
    try:
        if settings.mode == "bulk" and syncer.client is not None:
            outcome = syncer.run_bulk(rows, settings.bulk_batch_size, settings.events_batch_size)
        else:
            outcome = syncer.run_single(rows, settings.concurrency)
        syncer.finish_segment(source.customers, settings.concurrency, guard)
        if outcome.rows_read == 0:
            warn_if_no_such_plan(settings.plan_type, source)
    finally:
        rows.close()
        progress.finish()
        syncer.close()
    return outcome


def collect_garbage_rarely() -> None:
    """Rows in flight are a few hundred thousand small objects that form no cycles; with the
    default thresholds the collector walked them all again and again, a fifth of bulk
    mode's CPU. What exists before the rows (modules, settings) is never walked again."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, 50, 100)


# glibc's mallopt parameters, from malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_FREE_BYTES = 64 * 1024 * 1024
OWN_MMAP_BYTES = 32 * 1024 * 1024  # glibc's largest allowed threshold


def reuse_freed_memory() -> None:
    """Keep memory a batch frees for the next batch, rather than give it back to the kernel.

    By default glibc gives the top of its heap back once 128 kB of it are free, and maps
    each block over a dynamic threshold (such as a bulk body) on its own. A run frees each
    batch's rows and bodies as it builds the next, so the same memory went back and was
    faulted in again: for 100,000 users in bulk mode, 160,000 page faults and 0.8 to 1.1 s
    of system time, against 56,000 and 0.4 to 0.5 s with up to KEEP_FREE_BYTES kept free
    for reuse. C libraries without mallopt (macOS, musl) are left as they are.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES)
    mallopt(M_MMAP_THRESHOLD, OWN_MMAP_BYTES)


def warn_if_no_such_plan(plan_type: str, source: RowSource) -> None:
    """No rows may mean a quiet week, or a typo in PLAN_TYPE: say which."""
    problem = preflight.unknown_plan(plan_type, source)
    if problem:
        log.warning("%s", problem)


def run_details(
    settings: Settings,
    run_id: str,
    started_at: datetime,
    outcome: Outcome,
    stats: RequestStats,
    error: str | None,
) -> dict[str, Any]:
    finished_at = datetime.now(UTC)
    return {
        "run_id": run_id,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "duration_seconds": round((finished_at - started_at).total_seconds(), 3),
        "dry_run": settings.dry_run,
        "mode": settings.mode,
        "concurrency": settings.concurrency if settings.mode == "single" else None,
        "full_refresh": settings.full_refresh,
        "plan_type": settings.plan_type,
        "lookback_days": settings.lookback_days,
        "identify_by": settings.identify_by,
        "list_id": settings.list_id,
        "database": settings.database.where(),
        "iterable_base_url": settings.iterable_base_url,
        "rows_read": outcome.rows_read,
        "aborted": outcome.aborted or error,
        "held_back": outcome.held_back,
        "stopped_by_signal": outcome.stopped,
        "api": stats.snapshot(),
        "version": VERSION,
    }


def exit_code(run_report: RunReport) -> int:
    return outcome_exit_code(run_report.outcome, run_report.summary)


def change_lines(changes: Changes, list_id: int | None) -> list[str]:
    """The console's "changes" block: a line for each kind of change that happened."""
    lines = []
    not_moved = [
        (changes.email_conflicts, "conflict, left alone", "conflicts, left alone"),
        (changes.email_old_missing, "old profile missing, created new", None),
        (changes.email_old_forgotten, "old email forgotten, created new", None),
    ]
    notes = [f"{n} {many if n > 1 and many else one}" for n, one, many in not_moved if n]
    if changes.emails_moved or notes:
        lines.append(
            f"emails moved: {changes.emails_moved:,}" + (f" ({', '.join(notes)})" if notes else "")
        )
    if changes.left:
        parts = [
            (changes.left_updated, "profile updated", "profiles updated"),
            (changes.left_deleted, "deleted", "deleted"),
            (changes.left_unchanged, "unchanged", "unchanged"),
            (changes.left_held_back, "held back", "held back"),
        ]
        done = ", ".join(f"{n:,} {one if n == 1 else many}" for n, one, many in parts if n)
        lines.append(f"left the segment: {changes.left:,}" + (f" ({done})" if done else ""))
    if changes.deleted_in_iterable:
        lines.append(f"deleted in Iterable: {changes.deleted_in_iterable:,}")
    if changes.forgotten:
        lines.append(f"forgotten in Iterable: {changes.forgotten:,}")
    if list_id is not None and (changes.list_subscribed or changes.list_unsubscribed):
        listed = [
            f"{sign}{n:,} {word}"
            for sign, n, word in (
                ("+", changes.list_subscribed, "subscribed"),
                ("-", changes.list_unsubscribed, "unsubscribed"),
            )
            if n
        ]
        lines.append(f"list {list_id}: {', '.join(listed)}")
    return lines


def summary_record(code: int, report: RunReport | None) -> dict[str, Any]:
    """The run's last log record's fields (LOG_FORMAT=json): enough to alert on alone."""
    fields: dict[str, Any] = {"exit_code": code}
    if report is not None:
        fields.update(report.summary.to_dict())
        # Flags, not the messages: the fields do not go through the log's redaction.
        fields.update(
            rows_read=report.outcome.rows_read,
            held_back=bool(report.outcome.held_back),
            aborted=bool(report.outcome.aborted),
            stopped=report.outcome.stopped,
        )
    return fields


def print_summary(
    report: RunReport, dry_run: bool, out: TextIO = sys.stdout, list_id: int | None = None
) -> None:
    s = report.summary
    label = "dry run" if dry_run else "sync"
    interrupted = f"{s.interrupted} interrupted (sent again next run), " if s.interrupted else ""
    out.write(
        f"iterable-sync {label}: {s.total} users: {s.succeeded} succeeded, {s.failed} failed, "
        f"{interrupted}{s.skipped} skipped in {report.seconds:.1f}s\n"
    )
    if s.outstanding:
        out.write(
            f"  {s.outstanding} outstanding (failing since {s.failing_since}): sent again "
            "when their data changes, or by python main.py --retry-outstanding after a fix "
            "in Iterable\n"
        )
    if s.left:
        out.write(f"  {s.left} left the segment\n")
    for reason, count in sorted(s.reasons.items()):
        out.write(f"  {reason}: {count}\n")
    changes = change_lines(s.changes, list_id)
    if changes:
        out.write("changes:\n" if not dry_run else "changes (would be made):\n")
        out.writelines(f"  {line}\n" for line in changes)
    if report.outcome.aborted:
        out.write(f"  run aborted: {report.outcome.aborted}\n")
    elif report.outcome.held_back:
        out.write("  leavers held back by the mass-leave guard (see below)\n")
    elif report.outcome.stopped:
        out.write("  run stopped by a signal before every row was done\n")
    out.write(f"results: {report.path}\n")


def fail(message: str, code: int) -> int:
    """An expected failure: one line on stderr (and in the log), no traceback."""
    log.debug("exiting with %d: %s", code, message)
    sys.stderr.write(f"error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # results, logs, state, metrics and lock files: owner only
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_command_line(argv)
        if args.command == "report":
            return report_command(args)
        settings = load_settings(args)
        if args.command == "state copy":
            return state_copy_command(settings, args.source, args.force)
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    # Ties the log lines of one run (LOG_FORMAT=json) to its results file.
    run_id = uuid.uuid4().hex
    try:
        setup_logging(
            settings.log_level, settings.log_file, settings.secrets(), settings.log_format, run_id
        )
    except OSError as exc:
        message = f"configuration: cannot open LOG_FILE {settings.log_file}: {exc.strerror}"
        return fail(message, EXIT_CONFIG)
    if settings.check_only:
        return preflight.run_checks(settings)
    monitoring.ping(settings.healthcheck_url, "start")
    started = time.monotonic()
    collect_garbage_rarely()
    reuse_freed_memory()
    code, report, problem = sync_and_report(settings, run_id)
    monitoring.ping(settings.healthcheck_url, str(code))
    if settings.metrics_file is not None:
        publish_metrics(settings.metrics_file, code, time.monotonic() - started, report)
    # The last record; with LOG_FORMAT=json it carries the summary as fields.
    log.info("run finished: exit code %d", code, extra={"summary": summary_record(code, report)})
    if problem is not None:
        fail(problem, code)  # the last line on stderr
    return code


def sync_and_report(settings: Settings, run_id: str) -> tuple[int, RunReport | None, str | None]:
    """Run under the lock and map every outcome to an exit code; the third item is the
    one-line problem that ended the run early, if any."""
    stop = threading.Event()
    stop_now = StopNow()
    store_lock: StoreLock | None = None
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(run_lock(settings.lock_file))
            if settings.state_database is not None:
                store_lock = held.enter_context(StoreLock(settings.state_database, stop.set))
            held.enter_context(graceful_stop(stop, stop_now))
            report = run(settings, stop, stop_now, run_id)
            remove_expired_results(settings)
    except (LockHeld, LockTaken) as exc:
        return EXIT_LOCKED, None, str(exc)
    except StateError as exc:
        return EXIT_CONFIG, None, str(exc)
    except DatabaseError as exc:
        return EXIT_ABORTED, None, str(exc)
    except KeyboardInterrupt:
        return EXIT_ABORTED, None, "interrupted"
    except Exception:
        log.exception("unexpected error; the run was aborted")
        return EXIT_ABORTED, None, "unexpected error, see the log for the traceback"
    print_summary(report, settings.dry_run, list_id=settings.list_id)
    if store_lock is not None and store_lock.lost:
        return EXIT_ABORTED, report, store_lock.lost
    return exit_code(report), report, report.outcome.aborted or report.outcome.held_back


def state_copy_command(settings: Settings, source: Path, force: bool) -> int:
    """`main.py state copy SQLITE_FILE`: the SQLite state into the configured MySQL store."""
    if settings.state_database is None:
        return fail("state copy: set STATE_STORE=mysql and STATE_MYSQL_DATABASE", EXIT_CONFIG)
    try:
        with StoreLock(settings.state_database, lambda: None):
            copied = copy_state(source, settings.state_database, force)
    except LockTaken as exc:
        return fail(str(exc), EXIT_LOCKED)
    except StateError as exc:
        return fail(str(exc), EXIT_CONFIG)
    except DatabaseError as exc:
        return fail(str(exc), EXIT_ABORTED)
    counts = ", ".join(f"{count} {table}" for table, count in copied.items())
    sys.stdout.write(
        f"copied {source} into MySQL database {settings.state_database.database}: {counts}\n"
    )
    return EXIT_OK


def remove_expired_results(settings: Settings) -> None:
    removed = remove_old_results(
        settings.results_dir, settings.results_keep_days, datetime.now(UTC)
    )
    if removed:
        log.info(
            "removed %d results files older than %d days (RESULTS_KEEP_DAYS)",
            len(removed),
            settings.results_keep_days,
        )


def publish_metrics(path: Path, code: int, seconds: float, report: RunReport | None) -> None:
    """Write the metrics file; a failure to write it is logged, never turned into a failed run."""
    summary = report.summary.to_dict() if report else {}
    now = time.time()
    last_success = now if code == EXIT_OK else monitoring.previous_last_success(path)
    text = monitoring.metrics_text(
        exit_code=code,
        duration=seconds,
        summary=summary,
        rows_read=report.outcome.rows_read if report else 0,
        api=report.api if report else {},
        last_success=last_success,
        now=now,
    )
    try:
        monitoring.write_metrics(path, text)
    except OSError as exc:
        log.warning("could not write METRICS_FILE %s: %s", path, exc.strerror)


if __name__ == "__main__":
    sys.exit(main())
