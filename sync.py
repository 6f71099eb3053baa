"""The sync: rows in, one result per row out, in single (per user) or bulk mode.

Per customer the order is fixed: the profile update first, and the event only once
Iterable has accepted that update (or already had it from an earlier run).
"""

from __future__ import annotations

import functools
import itertools
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from bulk import (
    UNMATCHED_FAILURE,
    Answer,
    BatchCall,
    Batcher,
    BatchLimit,
    BatchQueue,
    BulkRow,
    Delivered,
    deliver_events,
    deliver_users,
    event_item,
    user_item,
)
from iterable_client import (
    EVENTS_TRACK_BULK,
    USERS_BULK_UPDATE,
    CallResult,
    IterableClient,
    StopRun,
    is_no_such_user,
)
from logger_config import mask_email
from payloads import (
    BY_EMAIL,
    BY_USER_ID,
    ROW_ASSUMPTIONS,
    Customer,
    Payloads,
    Rejection,
    SourceRow,
    UnreadableRow,
    build_payloads,
    fingerprint,
)
from results import FAILED, IN_SEGMENT, LEFT_SEGMENT, SKIPPED, SUCCESS, ResultsWriter, RowResult
from segment import LeaverUpdate, ListMirror, ReadCustomers, plan_leaver
from sync_state import NOTHING_KNOWN, AcceptedUser, Known, Member, RowInsert, SyncState
from sync_state import Rejection as SavedRejection

log = logging.getLogger(__name__)

UNCHANGED = "unchanged"
DRY_RUN = "dry_run"
DUPLICATE_EMAIL = "duplicate_email"
BAD_ROW = "bad_row"
INTERRUPTED = "interrupted"
FORGOTTEN = "forgotten"
LEFT_DELETED = "left_deleted"
FORGOTTEN_CODE = "ForgottenUserError"
EMAIL_CHANGE_CONFLICT = "email_change_conflict"
EMAIL_CHANGE_OLD_MISSING = "email_change_old_missing"
EMAIL_CHANGE_FORGOTTEN = "email_change_forgotten"
# Which part of a row a refusal on record is about: its fingerprint is "<part>:<digest>".
# (A refusal written before parts were recorded is about the whole row.)
PROFILE_PART, EVENT_PART, DELETE_PART = "user", "event", "delete"


# Rows planned together: their state and duplicate checks are one query each.
PLAN_CHUNK = 400
# Emails looked up per query (under SQLite's 999 parameters).
LOOKUP_BATCH = 900
# Bulk mode looks for answers that have come every this many rows (a few milliseconds),
# rather than after every row.
SETTLE_EVERY = 100
# A wait on single mode's work feed looks again this often, whether woken or not.
FEED_RECHECK = 1.0


@dataclass(slots=True)
class Work:
    """One row on its way: its payloads, what still has to be sent, and its result so far."""

    row: SourceRow
    payloads: Payloads
    send_user: bool
    send_event: bool
    # The email Iterable holds for the customer, when the row brings a different one.
    previous_email: str | None = None
    # How the state has the customer on the list (None: not on it).
    listed_as: str | None = None
    # What the state had before: a rejection to clear on success, a profile to forget
    # before sending a different one. Unknown (full refresh, leavers) means "maybe".
    had_rejection: bool = True
    had_profile: bool = True
    # The event was refused for good and has not changed since: not sent again.
    event_refused: SavedRejection | None = None
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

    @property
    def user_fingerprint(self) -> str:
        return self.payloads.user_fingerprint

    @property
    def row_fingerprint(self) -> str:
        return self.payloads.row_fingerprint


class Prepared(NamedTuple):
    """A row read and turned into payloads, before the state and duplicates are consulted."""

    customer_id: int
    row: SourceRow | None
    built: Payloads | Rejection | None
    error: Exception | None  # one of ROW_ASSUMPTIONS, to record when the row's turn comes


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


def is_permanent(call: CallResult | None, failure: str | None = None) -> bool:
    """The outstanding rule: whether a failure will come back with the same data, so the
    row waits for its data to change (or --retry-outstanding) instead of being resent.

    A 4xx other than 429 will; so will a failure a bulk answer names. Iterable not finding
    the user will not (a profile sent in bulk may not exist yet), nor will a row of a batch
    whose failures Iterable did not name, nor no answer at all.
    """
    if failure is not None:
        return not (is_no_such_user(failure) or failure == UNMATCHED_FAILURE)
    if call is None or call.no_such_user:
        return False
    status = call.http_status
    return status is not None and 400 <= status < 500 and status != 429


def refusal_key(part: str, digest: str) -> str:
    """What a refusal on record is about: one part of the row, by that part's fingerprint."""
    return f"{part}:{digest}"


