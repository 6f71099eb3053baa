"""Per-row results and the run's JSON results file, written without holding every row in memory."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

log = logging.getLogger(__name__)


def write_atomically(path: Path, write: Callable[[TextIO], object]) -> None:
    """Write through `write` into a 0600 temporary file beside `path`, then rename it over.

    Readers (people, node_exporter) see the old file or the whole new one, and a crash
    leaves at most a stray temporary file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


SUCCESS = "success"
FAILED = "failed"
SKIPPED = "skipped"

# Reasons the job itself gives a row (other reasons are Iterable's codes, or http_NNN).
UNCHANGED = "unchanged"  # nothing to send: Iterable already holds it
DRY_RUN = "dry_run"
DUPLICATE_EMAIL = "duplicate_email"
BAD_ROW = "bad_row"
INTERRUPTED = "interrupted"
FORGOTTEN = "forgotten"
LEFT_DELETED = "left_deleted"
LEAVE_GUARD = "leave_guard"  # a leaver the mass-leave guard held back
OFF_LIST = "off_list"  # out of the segment, taken off the list

# What a row's customer had done on the list (ITERABLE_LIST_ID), in its `list` field.
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"

# The warnings of an email change that did not move the profile (see sync.py).
EMAIL_CHANGE_CONFLICT = "email_change_conflict"
EMAIL_CHANGE_OLD_MISSING = "email_change_old_missing"
EMAIL_CHANGE_FORGOTTEN = "email_change_forgotten"


IN_SEGMENT = "in"  # a row of this run's Query 2
LEFT_SEGMENT = "left"  # a customer who was in the segment after the last run and is not now
# A customer out of the segment since an earlier run, still on the list (an unsubscribe that
# failed then, or a list turned on since): their row says they came off it.
OUT_OF_SEGMENT = "out"


@dataclass(slots=True)
class RowResult:
    """What happened to one customer in this run."""

    customer_id: int
    email: str | None
    status: str
    reason: str | None = None
    user_update: dict[str, Any] | None = None
    event_track: dict[str, Any] | None = None
    update_email: dict[str, Any] | None = None  # the users/updateEmail call, when made
    delete_user: dict[str, Any] | None = None  # the users/delete call, when made
    list_action: str | None = None  # "list": SUBSCRIBED or UNSUBSCRIBED, when the run did so
    payloads: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    detail: str | None = None
    segment: str = IN_SEGMENT
    previous_email: str | None = None
    # A failure that only a data fix can cure, already reported by an earlier run.
    outstanding: bool = False
    failing_since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "customer_id": self.customer_id,
            "email": self.email,
            "segment": self.segment,
            "status": self.status,
            "reason": self.reason,
            "user_update": self.user_update,
            "event_track": self.event_track,
            "list": self.list_action,
        }
        if self.previous_email is not None:
            data["previous_email"] = self.previous_email
        if self.update_email is not None:
            data["update_email"] = self.update_email
        if self.delete_user is not None:
            data["delete_user"] = self.delete_user
        if self.outstanding:
            data["outstanding"] = True
            data["failing_since"] = self.failing_since
        if self.detail:
            data["detail"] = self.detail
        if self.warnings:
            data["warnings"] = self.warnings
        if self.payloads is not None:
            data["payloads"] = self.payloads
        return data


# Warnings of an email change that did not move the profile, and what each counts as.
_NOT_MOVED = (
    (EMAIL_CHANGE_CONFLICT, "email_conflicts"),
    (EMAIL_CHANGE_OLD_MISSING, "email_old_missing"),
    (EMAIL_CHANGE_FORGOTTEN, "email_old_forgotten"),
)


