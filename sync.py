"""The sync: rows in, one result per row out, in single (per user) or bulk mode.

Per customer the order is fixed: the profile update first, and the event only once
Iterable has accepted that update (or already had it from an earlier run).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from bulk import (
    BatchCall,
    Batcher,
    BatchQueue,
    BulkRow,
    Delivered,
    RowOutcome,
    deliver_events,
    deliver_users,
    event_item,
    user_item,
)
from iterable_client import CallResult, IterableAuthError, IterableClient, IterableUnavailable
from logger_config import mask_email
from payloads import Payloads, Rejection, SourceRow, build_payloads, fingerprint
from results import FAILED, SKIPPED, SUCCESS, ResultsWriter, RowResult
from sync_state import SyncState

log = logging.getLogger(__name__)

UNCHANGED = "unchanged"
DRY_RUN = "dry_run"
DUPLICATE_EMAIL = "duplicate_email"
BAD_ROW = "bad_row"
INTERRUPTED = "interrupted"


@dataclass
class Work:
    """One row on its way: its payloads, what still has to be sent, and its result so far."""

    row: SourceRow
    payloads: Payloads
    send_user: bool
    send_event: bool
    user_fingerprint: str
    row_fingerprint: str
    result: RowResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = RowResult(
            customer_id=self.row.customer_id,
            email=self.payloads.email,
            status=SUCCESS,
            warnings=list(self.payloads.warnings),
        )

    @property
    def event_id(self) -> str:
        return str(self.payloads.event["id"])


@dataclass
class Outcome:
    """How the run ended, beyond the per-row results."""

    rows_read: int = 0
    aborted: str | None = None
    stopped: bool = False


def call_failure_reason(call: CallResult) -> str:
    """A stable reason for a failed call: Iterable's code, the HTTP status, or no_response."""
    if call.interrupted:
        return INTERRUPTED
    if call.code and call.code != "Success":
        return call.code
    if call.http_status is not None:
        return f"http_{call.http_status}"
    return "no_response"


def is_permanent(call: CallResult) -> bool:
    """A 4xx other than 429 will fail again with the same data; anything else may not."""
    status = call.http_status
    return status is not None and 400 <= status < 500 and status != 429