def refused_part(rejection: SavedRejection, built: Payloads) -> str | None:
    """Which part of the row a refusal on record still holds for (its data unchanged since),
    or None when that part has changed."""
    part, _, digest = rejection.fingerprint.partition(":")
    if part == PROFILE_PART:
        return part if digest == built.user_fingerprint else None
    if part == EVENT_PART:
        return part if digest == built.event_fingerprint else None
    return "row" if rejection.fingerprint == built.row_fingerprint else None


_INSERT_OWNERS = RowInsert("INSERT OR IGNORE INTO seen (email, customer_id) VALUES", 2)


class DuplicateEmails:
    """Remembers which customer each email was sent for in this run.

    A million emails in a Python set would cost more memory than the rest of the run,
    so they live in a private temporary SQLite database that spills to disk. Rows are
    checked a chunk at a time: one query looks up the chunk's emails, one statement
    stores its first-timers.
    """

    def __init__(self) -> None:
        # "" opens a temporary on-disk database that SQLite deletes on close.
        self._db = sqlite3.connect("", check_same_thread=False)
        # 8 MB: a hundred thousand emails stay in memory, a million spill to disk.
        self._db.execute("PRAGMA cache_size = -8192")
        self._db.execute(
            "CREATE TABLE seen (email TEXT PRIMARY KEY, customer_id TEXT) WITHOUT ROWID"
        )
        # The owners of the emails looked up for this chunk (None: nobody yet), and the
        # first-timers not yet stored.
        self._owners: dict[str, int | None] = {}
        self._new: list[tuple[str, str]] = []

    def look_up(self, emails: Iterable[str]) -> None:
        """Read who already has these emails, ahead of first_time for each."""
        self._store()
        wanted = list(dict.fromkeys(emails))
        self._owners = dict.fromkeys(wanted)
        for start in range(0, len(wanted), LOOKUP_BATCH):
            chunk = wanted[start : start + LOOKUP_BATCH]
            marks = ", ".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT email, customer_id FROM seen WHERE email IN ({marks})", chunk
            )
            self._owners.update((email, int(owner)) for email, owner in rows)

    def first_time(self, email: str, customer_id: int) -> bool:
        """True if no earlier customer of this run had this email; remembers this one."""
        if email not in self._owners:
            self.look_up([email])
        if self._owners[email] is not None:
            return False
        self._owners[email] = customer_id
        self._new.append((email, str(customer_id)))
        return True

    def owner(self, email: str) -> int | None:
        if email not in self._owners:
            self.look_up([email])
        return self._owners[email]

    def _store(self) -> None:
        if self._new:
            _INSERT_OWNERS.run(self._db, self._new)
            self._new = []

    def close(self) -> None:
        self._db.close()