@dataclass
class Changes:
    """What the run changed in Iterable beyond the rows' own updates: the console's
    "changes" block, the summary's `changes`, the report's sections. Counted from the rows,
    so a dry run counts what a real run would do."""

    emails_moved: int = 0
    email_conflicts: int = 0  # the new email belongs to another profile: left alone
    email_old_missing: int = 0  # no profile under the old email: created under the new one
    email_old_forgotten: int = 0  # the old email was forgotten: created under the new one
    left: int = 0
    left_updated: int = 0  # a leaver's profile was (or, in a dry run, would be) updated
    left_unchanged: int = 0
    left_deleted: int = 0  # gone from the customers table
    left_held_back: int = 0  # held back by the mass-leave guard
    deleted_in_iterable: int = 0  # ON_DELETED_CUSTOMER=delete
    forgotten: int = 0
    list_subscribed: int = 0
    list_unsubscribed: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one row, in its results file form."""
        listed, segment = row.get("list"), row.get("segment")
        if listed is not None:
            self.list_subscribed += listed == SUBSCRIBED
            self.list_unsubscribed += listed == UNSUBSCRIBED
        status, reason = row.get("status"), row.get("reason")
        self.forgotten += reason == FORGOTTEN
        warnings, moved_from = row.get("warnings"), row.get("previous_email")
        if not (warnings or moved_from or segment == LEFT_SEGMENT):
            return  # the usual row: nothing more to count, and this runs once a row
        warned = [
            name
            for prefix, name in _NOT_MOVED
            if any(str(warning).startswith(prefix) for warning in warnings or ())
        ]
        for name in warned:
            setattr(self, name, getattr(self, name) + 1)
        done = status == SUCCESS or reason == DRY_RUN
        if moved_from and done and not warned:
            self.emails_moved += 1
        if segment == LEFT_SEGMENT:
            self.left += 1
            if reason == LEFT_DELETED:
                self.left_deleted += 1
                call = row.get("delete_user")
                planned = (row.get("payloads") or {}).get("delete_user")
                self.deleted_in_iterable += (status == SUCCESS and call is not None) or bool(
                    planned
                )
            elif reason == UNCHANGED:
                self.left_unchanged += 1
            elif reason == LEAVE_GUARD:
                self.left_held_back += 1
            elif done:
                self.left_updated += 1

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Summary:
    """The run's totals. The results file, the console line, the metrics file and the HTML
    report all count with these rules (the report through add_row)."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    outstanding: int = 0  # failed rows that had already failed, data unchanged (in `failed`)
    interrupted: int = 0  # rows a stopping run cut short, sent again next run (not `failed`)
    left: int = 0  # rows of customers who left the segment (in the counts above)
    failing_since: str | None = None  # the oldest outstanding failure's first time
    reasons: Counter[str] = field(default_factory=Counter)
    changes: Changes = field(default_factory=Changes)

    def add_many(self, results: Sequence[RowResult]) -> None:
        for result in results:
            self.add_row(result.to_dict())

    def add_row(self, row: Mapping[str, Any]) -> None:
        """Count a row in its results file form."""
        self.changes.add(row)
        self.count(
            str(row.get("status")),
            row.get("reason"),
            bool(row.get("outstanding")),
            str(row.get("segment") or IN_SEGMENT),
        )
        self._since(row.get("failing_since") if row.get("outstanding") else None)

    def _since(self, when: str | None) -> None:
        if when and (self.failing_since is None or when < self.failing_since):
            self.failing_since = when

    def count(self, status: str, reason: str | None, outstanding: bool, segment: str) -> None:
        self.total += 1
        if status == SUCCESS:
            self.succeeded += 1
        elif status == FAILED and reason == INTERRUPTED:
            self.interrupted += 1
        elif status == FAILED:
            self.failed += 1
            self.outstanding += outstanding
        else:
            self.skipped += 1
        self.left += segment == LEFT_SEGMENT
        if reason:
            self.reasons[f"{status}:{reason}"] += 1

    @property
    def new_failures(self) -> int:
        """Failures this run found that no earlier run had reported: what exit code 1 means."""
        return self.failed - self.outstanding

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "outstanding": self.outstanding,
            "failing_since": self.failing_since,
            "left": self.left,
            "by_reason": dict(sorted(self.reasons.items())),
            "changes": self.changes.to_dict(),
        }


def results_filename(started_at: datetime) -> str:
    return f"integration_results_{started_at:%Y%m%d_%H%M%S}.json"


# A results file or its HTML report: the run's start (UTC), then a counter when two runs
# started in the same second.
_RESULTS_NAME = re.compile(r"integration_results_(\d{8}_\d{6})(?:_\d+)?\.(?:json|html)")


def remove_old_results(results_dir: Path, keep_days: int, now: datetime) -> list[Path]:
    """Delete results files and their HTML reports that started more than keep_days ago.

    Age comes from the UTC time in the name, not from mtime, which a copy or a restore
    from backup resets. Other files are never touched; keep_days 0 keeps everything.
    """
    if keep_days <= 0:
        return []
    cutoff = now - timedelta(days=keep_days)
    removed = []
    for path in sorted(results_dir.glob("integration_results_*")):
        started = _started_at(path.name)
        if started is None or started >= cutoff or not path.is_file():
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile by someone else: fine
        except OSError as exc:
            log.warning("could not remove old results file %s: %s", path, exc.strerror)
            continue
        removed.append(path)
    return removed