class DuplicateEmails:
    """Remembers which customer each email was sent for in this run.

    A million emails in a Python set would cost more memory than the rest of the run,
    so they live in a private temporary SQLite database that spills to disk.
    """

    def __init__(self) -> None:
        # "" opens a temporary on-disk database that SQLite deletes on close.
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("PRAGMA cache_size = -2048")
        self._db.execute(
            "CREATE TABLE seen (email TEXT PRIMARY KEY, customer_id INTEGER) WITHOUT ROWID"
        )

    def first_time(self, email: str, customer_id: int) -> bool:
        """True if no earlier customer of this run had this email; remembers this one."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO seen (email, customer_id) VALUES (?, ?)", (email, customer_id)
        )
        return cursor.rowcount == 1

    def owner(self, email: str) -> int | None:
        row = self._db.execute("SELECT customer_id FROM seen WHERE email = ?", (email,)).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._db.close()


class Syncer:
    """Plans each row against the sync state and sends it; results go to the ResultsWriter."""

    def __init__(
        self,
        *,
        client: IterableClient | None,
        writer: ResultsWriter,
        state: SyncState | None = None,
        candidate: str | None = None,
        full_refresh: bool = False,
        stop: threading.Event | None = None,
        on_row: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.writer = writer
        self.state = state
        self.candidate = candidate
        self.full_refresh = full_refresh
        self.stop = stop or threading.Event()
        self.on_row = on_row
        self.outcome = Outcome()
        self.duplicates = DuplicateEmails()
        self._abort_lock = threading.Lock()
        self._interrupted = False

    # -- planning -----------------------------------------------------------------

    def plan(self, raw: Mapping[str, Any]) -> Work | None:
        """Decide what a row needs; rows that need nothing are recorded here and give None."""
        self.outcome.rows_read += 1
        try:
            row = SourceRow.from_mapping(raw)
        except (KeyError, TypeError, ValueError) as exc:
            self.record(RowResult(_customer_id(raw), None, FAILED, BAD_ROW, detail=str(exc)[:200]))
            return None
        built = build_payloads(row, self.candidate)
        if isinstance(built, Rejection):
            self._reject_locally(row, built)
            return None
        if not self.duplicates.first_time(built.email, row.customer_id):
            first = self.duplicates.owner(built.email)
            self.record(
                RowResult(
                    row.customer_id,
                    built.email,
                    FAILED,
                    DUPLICATE_EMAIL,
                    detail=f"customer {first} has the same email and was sent instead",
                )
            )
            return None
        return self._plan_sends(row, built)

    def _reject_locally(self, row: SourceRow, rejection: Rejection) -> None:
        row_fp = fingerprint({"row": _row_dict(row)})
        result = RowResult(
            row.customer_id,
            rejection.email or row.email,
            FAILED,
            rejection.reason,
            detail=rejection.detail,
        )
        if self.state is not None and not self.full_refresh:
            previous = self.state.rejection(row.customer_id)
            if previous and previous[0] == row_fp:
                result.status, result.reason = SKIPPED, UNCHANGED
                result.detail = f"rejected before ({previous[1]}) and unchanged since"
        if self.state is not None and result.status == FAILED and self.client is not None:
            self.state.rejected(row.customer_id, row_fp, rejection.reason)
        self.record(result)

    def _plan_sends(self, row: SourceRow, built: Payloads) -> Work | None:
        user_fp = fingerprint(built.user_update)
        row_fp = fingerprint({"user": built.user_update, "event": built.event})
        send_user = send_event = True
        if self.state is not None and not self.full_refresh:
            known = self.state.known(row.customer_id, str(built.event["id"]))
            if known.rejection and known.rejection[0] == row_fp:
                self.record(
                    RowResult(
                        row.customer_id,
                        built.email,
                        SKIPPED,
                        UNCHANGED,
                        detail=f"rejected before ({known.rejection[1]}) and unchanged since",
                    )
                )
                return None
            send_user = known.user_fingerprint != user_fp
            send_event = not known.event_accepted
        work = Work(row, built, send_user, send_event, user_fp, row_fp)
        if not (send_user or send_event):
            work.result.status, work.result.reason = SKIPPED, UNCHANGED
            self.record(work.result)
            return None
        if self.client is None:
            work.result.status, work.result.reason = SKIPPED, DRY_RUN
            work.result.payloads = {
                "user_update": built.user_update if send_user else None,
                "event_track": built.event if send_event else None,
            }
            self.record(work.result)
            return None
        if send_user and self.state is not None:
            self.state.user_sending(row.customer_id, user_fp)
        return work

    def record(self, result: RowResult) -> None:
        self.writer.add(result)
        self.on_row()
        # Rows a stopping run interrupts are counted in the summary, not one warning each.
        failed = result.status == FAILED and result.reason != INTERRUPTED
        level = logging.WARNING if failed else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "customer %s (%s): %s%s%s",
                result.customer_id,
                mask_email(result.email),
                result.status,
                f" {result.reason}" if result.reason else "",
                f" ({result.detail})" if result.detail else "",
            )

    # -- outcomes of calls, shared by both modes ---------------------------------

    def user_done(self, work: Work, call: CallResult | None, failure: str | None = None) -> bool:
        """Record the profile update's outcome; True when the event may follow."""
        if call is not None:
            work.result.user_update = call.summary()
        if failure is None and call is not None and call.ok:
            if self.state is not None:
                self.state.user_accepted(work.row.customer_id, work.user_fingerprint)
            return True
        reason = failure or (call_failure_reason(call) if call else "no_response")
        self._fail(
            work, reason, permanent=call is None or is_permanent(call) or failure is not None
        )
        return False

    def event_done(self, work: Work, call: CallResult | None, failure: str | None = None) -> None:
        if call is not None:
            work.result.event_track = call.summary()
        if failure is None and call is not None and call.ok:
            if self.state is not None:
                self.state.event_accepted(work.event_id, work.row.customer_id)
            self.record(work.result)
            return
        reason = failure or (call_failure_reason(call) if call else "no_response")
        self._fail(
            work, reason, permanent=call is None or is_permanent(call) or failure is not None
        )

    def _fail(self, work: Work, reason: str, permanent: bool) -> None:
        work.result.status, work.result.reason = FAILED, reason
        self._interrupted = self._interrupted or reason == INTERRUPTED
        if permanent and self.state is not None and reason != INTERRUPTED:
            self.state.rejected(work.row.customer_id, work.row_fingerprint, reason)
        self.record(work.result)

    def apply_user_outcomes(self, outcomes: Iterable[RowOutcome]) -> list[Work]:
        """Record users/bulkUpdate outcomes; returns the rows whose events may now be sent."""
        accepted: list[Work] = []
        for outcome in outcomes:
            work = cast(Work, outcome.row)
            if self.user_done(work, outcome.call, outcome.failure):
                if work.send_event:
                    accepted.append(work)
                else:
                    self.skip_event(work)
        return accepted

    def apply_event_outcomes(self, outcomes: Iterable[RowOutcome]) -> list[Work]:
        for outcome in outcomes:
            self.event_done(cast(Work, outcome.row), outcome.call, outcome.failure)
        return []

    def skip_user(self, work: Work) -> None:
        work.result.user_update = {"skipped": UNCHANGED}

    def skip_event(self, work: Work) -> None:
        work.result.event_track = {"skipped": UNCHANGED}
        self.record(work.result)

    def abort(self, exc: IterableAuthError | IterableUnavailable) -> None:
        with self._abort_lock:
            if self.outcome.aborted is None:
                self.outcome.aborted = str(exc)
                # DEBUG: main() reports it, in one line.
                log.debug("%s; stopping the run", exc)
        self.stop.set()

    # -- single mode ----------------------------------------------------------------

    def run_single(self, rows: Iterable[Mapping[str, Any]], concurrency: int) -> Outcome:
        """Each user's update then event; up to `concurrency` users in flight at once."""
        slots = threading.BoundedSemaphore(concurrency * 2)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sync") as pool:
            for work in self._planned(rows):
                slots.acquire()
                future = pool.submit(self._sync_one, work)
                future.add_done_callback(lambda _f: slots.release())
        return self._finished()

    def _sync_one(self, work: Work) -> None:
        assert self.client is not None
        try:
            if work.send_user:
                if self.stop.is_set():
                    self._fail(work, INTERRUPTED, permanent=False)
                    return
                if not self.user_done(work, self.client.update_user(work.payloads.user_update)):
                    return
            else:
                self.skip_user(work)
            if work.send_event:
                self.event_done(work, self.client.track_event(work.payloads.event))
            else:
                self.skip_event(work)
        except (IterableAuthError, IterableUnavailable) as exc:
            self._fail(work, INTERRUPTED, permanent=False)
            self.abort(exc)
        except Exception:
            log.exception("unexpected error for customer %s", work.row.customer_id)
            self._fail(work, "internal_error", permanent=False)

    def _planned(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Work]:
        for raw in rows:
            if self.stop.is_set():
                # A run that aborted (rejected key, Iterable down) was not stopped by a signal.
                self.outcome.stopped = self.outcome.aborted is None
                break
            work = self.plan(raw)
            if work is not None:
                yield work

    # -- bulk mode ----------------------------------------------------------------

    def run_bulk(
        self, rows: Iterable[Mapping[str, Any]], batch_size: int, events_batch_size: int
    ) -> Outcome:
        """users/bulkUpdate in batches, then events/trackBulk for the users Iterable accepted.

        Pool threads only talk to Iterable; rows are planned and answers applied (results,
        sync state, log) on this thread. Applying answers on the pool threads while this
        one planned rows made the threads hand the GIL to each other at every SQLite call
        and log write, which cost more CPU than the work itself.
        """
        assert self.client is not None
        client = self.client
        with (
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulk-users") as user_pool,
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulk-events") as event_pool,
        ):
            event_batches = BatchQueue(
                submit=lambda batch: event_pool.submit(
                    self._deliver, deliver_events, client, batch
                ),
                settle_one=lambda call: self._settle(call, self.apply_event_outcomes),
            )
            events = Batcher(events_batch_size, event_batches.send, event_item)

            def settle_user_batch(call: BatchCall) -> None:
                events.add_many(self._settle(call, self.apply_user_outcomes))
                events.flush()

            user_batches = BatchQueue(
                submit=lambda batch: user_pool.submit(self._deliver, deliver_users, client, batch),
                settle_one=settle_user_batch,
            )
            users = Batcher(batch_size, user_batches.send, user_item)
            for work in self._planned(rows):
                if work.send_user:
                    users.add(work)
                else:
                    self.skip_user(work)
                    if work.send_event:
                        events.add(work)
                    else:
                        self.skip_event(work)
                user_batches.settle(wait=False)
                event_batches.settle(wait=False)
            users.flush()
            user_batches.drain()
            events.flush()
            event_batches.drain()
        return self._finished()

    def _finished(self) -> Outcome:
        """A signal that came while the last rows were in flight stopped the run as well
        when it cut a row short; one that came after every row was done did not."""
        if self.stop.is_set() and self.outcome.aborted is None and self._interrupted:
            self.outcome.stopped = True
        return self.outcome

    def _deliver(
        self,
        send: Callable[[IterableClient, Sequence[BulkRow]], Iterator[RowOutcome]],
        client: IterableClient,
        batch: Sequence[BulkRow],
    ) -> Delivered:
        """On a pool thread: send one batch and collect its outcomes; no row is touched here.

        A rejected key or an unreachable Iterable aborts the run at once; anything else
        fails only this batch.
        """
        done = Delivered()
        if self.stop.is_set():
            done.interrupted = True
            return done
        try:
            for outcome in send(client, batch):
                done.outcomes.append(outcome)
        except (IterableAuthError, IterableUnavailable) as exc:
            done.interrupted = True
            self.abort(exc)
        except Exception:
            log.exception("unexpected error in a batch of %d users", len(batch))
            done.unexpected = True
        return done

    def _settle(
        self,
        call: BatchCall,
        apply: Callable[[list[RowOutcome]], list[Work]],
    ) -> list[Work]:
        """On this thread: record a batch's outcomes; returns what apply returns, or []."""
        done = call.future.result()
        reason: str | None = None
        accepted: list[Work] = []
        if done.interrupted:
            # Outcomes a split batch got before the stop are dropped too: its rows are all
            # sent again by the next run, which the idempotent writes absorb.
            reason = INTERRUPTED
        else:
            try:
                accepted = apply(done.outcomes)
            except Exception:
                log.exception("unexpected error in a batch of %d users", len(call.batch))
                done.unexpected = True
            if done.unexpected:
                reason = "internal_error"
        if reason is None:
            return accepted
        for row in call.batch:
            self._fail(cast(Work, row), reason, permanent=False)
        return []


def _customer_id(raw: Mapping[str, Any]) -> int:
    try:
        return int(raw.get("customer_id") or 0)
    except (TypeError, ValueError):
        return 0


def _row_dict(row: SourceRow) -> dict[str, Any]:
    return {
        "email": row.email,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "plan_type": row.plan_type,
        "page_view_id": row.page_view_id,
        "page": row.page,
        "device": row.device,
        "location": row.location,
        "viewed_at": str(row.viewed_at),
    }