class WorkFeed:
    """Single mode's planned work: put in by the planning thread a batch at a time, taken by
    the worker threads one at a time.

    Taking is a deque pop, with no lock and no wake-up while work is queued: the planner is
    woken once the queue is down to `low`, and an idle worker only when the queue ran dry.
    (A thread pool's submit, future and semaphore cost each user a wake-up or two.)
    """

    def __init__(self, low: int) -> None:
        self._items: deque[Work] = deque()
        self._low = low
        self._changed = threading.Condition()
        self._closed = False
        self._planner_waiting = False
        self._idle = 0  # workers waiting for work

    def wait_for_room(self) -> None:
        """Return once the queue is down to `low`."""
        with self._changed:
            while len(self._items) > self._low:
                self._planner_waiting = True
                self._changed.wait(FEED_RECHECK)
            self._planner_waiting = False

    def put_many(self, items: list[Work]) -> None:
        with self._changed:
            self._items.extend(items)
            if self._idle:
                self._changed.notify_all()

    def close(self) -> None:
        """Nothing more comes: workers finish what is queued, then take() gives None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self) -> Work | None:
        """The next work, waiting for it while the queue is empty; None once closed and empty."""
        items = self._items
        try:
            work = items.popleft()
        except IndexError:
            with self._changed:
                while not items:
                    if self._closed:
                        return None
                    self._idle += 1
                    self._changed.wait(FEED_RECHECK)
                    self._idle -= 1
                work = items.popleft()
        # Read without the lock: a planner that sets it after this pop sees the shorter queue.
        if self._planner_waiting and len(items) <= self._low:
            with self._changed:
                self._changed.notify_all()
        return work


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
        on_rows: Callable[[int], object] = lambda _count: None,
        identify_by: str = BY_EMAIL,
        lists: ListMirror | None = None,
        delete_deleted: bool = False,
        retry_outstanding: bool = False,
    ) -> None:
        self.client = client
        self.writer = writer
        self.state = state
        self.candidate = candidate
        self.full_refresh = full_refresh
        self.stop = stop or threading.Event()
        self.on_rows = on_rows  # told how many rows were recorded, after each record
        self.identify_by = identify_by
        self.lists = lists
        if lists is not None:
            lists.on_stop = self.abort
        self.delete_deleted = delete_deleted
        self.retry_outstanding = retry_outstanding
        self.outcome = Outcome()
        self.duplicates = DuplicateEmails()
        self._abort_lock = threading.Lock()
        self._interrupted = False

    @property
    def writes(self) -> bool:
        """Whether this run may change the state: never in a dry run."""
        return self.state is not None and self.client is not None

    # -- planning -----------------------------------------------------------------

    def _prepare(self, row: SourceRow | UnreadableRow) -> Prepared:
        if isinstance(row, UnreadableRow):
            return Prepared(row.customer_id, None, None, row.error)
        try:
            built = build_payloads(row, self.candidate, self.identify_by)
            return Prepared(row.customer_id, row, built, None)
        except ROW_ASSUMPTIONS as exc:
            return Prepared(row.customer_id, None, None, exc)

    def _look_up(self, chunk: Sequence[Prepared]) -> dict[int, Known]:
        """The chunk's duplicate emails and sync state, a query each rather than one a row."""
        sendable = [
            (item.row.customer_id, item.built)
            for item in chunk
            if item.row is not None and isinstance(item.built, Payloads)
        ]
        self.duplicates.look_up(built.email for _, built in sendable)
        if self.state is None:
            return {}
        # Every customer Query 2 returned is (still) in the segment, whatever becomes of the
        # row (sent, unchanged, refused, unreadable); marked a chunk ahead, as only a run
        # that read every row asks who left.
        self.state.seen_many(item.customer_id for item in chunk if item.customer_id)
        known = self.state.known_many(
            [(customer_id, str(built.event["id"])) for customer_id, built in sendable]
        )
        if self.full_refresh:
            return {customer_id: k.without_sent() for customer_id, k in known.items()}
        return known

    def plan(self, item: Prepared, known: Mapping[int, Known]) -> Work | None:
        """Decide what a row needs; rows that need nothing are recorded here and give None.

        A row that breaks an assumption (a value of the wrong type, out of range) fails
        alone as bad_row; the run goes on.
        """
        self.outcome.rows_read += 1
        row, built = item.row, item.built
        try:
            if item.error is not None:
                raise item.error
            assert row is not None and built is not None
            if isinstance(built, Rejection):
                self._reject_locally(row, built)
                return None
            if not self.duplicates.first_time(built.email, row.customer_id):
                self._duplicate(row, built)
                return None
            return self._plan_sends(row, built, known.get(row.customer_id))
        except ROW_ASSUMPTIONS as exc:
            customer_id = item.customer_id
            log.debug("customer %s: unusable row", customer_id, exc_info=True)
            detail = f"{type(exc).__name__}: " + " ".join(str(exc).split())[:200]
            self.record(RowResult(customer_id, None, FAILED, BAD_ROW, detail=detail))
            return None

    def _reject_locally(self, row: SourceRow, rejection: Rejection) -> None:
        row_fp = fingerprint({"row": _row_dict(row)})
        result = RowResult(
            row.customer_id,
            rejection.email or row.email,
            FAILED,
            rejection.reason,
            detail=rejection.detail,
        )
        self._mark_outstanding(result, row.customer_id, row_fp)
        self.record(result)

    def _duplicate(self, row: SourceRow, built: Payloads) -> None:
        first = self.duplicates.owner(built.email)
        result = RowResult(
            row.customer_id,
            built.email,
            FAILED,
            DUPLICATE_EMAIL,
            detail=f"customer {first} has the same email and was sent instead",
        )
        self._mark_outstanding(result, row.customer_id, built.row_fingerprint)
        self.record(result)

    def _mark_outstanding(self, result: RowResult, customer_id: int, row_fp: str) -> None:
        """A failure only a data fix can cure: the first run reports it, later runs on the
        same data say it is still outstanding, and since when."""
        if self.state is None:
            return
        previous = None if self.full_refresh else self.state.rejection(customer_id)
        if previous and previous.fingerprint == row_fp and previous.reason == result.reason:
            result.outstanding, result.failing_since = True, previous.first_rejected_at
            return
        if self.writes and result.reason is not None:
            self.state.rejected(customer_id, row_fp, result.reason)

    def _plan_sends(self, row: SourceRow, built: Payloads, known: Known | None) -> Work | None:
        work = Work(row, built, True, True)
        if self.state is None:
            return self._ready(work)
        known = known or NOTHING_KNOWN
        if known.forgotten_email is not None:
            if known.forgotten_email == built.email:
                self._skip_forgotten(work, record_state=False)
                return None
            if self.writes:
                self.state.forget_forgotten(row.customer_id)
        if known.email is not None and known.email != built.email:
            work.previous_email = known.email
            work.result.previous_email = known.email
        if known.list_identifier is not None:
            work.listed_as = known.list_identifier
        rejection = known.rejection
        refused = None
        if rejection and rejection.reason != DUPLICATE_EMAIL and not self.retry_outstanding:
            refused = refused_part(rejection, built)
        work.send_user = known.user_fingerprint != built.user_fingerprint
        work.send_event = not known.event_accepted
        work.had_rejection = rejection is not None
        work.had_profile = known.user_fingerprint is not None
        if rejection is not None and refused is not None:
            if refused != EVENT_PART or not work.send_user:
                # The event waits for the profile, so a refused profile holds up the row.
                self._still_outstanding(work.result, rejection)
                self.record(work.result)
                return None
            work.send_event, work.event_refused = False, rejection
        if not work.send_user:
            # Iterable holds the profile: the list follows the segment now, whether or not
            # the event still has to go.
            self._keep_listed(work)
        return self._ready(work)

    @staticmethod
    def _still_outstanding(result: RowResult, rejection: SavedRejection) -> None:
        result.status, result.reason = FAILED, rejection.reason
        result.outstanding = True
        result.failing_since = rejection.first_rejected_at
        result.detail = "refused before and unchanged since; not sent again"

    def _ready(self, work: Work) -> Work | None:
        """Record a row that needs no call (or a dry run's); the rest goes on to be sent."""
        if not (work.send_user or work.send_event):
            work.result.status, work.result.reason = SKIPPED, UNCHANGED
            self.record(work.result)
            return None
        if self.client is None:
            work.result.status, work.result.reason = SKIPPED, DRY_RUN
            work.result.payloads = {
                "user_update": work.payloads.user_update if work.send_user else None,
                "event_track": work.payloads.event if work.send_event else None,
            }
            if work.previous_email and self.identify_by == BY_EMAIL:
                work.result.payloads["update_email"] = {
                    "currentEmail": work.previous_email,
                    "newEmail": work.payloads.email,
                }
            self.record(work.result)
            return None
        if work.send_user and self.state is not None and work.had_profile:
            self.state.user_sending(work.row.customer_id, work.user_fingerprint)
        return work

    def record(self, result: RowResult) -> None:
        self.record_many([result])

    def record_many(self, results: Sequence[RowResult]) -> None:
        """Every row's result goes to the results file; a new failure also to the log.

        Rows that succeed or are skipped are not logged one by one: the results file has
        them, and a line per row cost as much CPU as reading the row.
        """
        self.writer.add_many(results)
        self.on_rows(len(results))
        for result in results:
            # Rows a stopping run interrupts are counted in the summary, not one warning
            # each; rows still failing as before are counted as outstanding.
            if result.status == FAILED and not result.outstanding and result.reason != INTERRUPTED:
                log.warning(
                    "customer %s (%s): failed %s%s",
                    result.customer_id,
                    mask_email(result.email),
                    result.reason,
                    f" ({result.detail})" if result.detail else "",
                )

    # -- outcomes of calls, shared by both modes ---------------------------------

    def user_done(self, work: Work, call: CallResult | None, failure: str | None = None) -> bool:
        """Record the profile update's outcome; True when the event may follow."""
        if self._user_answered(work, call, failure):
            self._store_users([work])
            return True
        return False

    def _user_answered(self, work: Work, call: CallResult | None, failure: str | None) -> bool:
        """The profile update's outcome, all but the sync state; True if it was accepted."""
        if call is not None:
            work.result.user_update = call.summary()
        if failure is None and call is not None and call.ok:
            self._keep_listed(work)
            return True
        self._failed_call(work, call, failure, refusal_key(PROFILE_PART, work.user_fingerprint))
        return False

    def _store_users(self, accepted: Sequence[Work]) -> None:
        if self.state is not None and accepted:
            self.state.users_accepted(
                [
                    AcceptedUser(
                        work.row.customer_id,
                        work.user_fingerprint,
                        work.payloads.email,
                        work.payloads.profile,
                        work.result.segment == IN_SEGMENT,
                        work.had_rejection,
                    )
                    for work in accepted
                ]
            )

    def event_done(self, work: Work, call: CallResult | None, failure: str | None = None) -> None:
        if self._event_answered(work, call, failure):
            if self.state is not None:
                self.state.event_accepted(work.event_id, work.row.customer_id)
            self.record(work.result)

    def _event_answered(self, work: Work, call: CallResult | None, failure: str | None) -> bool:
        """The event's outcome; a failure is recorded here, an accepted event by the caller."""
        if call is not None:
            work.result.event_track = call.summary()
        if failure is None and call is not None and call.ok:
            return True
        key = refusal_key(EVENT_PART, work.payloads.event_fingerprint)
        self._failed_call(work, call, failure, key)
        return False

    def _failed_call(
        self, work: Work, call: CallResult | None, failure: str | None, refused: str
    ) -> None:
        """A call that failed; `refused` is what the state records if it failed for good."""
        reason = failure or (call_failure_reason(call) if call else "no_response")
        if reason == FORGOTTEN_CODE:
            self._skip_forgotten(work, record_state=True)
            return
        self._fail(work, reason, refused if is_permanent(call, failure) else None)

    def _skip_forgotten(self, work: Work, record_state: bool, email: str | None = None) -> None:
        """Iterable says the user was forgotten (GDPR): not a failure; not sent again until
        the customer's email changes."""
        work.result.status, work.result.reason = SKIPPED, FORGOTTEN
        work.result.detail = (
            "Iterable says this user was forgotten; not sent until the email changes"
        )
        if record_state and self.writes:
            assert self.state is not None
            self.state.forgotten(work.row.customer_id, email or work.payloads.email)
        self.record(work.result)

    def _fail(self, work: Work, reason: str, refused: str | None = None) -> None:
        """Record a failed row; with `refused` (see refusal_key), one that will fail again
        with the same data, which later runs report as outstanding instead of resending."""
        work.result.status, work.result.reason = FAILED, reason
        self._interrupted = self._interrupted or reason == INTERRUPTED
        if refused is not None and self.state is not None and reason != INTERRUPTED:
            self.state.rejected(work.row.customer_id, refused, reason)
        self.record(work.result)

    def _keep_listed(self, work: Work) -> None:
        """The customer's profile is up to date in Iterable: a member of the segment goes on
        the list (once), a leaver comes off it, under the identifier the profile has now."""
        if self.lists is None:
            return
        if work.result.segment == IN_SEGMENT:
            if work.listed_as != work.payloads.identifier:
                self.lists.subscribe(work.row.customer_id, work.payloads.identifier)
        elif work.listed_as is not None:
            self.lists.unsubscribe(work.row.customer_id, work.payloads.identifier)

    def apply_user_answers(self, answers: Iterable[Answer]) -> list[Work]:
        """Record users/bulkUpdate answers; returns the rows whose events may now be sent."""
        accepted = [work for answer in answers for work in self._users_answered(answer)]
        self._store_users(accepted)
        for work in accepted:
            if not work.send_event:
                self.skip_event(work)
        return [work for work in accepted if work.send_event]

    def apply_event_answers(self, answers: Iterable[Answer]) -> list[Work]:
        accepted = [work for answer in answers for work in self._events_answered(answer)]
        if self.state is not None:
            self.state.events_accepted([(work.event_id, work.row.customer_id) for work in accepted])
        self.record_many([work.result for work in accepted])
        return []

    def _users_answered(self, answer: Answer) -> list[Work]:
        """The rows of a bulk answer whose profiles Iterable accepted, recorded as such."""
        rows, call, failures = _answered(answer)
        if call.ok and not failures:  # the usual case, without a call a row: all accepted
            summary = call.summary()
            for work in rows:
                work.result.user_update = summary
            if self.lists is not None:
                for work in rows:
                    self._keep_listed(work)
            return list(rows)
        return [
            work
            for position, work in enumerate(rows)
            if self._user_answered(work, call, failures.get(position))
        ]

    def _events_answered(self, answer: Answer) -> list[Work]:
        rows, call, failures = _answered(answer)
        if call.ok and not failures:
            summary = call.summary()
            for work in rows:
                work.result.event_track = summary
            return list(rows)
        return [
            work
            for position, work in enumerate(rows)
            if self._event_answered(work, call, failures.get(position))
        ]

    def skip_user(self, work: Work) -> None:
        work.result.user_update = {"skipped": UNCHANGED}

    def skip_event(self, work: Work) -> None:
        if work.event_refused is not None:
            self._still_outstanding(work.result, work.event_refused)
        elif work.result.segment == IN_SEGMENT:
            work.result.event_track = {"skipped": UNCHANGED}
        self.record(work.result)

    def abort(self, exc: StopRun) -> None:
        with self._abort_lock:
            if self.outcome.aborted is None:
                self.outcome.aborted = str(exc)
                # DEBUG: main() reports it, in one line.
                log.debug("%s; stopping the run", exc)
        self.stop.set()

    # -- email changes --------------------------------------------------------------

    def move_email(self, work: Work) -> bool:
        """users/updateEmail from the email Iterable holds to the row's; True when the profile
        update may follow. Only for identify-by-email: by userId the update carries the email.
        """
        assert self.client is not None and work.previous_email is not None
        old, new = work.previous_email, work.payloads.email
        call = self.client.update_email(old, new)
        work.result.update_email = call.summary()
        if call.ok or (not call.answered and self._moved_already(old, new)):
            self._email_moved(work)
            return True
        if call.code == FORGOTTEN_CODE:
            # Iterable forgot the old address (a forgotten new one, users/update says so
            # itself): the profile goes in under the new email as a new one.
            if self.writes:
                assert self.state is not None
                self.state.forgotten(work.row.customer_id, old)
            self._email_not_moved(
                work,
                EMAIL_CHANGE_FORGOTTEN,
                "Iterable says the previous email was forgotten; a profile is created under "
                "the new one",
            )
            return True
        if call.http_status == 409:
            self._email_not_moved(
                work,
                EMAIL_CHANGE_CONFLICT,
                f"{mask_email(new)} already has a profile in Iterable; the old profile was "
                "left alone and this one updated",
            )
            return True
        if call.no_such_user:
            self._email_not_moved(
                work,
                EMAIL_CHANGE_OLD_MISSING,
                "Iterable has no profile under the previous email; a profile is created under "
                "the new one",
            )
            return True
        refused = refusal_key(PROFILE_PART, work.user_fingerprint)
        self._fail(work, call_failure_reason(call), refused if is_permanent(call) else None)
        return False

    def _moved_already(self, old: str, new: str) -> bool:
        """After updateEmail got no answer: whether Iterable moved the profile all the same
        (the new email has a profile, the old one none). A resend cannot tell: it would find
        the old email gone."""
        assert self.client is not None
        found_new, found_old = self.client.get_user(new), self.client.get_user(old)
        return _has_user(found_new) and found_old.ok and not _has_user(found_old)

    def _email_moved(self, work: Work) -> None:
        old, new = work.previous_email, work.payloads.email
        if self.state is not None:
            self.state.email_moved(work.row.customer_id, new)
        if work.listed_as == old:
            work.listed_as = new  # Iterable moved the list membership with the profile
            if self.state is not None:
                self.state.subscribed(work.row.customer_id, new)

    def _email_not_moved(self, work: Work, warning: str, detail: str) -> None:
        """The old profile stays as it is; the row's update goes to the new email."""
        work.result.warnings.append(f"{warning}: {detail}")
        if warning != EMAIL_CHANGE_CONFLICT and work.result.segment == IN_SEGMENT:
            # The old profile is gone with its events: the new one gets the latest again.
            work.send_event = True
        if work.listed_as is not None and work.listed_as == work.previous_email and self.lists:
            self.lists.unsubscribe(work.row.customer_id, work.listed_as)
        work.listed_as = None  # a member of the segment is subscribed under the new email

    # -- single mode ----------------------------------------------------------------

    def run_single(self, rows: Iterable[SourceRow | UnreadableRow], concurrency: int) -> Outcome:
        """Each user's update then event; `concurrency` threads, each taking the next planned
        user as soon as it is done with one."""
        # Users are planned half of `concurrency` at a time, when the queue is down to as
        # many: a stopping run then has no more than `concurrency` queued to record as
        # interrupted, and the workers still have work while the next ones are planned.
        step = max(1, concurrency // 2)
        feed = WorkFeed(low=step)
        workers = [
            threading.Thread(target=self._single_worker, args=(feed,), name=f"sync_{number}")
            for number in range(concurrency)
        ]
        for worker in workers:
            worker.start()
        try:
            planned = self._planned(rows)
            while True:
                feed.wait_for_room()
                if not (batch := list(itertools.islice(planned, step))):
                    break
                feed.put_many(batch)
        finally:
            feed.close()
            for worker in workers:
                worker.join()
        return self._finished()

    def _single_worker(self, feed: WorkFeed) -> None:
        while (work := feed.take()) is not None:
            self._sync_one(work)

    def _sync_one(self, work: Work) -> None:
        assert self.client is not None
        try:
            if work.previous_email is not None and self.identify_by == BY_EMAIL:
                if self.stop.is_set():
                    self._fail(work, INTERRUPTED)
                    return
                if not self.move_email(work):
                    return
            if work.send_user:
                if self.stop.is_set():
                    self._fail(work, INTERRUPTED)
                    return
                if not self.user_done(
                    work,
                    self.client.update_user(work.payloads.user_update, work.payloads.user_bytes),
                ):
                    return
            else:
                self.skip_user(work)
            if work.send_event:
                self.event_done(
                    work, self.client.track_event(work.payloads.event, work.payloads.event_bytes)
                )
            else:
                self.skip_event(work)
        except StopRun as exc:
            self._fail(work, INTERRUPTED)
            self.abort(exc)
        except Exception:
            log.exception("unexpected error for customer %s", work.row.customer_id)
            self._fail(work, "internal_error")

    def _planned(self, rows: Iterable[SourceRow | UnreadableRow]) -> Iterator[Work]:
        source, stop = iter(rows), self.stop
        while not self._stopping() and (
            chunk := [self._prepare(row) for row in itertools.islice(source, PLAN_CHUNK)]
        ):
            known = self._look_up(chunk)
            for item in chunk:
                if stop.is_set() and self._stopping():
                    return
                work = self.plan(item, known)
                if work is not None:
                    yield work

    def _stopping(self) -> bool:
        if not self.stop.is_set():
            return False
        # A run that aborted (rejected key, Iterable down) was not stopped by a signal.
        self.outcome.stopped = self.outcome.aborted is None
        return True

    # -- bulk mode ----------------------------------------------------------------

    def run_bulk(
        self, rows: Iterable[SourceRow | UnreadableRow], batch_size: int, events_batch_size: int
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
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="email-change") as single_pool,
        ):
            user_limit = BatchLimit(USERS_BULK_UPDATE, batch_size)
            event_limit = BatchLimit(EVENTS_TRACK_BULK, events_batch_size)
            send_events = functools.partial(deliver_events, limit=event_limit)
            send_users = functools.partial(deliver_users, limit=user_limit)
            event_batches = BatchQueue(
                submit=lambda batch: event_pool.submit(self._deliver, send_events, client, batch),
                settle_one=lambda call: self._settle(call, self.apply_event_answers),
            )
            events = Batcher(event_limit, event_batches.send, event_item)

            def settle_user_batch(call: BatchCall) -> None:
                events.add_many(self._settle(call, self.apply_user_answers))
                events.flush()

            user_batches = BatchQueue(
                submit=lambda batch: user_pool.submit(self._deliver, send_users, client, batch),
                settle_one=settle_user_batch,
            )
            users = Batcher(user_limit, user_batches.send, user_item)
            for index, work in enumerate(self._planned(rows)):
                if index % SETTLE_EVERY == 0:
                    user_batches.settle(wait=False)
                    event_batches.settle(wait=False)
                if work.previous_email is not None:
                    # Iterable processes single and bulk calls apart: a customer whose
                    # email changes goes through the single calls for this run.
                    single_pool.submit(self._sync_one, work)
                    continue
                if work.send_user:
                    users.add(work)
                else:
                    self.skip_user(work)
                    if work.send_event:
                        events.add(work)
                    else:
                        self.skip_event(work)
            users.flush()
            user_batches.drain()
            events.flush()
            event_batches.drain()
        return self._finished()

    # -- after every row: the segment --------------------------------------------

    def finish_segment(self, read_customers: ReadCustomers, concurrency: int) -> None:
        """Customers who left the segment, then the list's last changes.

        Only after a run that saw every row: a stopped run cannot tell who left.
        """
        if self.state is None or self.stop.is_set() or self.outcome.aborted:
            return
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="leavers") as pool:
            for chunk in self.state.left_segment():
                customers = read_customers([member.customer_id for member in chunk])
                for member in chunk:
                    if self.stop.is_set():
                        break
                    self._leaver(member, customers.get(member.customer_id), pool)
        if self.lists is not None and not self.stop.is_set():
            self.lists.flush()
            for member in self.state.list_members_not_seen():
                if member.list_identifier is not None:
                    self.lists.unsubscribe(member.customer_id, member.list_identifier)
            self.lists.flush()

    def _leaver(self, member: Member, customer: Customer | None, pool: ThreadPoolExecutor) -> None:
        if customer is None:
            self._unlist(member)
            self._deleted(member, pool)
            return
        update = plan_leaver(member, customer, self.identify_by)
        result = RowResult(
            member.customer_id, member.email, SKIPPED, UNCHANGED, segment=LEFT_SEGMENT
        )
        if update is None:
            self._unlist(member)
            result.detail = "left the segment; Iterable already holds the current fields"
            if self.writes:
                assert self.state is not None
                self.state.left(member.customer_id, None)
            self.record(result)
            return
        # Off the list once the profile is updated, under the identifier it has then.
        work = _leaver_work(member, update)
        if self._refused_before(
            work.result, member.customer_id, PROFILE_PART, work.user_fingerprint
        ):
            return
        if self.client is None:
            work.result.status, work.result.reason = SKIPPED, DRY_RUN
            work.result.payloads = {"user_update": update.user_update, "event_track": None}
            self.record(work.result)
            return
        pool.submit(self._sync_one, work)

    def _unlist(self, member: Member) -> None:
        if member.list_identifier is not None and self.lists is not None:
            self.lists.unsubscribe(member.customer_id, member.list_identifier)

    def _deleted(self, member: Member, pool: ThreadPoolExecutor) -> None:
        """The customer's row is gone from the database."""
        result = RowResult(
            member.customer_id, member.email, SKIPPED, LEFT_DELETED, segment=LEFT_SEGMENT
        )
        identity = _identity(member, self.identify_by)
        if self.delete_deleted and identity is not None and self.client is not None:
            if not self._refused_before(result, member.customer_id, DELETE_PART, "-"):
                pool.submit(self._delete_user, member.customer_id, identity, result)
            return
        result.detail = "no longer in the customers table; nothing sent"
        if self.delete_deleted and self.client is None:
            result.reason = DRY_RUN
            result.payloads = {"delete_user": identity}
        if self.writes:
            assert self.state is not None
            self.state.deleted(member.customer_id)
        self.record(result)

    def _delete_user(self, customer_id: int, identity: dict[str, str], result: RowResult) -> None:
        assert self.client is not None and self.state is not None
        try:
            call = self.client.delete_user(identity)
        except StopRun as exc:
            result.status, result.reason = FAILED, INTERRUPTED
            self.record(result)
            self.abort(exc)
            return
        result.user_update = call.summary()
        if call.ok or call.no_such_user:
            result.status = SUCCESS
            result.detail = (
                "deleted in Iterable (ON_DELETED_CUSTOMER=delete)"
                if call.ok
                else "Iterable had no such user any more; nothing left to delete"
            )
            self.state.deleted(customer_id, in_iterable=True)
        else:
            result.status, result.reason = FAILED, call_failure_reason(call)
            if is_permanent(call):
                self.state.rejected(customer_id, refusal_key(DELETE_PART, "-"), result.reason)
        self.record(result)

    def _refused_before(self, result: RowResult, customer_id: int, part: str, digest: str) -> bool:
        """A leaver's call Iterable refused for good, for the same data: recorded as still
        outstanding (True), not sent again; the outstanding rule as for Query 2's rows."""
        if self.state is None or self.retry_outstanding:
            return False
        rejection = self.state.rejection(customer_id)
        if rejection is None or rejection.fingerprint != refusal_key(part, digest):
            return False
        self._still_outstanding(result, rejection)
        self.record(result)
        return True

    def _finished(self) -> Outcome:
        """A signal that came while the last rows were in flight stopped the run as well
        when it cut a row short; one that came after every row was done did not."""
        if self.stop.is_set() and self.outcome.aborted is None and self._interrupted:
            self.outcome.stopped = True
        return self.outcome

    def _deliver(
        self,
        send: Callable[[IterableClient, Sequence[BulkRow]], list[Answer]],
        client: IterableClient,
        batch: Sequence[BulkRow],
    ) -> Delivered:
        """On a pool thread: send one batch and collect its answers; no row is touched here.

        A rejected key or an unreachable Iterable aborts the run at once; anything else
        fails only this batch.
        """
        done = Delivered()
        if self.stop.is_set():
            done.interrupted = True
            return done
        try:
            done.answers = send(client, batch)
        except StopRun as exc:
            done.interrupted = True
            self.abort(exc)
        except Exception:
            log.exception("unexpected error in a batch of %d users", len(batch))
            done.unexpected = True
        return done

    def _settle(
        self,
        call: BatchCall,
        apply: Callable[[list[Answer]], list[Work]],
    ) -> list[Work]:
        """On this thread: record a batch's answers; returns what apply returns, or []."""
        done = call.future.result()
        reason: str | None = None
        accepted: list[Work] = []
        if done.interrupted:
            # Outcomes a split batch got before the stop are dropped too: its rows are all
            # sent again by the next run, which the idempotent writes absorb.
            reason = INTERRUPTED
        else:
            try:
                accepted = apply(done.answers)
            except Exception:
                log.exception("unexpected error in a batch of %d users", len(call.batch))
                done.unexpected = True
            if done.unexpected:
                reason = "internal_error"
        if reason is None:
            return accepted
        for row in call.batch:
            self._fail(cast(Work, row), reason)
        return []