def _started_at(name: str) -> datetime | None:
    match = _RESULTS_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:  # digits that are no date, such as month 13
        return None


SPOOL_BLOCK = 1 << 20


# Rows counted together (see ResultsWriter._count).
COUNT_EVERY = 256


class ResultsWriter:
    """Spools results as JSON lines in a private file, then writes the final file atomically.

    The spool keeps memory flat for a million rows; the rename means a reader never
    sees half a file, and a crash leaves at most a stray temporary file.
    """

    def __init__(
        self,
        results_dir: Path,
        also: Callable[[Sequence[Mapping[str, Any]]], object] | None = None,
    ) -> None:
        self.results_dir = results_dir
        self.summary = Summary()
        # Told each batch of rows as written, in the file's order (the run history).
        self.also = also
        self._lock = threading.Lock()  # the spool and the rows not yet counted
        # Rows are counted (and handed to `also`) COUNT_EVERY at a time, by one thread at a
        # time, outside the spool's lock: with 128 threads recording rows, the work done
        # under that lock was paid for again in waits and wake-ups (single mode, 20,000
        # users: 0.394 s of CPU per 1,000 users with it there, 0.355 without it).
        self._count_lock = threading.Lock()
        self._uncounted: list[dict[str, Any]] = []
        fd, spool = tempfile.mkstemp(prefix=".results-", suffix=".jsonl", dir=results_dir)
        os.fchmod(fd, 0o600)
        self._spool_path = Path(spool)
        self._spool = os.fdopen(fd, "wb")

    def add(self, result: RowResult) -> None:
        self.add_many([result])

    def add_many(self, results: Sequence[RowResult]) -> None:
        rows = [result.to_dict() for result in results]
        # One compact line a row; orjson writes UTF-8 as it is, like ensure_ascii=False.
        lines = b"".join(
            [orjson.dumps(row, default=str, option=orjson.OPT_APPEND_NEWLINE) for row in rows]
        )
        with self._lock:
            if self._spool.closed:
                # A run stopped at once by a second signal has written its file; rows that
                # finish after that are left out of it, as if never attempted.
                return
            self._spool.write(lines)
            self._uncounted.extend(rows)
            due = len(self._uncounted) >= COUNT_EVERY
        if due:
            self._count(close_spool=False)

    def _count(self, close_spool: bool) -> None:
        """Count the rows written so far, in their order; with close_spool, take no more."""
        with self._count_lock:
            with self._lock:
                if close_spool:
                    self._spool.close()
                rows, self._uncounted = self._uncounted, []
            for row in rows:
                self.summary.add_row(row)
            if rows and self.also is not None:
                self.also(rows)

    def finish(self, run: dict[str, Any], started_at: datetime) -> Path:
        """Write {"run", "summary", "results"} to a new timestamped file; return its path."""
        self._count(close_spool=True)
        with self._lock:
            target = self._free_target(started_at)

            def write(out: TextIO) -> None:
                out.write('{"run": ' + json.dumps(run, ensure_ascii=False, default=str))
                out.write(',\n "summary": ' + json.dumps(self.summary.to_dict()))
                out.write(',\n "results": [')
                self._copy_spool(out)
                out.write("\n ]\n}\n")

            try:
                write_atomically(target, write)
            finally:
                self._spool_path.unlink(missing_ok=True)
            return target

    def _free_target(self, started_at: datetime) -> Path:
        """The timestamped name, with a counter if a run in the same second already used it."""
        target = self.results_dir / results_filename(started_at)
        counter = 1
        while target.exists():
            counter += 1
            target = self.results_dir / results_filename(started_at).replace(
                ".json", f"_{counter}.json"
            )
        return target

    def _copy_spool(self, out: TextIO) -> None:
        """The spooled lines as the items of the results array, copied a block at a time.

        Each line is compact JSON, which holds no raw newline, so every newline in the
        spool ends an item; a line at a time cost a microsecond a row.
        """
        out.flush()
        binary: BinaryIO = out.buffer
        before = b"\n  "  # what goes before the next item
        with self._spool_path.open("rb") as spool:
            while block := spool.read(SPOOL_BLOCK):
                ends_line = block.endswith(b"\n")
                binary.write(before + (block[:-1] if ends_line else block).replace(b"\n", b",\n  "))
                before = b",\n  " if ends_line else b""
        binary.flush()

    def discard(self) -> None:
        """Drop the spool without writing a results file (the rows are still counted)."""
        if not self._spool.closed:
            self._count(close_spool=True)
        with self._lock:
            self._spool_path.unlink(missing_ok=True)
