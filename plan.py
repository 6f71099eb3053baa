"""Planning: what each row of Query 2 needs before anything is sent.

A row is turned into payloads, checked for an email an earlier row of the run already
took, and looked up in the sync state (a chunk of rows a query). It comes out as Work to
send, or as a result for a row that needs no call. The outstanding rule (which refusals
hold a row back) and the segment's membership (every row Query 2 returned is in it) are
decided here too.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bulk import UNMATCHED_FAILURE
from iterable_client import CallResult, is_no_such_user
from payloads import (
    BY_EMAIL,
    ROW_ASSUMPTIONS,
    Payloads,
    SourceRow,
    UnreadableRow,
    Unsendable,
    build_payloads,
    fingerprint,
)
from results import (
    BAD_ROW,
    DRY_RUN,
    DUPLICATE_EMAIL,
    FAILED,
    FORGOTTEN,
    SKIPPED,
    SUCCESS,
    UNCHANGED,
    RowResult,
)
from sync_state import NOTHING_KNOWN, Known, RecordedRefusal, RowInsert, StateStore

log = logging.getLogger(__name__)

# Rows planned together: their state and duplicate checks are one query each.
PLAN_CHUNK = 400
# Emails looked up per query (under SQLite's 999 parameters).
LOOKUP_BATCH = 900

# Which part of a row a refusal on record is about: its fingerprint is "<part>:<digest>".
# (A refusal written before parts were recorded is about the whole row.)
PROFILE_PART, EVENT_PART, DELETE_PART = "user", "event", "delete"


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
    # What the state had before: a refusal to clear on success, a profile to forget
    # before sending a different one. Unknown (full refresh, leavers) means "maybe".
    had_refusal: bool = True
    had_profile: bool = True
    # The event was refused for good and has not changed since: not sent again.
    event_refused: RecordedRefusal | None = None
    # An earlier move to this email got no answer: it may have happened.
    unsure_move: str | None = None
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


class Prepared(NamedTuple):
    """A row read and turned into payloads, before the state and duplicates are consulted."""

    customer_id: int
    row: SourceRow | None
    built: Payloads | Unsendable | None
    error: Exception | None  # one of ROW_ASSUMPTIONS, to record when the row's turn comes


# -- the outstanding rule ----------------------------------------------------------------------


def is_permanent(call: CallResult, failure: str | None = None) -> bool:
    """The outstanding rule: whether a failure will come back with the same data, so the
    row waits for its data to change (or --retry-outstanding) instead of being resent.

    A 4xx other than 429 will; so will a failure a bulk answer names. Iterable not finding
    the user will not (a profile sent in bulk may not exist yet), nor will a row of a batch
    whose failures Iterable did not name, nor no answer at all.
    """
    if failure is not None:
        return not (is_no_such_user(failure) or failure == UNMATCHED_FAILURE)
    if call.no_such_user:
        return False
    status = call.http_status
    return status is not None and 400 <= status < 500 and status != 429


def refusal_key(part: str, digest: str) -> str:
    """What a refusal on record is about: one part of the row, by that part's fingerprint."""
    return f"{part}:{digest}"


def refused_part(refusal: RecordedRefusal, built: Payloads) -> str | None:
    """Which part of the row a refusal on record still holds for (its data unchanged since),
    or None when that part has changed."""
    part, _, digest = refusal.fingerprint.partition(":")
    if part == PROFILE_PART:
        return part if digest == built.user_fingerprint else None
    if part == EVENT_PART:
        return part if digest == built.event_fingerprint else None
    return "row" if refusal.fingerprint == built.row_fingerprint else None


def still_outstanding(result: RowResult, refusal: RecordedRefusal) -> None:
    """The row fails as it did before, without a call: outstanding since then."""
    result.status, result.reason = FAILED, refusal.reason
    result.outstanding = True
    result.failing_since = refusal.first_rejected_at
    result.detail = "refused before and unchanged since; not sent again"


# -- duplicate emails ----------------------------------------------------------------------------

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


# -- the planner ---------------------------------------------------------------------------------