def _answered(answer: Answer) -> tuple[Sequence[Work], CallResult, Mapping[int, str]]:
    """A bulk answer with its rows as the Work this module sent (one cast, not one a row)."""
    return cast("tuple[Sequence[Work], CallResult, Mapping[int, str]]", answer)


def _leaver_work(member: Member, update: LeaverUpdate) -> Work:
    """A leaver's profile update, sent through the same single-call path as a row."""
    row = SourceRow(
        customer_id=member.customer_id,
        email=update.email,
        first_name=update.profile.get("first_name"),
        last_name=update.profile.get("last_name"),
        plan_type=update.profile.get("plan_type"),
        page_view_id=0,
        page=None,
        device=None,
        location=None,
        viewed_at=None,
    )
    identifier = next(
        iter(update.user_update[key] for key in ("email", "userId") if key in update.user_update)
    )
    payloads = Payloads(
        email=update.email,
        identifier=str(identifier),
        user_update=update.user_update,
        event={},
        profile=update.profile,
    )
    work = Work(
        row,
        payloads,
        send_user=True,
        send_event=False,
        previous_email=update.previous_email,
        listed_as=member.list_identifier,
    )
    work.result.segment = LEFT_SEGMENT
    work.result.previous_email = update.previous_email
    return work


def _has_user(call: CallResult) -> bool:
    """users/getByEmail found someone (its "user" is empty for nobody)."""
    return call.ok and bool((call.body or {}).get("user"))


def _identity(member: Member, identify_by: str) -> dict[str, str] | None:
    if identify_by == BY_USER_ID:
        return {"userId": str(member.customer_id)}
    return {"email": member.email} if member.email else None


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