class Planner:
    """Decides what each row needs, from the row and what the state says about it.

    Rows that need no call come back as results; the caller records them. `keep_listed`
    is told of every row whose profile Iterable already holds, so the list follows the
    segment whether or not anything else is sent.
    """

    def __init__(
        self,
        *,
        state: StateStore | None,
        may_write_state: bool,
        dry_run: bool,
        keep_listed: Callable[[Work], None],
        candidate: str | None = None,
        identify_by: str = BY_EMAIL,
        full_refresh: bool = False,
        retry_outstanding: bool = False,
    ) -> None:
        self.state = state
        self.may_write_state = may_write_state
        self.dry_run = dry_run
        self.keep_listed = keep_listed
        self.candidate = candidate
        self.identify_by = identify_by
        self.full_refresh = full_refresh
        self.retry_outstanding = retry_outstanding
        self.duplicates = DuplicateEmails()

    def prepare(self, row: SourceRow | UnreadableRow) -> Prepared:
        if isinstance(row, UnreadableRow):
            return Prepared(row.customer_id, None, None, row.error)
        try:
            built = build_payloads(row, self.candidate, self.identify_by)
            return Prepared(row.customer_id, row, built, None)
        except ROW_ASSUMPTIONS as exc:
            return Prepared(row.customer_id, None, None, exc)

    def look_up(self, chunk: Sequence[Prepared]) -> dict[int, Known]:
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

    def plan(self, item: Prepared, known: Mapping[int, Known]) -> Work | RowResult:
        """Work to send, or the result of a row that needs no call.

        A row that breaks an assumption (a value of the wrong type, out of range) fails
        alone as bad_row; the run goes on.
        """
        row, built = item.row, item.built
        try:
            if item.error is not None:
                raise item.error
            assert row is not None and built is not None
            if isinstance(built, Unsendable):
                return self._unsendable(row, built)
            if not self.duplicates.first_time(built.email, row.customer_id):
                return self._duplicate(row, built)
            return self._plan_sends(row, built, known.get(row.customer_id))
        except ROW_ASSUMPTIONS as exc:
            customer_id = item.customer_id
            log.debug("customer %s: unusable row", customer_id, exc_info=True)
            detail = f"{type(exc).__name__}: " + " ".join(str(exc).split())[:200]
            return RowResult(customer_id, None, FAILED, BAD_ROW, detail=detail)

    def _unsendable(self, row: SourceRow, unsendable: Unsendable) -> RowResult:
        result = RowResult(
            row.customer_id,
            unsendable.email or row.email,
            FAILED,
            unsendable.reason,
            detail=unsendable.detail,
        )
        self._mark_outstanding(result, row.customer_id, fingerprint({"row": _row_dict(row)}))
        return result

    def _duplicate(self, row: SourceRow, built: Payloads) -> RowResult:
        first = self.duplicates.owner(built.email)
        result = RowResult(
            row.customer_id,
            built.email,
            FAILED,
            DUPLICATE_EMAIL,
            detail=f"customer {first} has the same email and was sent instead",
        )
        self._mark_outstanding(result, row.customer_id, built.row_fingerprint)
        return result

    def _mark_outstanding(self, result: RowResult, customer_id: int, row_fp: str) -> None:
        """A failure only a data fix can cure: the first run reports it, later runs on the
        same data say it is still outstanding, and since when."""
        if self.state is None:
            return
        previous = None if self.full_refresh else self.state.refusal(customer_id)
        if previous and previous.fingerprint == row_fp and previous.reason == result.reason:
            result.outstanding, result.failing_since = True, previous.first_rejected_at
            return
        if self.may_write_state and result.reason is not None:
            self.state.refused(customer_id, row_fp, result.reason)

    def _plan_sends(self, row: SourceRow, built: Payloads, known: Known | None) -> Work | RowResult:
        work = Work(row, built, True, True)
        if self.state is None:
            return self._ready(work)
        known = known or NOTHING_KNOWN
        if known.forgotten_email is not None:
            if known.forgotten_email == built.email:
                return forgotten_result(work.result)
            if self.may_write_state:
                self.state.forget_forgotten(row.customer_id)
        if known.email is not None and known.email != built.email:
            work.previous_email = known.email
            work.result.previous_email = known.email
        work.listed_as = known.list_identifier
        work.unsure_move = known.unsure_move
        refusal = known.refusal
        refused = None
        if refusal and refusal.reason != DUPLICATE_EMAIL and not self.retry_outstanding:
            refused = refused_part(refusal, built)
        work.send_user = known.user_fingerprint != built.user_fingerprint
        work.send_event = not known.event_accepted
        work.had_refusal = refusal is not None
        work.had_profile = known.user_fingerprint is not None
        if refusal is not None and refused is not None:
            if refused != EVENT_PART or not work.send_user:
                # The event waits for the profile, so a refused profile holds up the row.
                still_outstanding(work.result, refusal)
                return work.result
            work.send_event, work.event_refused = False, refusal
        if not work.send_user:
            # Iterable holds the profile: the list follows the segment now, whether or not
            # the event still has to go.
            self.keep_listed(work)
        return self._ready(work)

    def _ready(self, work: Work) -> Work | RowResult:
        """The result of a row that needs no call (or a dry run's); the rest is Work."""
        if not (work.send_user or work.send_event):
            work.result.status, work.result.reason = SKIPPED, UNCHANGED
            return work.result
        if self.dry_run:
            work.result.status, work.result.reason = SKIPPED, DRY_RUN
            work.result.payloads = {
                **(work.result.payloads or {}),  # a list call planned already
                "user_update": work.payloads.user_update if work.send_user else None,
                "event_track": work.payloads.event if work.send_event else None,
            }
            if work.previous_email and self.identify_by == BY_EMAIL:
                work.result.payloads["update_email"] = {
                    "currentEmail": work.previous_email,
                    "newEmail": work.payloads.email,
                }
                if work.listed_as == work.previous_email:
                    work.listed_as = work.payloads.email  # the membership moves with it
            if work.send_user:
                # As a real run does once Iterable has accepted the profile.
                self.keep_listed(work)
            return work.result
        if work.send_user and self.state is not None and work.had_profile:
            self.state.user_sending(work.row.customer_id, work.user_fingerprint)
        return work

    def close(self) -> None:
        self.duplicates.close()


def forgotten_result(result: RowResult) -> RowResult:
    """Iterable says the user was forgotten (GDPR): not a failure, and not sent again until
    the customer's email changes."""
    result.status, result.reason = SKIPPED, FORGOTTEN
    result.detail = "Iterable says this user was forgotten; not sent until the email changes"
    return result


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
