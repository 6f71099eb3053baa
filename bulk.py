"""Bulk mode: batching by count and bytes, and mapping bulk answers back to single rows."""

from __future__ import annotations

import logging
import operator
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from iterable_client import (
    EVENTS_TRACK_BULK,
    USERS_BULK_UPDATE,
    CallResult,
    IterableClient,
)
from payloads import Payloads

log = logging.getLogger(__name__)

# Iterable refuses bulk bodies over 4 MB; keep a margin for the envelope.
MAX_BULK_BYTES = 4 * 1024 * 1024 - 1024
# A whole batch rejected for one bad item: find the item (or halve the batch) and resend.
SPLITTABLE_CODES = frozenset({"BadJsonBody", "RequestFieldsTypesMismatched", "BadParams"})
# Per-item failures inside an HTTP 200, named by email (xEmails) or userId (xUserIds), and
# the reason each becomes: the code a single-mode call would have given, where there is one.
FAILED_LISTS = {
    "invalidEmails": "InvalidEmailAddressError",
    "invalidUserIds": "InvalidUserIdError",
    "notFoundEmails": "UnknownEmailError",
    "notFoundUserIds": "UnknownUserIdError",
    "forgottenEmails": "ForgottenUserError",
    "forgottenUserIds": "ForgottenUserError",
    "conflictEmails": "conflict",
    "conflictUserIds": "conflict",
    "invalidDataEmails": "RequestFieldsTypesMismatched",
    "invalidDataUserIds": "RequestFieldsTypesMismatched",
}
DISALLOWED_EVENT_NAME = "disallowed_event_name"
# A row of a batch in which Iterable counted more failures than it named.
UNMATCHED_FAILURE = "unmatched_failure"
BATCH_TOO_LARGE = "BatchTooLarge"
# Bulk batches sent but not yet applied, per endpoint.
BATCHES_IN_FLIGHT = 4
_ITEM_PATH = re.compile(r"^obj\.(?:users|events)\[(\d+)\]")


class BulkRow(Protocol):
    """What bulk mode reads from a row on its way: the payloads it sends."""

    @property
    def payloads(self) -> Payloads: ...


class BatchLimit:
    """How many records a bulk request of one endpoint may carry; halved for the rest of the
    run when Iterable refuses a batch as too large (413 or BatchTooLarge)."""

    def __init__(self, endpoint: str, size: int) -> None:
        self.endpoint = endpoint
        self.size = size
        self._lock = threading.Lock()
        self._warned = False

    def halve(self, refused: int) -> None:
        with self._lock:
            smaller = max(1, refused // 2)
            if smaller >= self.size:
                return  # another batch already lowered it
            self.size = smaller
            first, self._warned = not self._warned, True
        # One warning a run and endpoint; further halvings go to the log file.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: Iterable refused a batch of %d as too large; halving: at most %d a request "
            "for the rest of the run",
            self.endpoint,
            refused,
            smaller,
        )


class Batcher:
    """Collects rows until a batch is full by count or bytes, then hands it on.

    Fed from the planning thread only.
    """

    def __init__(
        self,
        limit: BatchLimit,
        send: Callable[[Sequence[BulkRow]], None],
        item: Callable[[BulkRow], bytes],
    ) -> None:
        self.limit = limit
        self.send = send
        self.item = item
        self.items: list[BulkRow] = []
        self.size = 0

    def add(self, row: BulkRow) -> None:
        size = len(self.item(row)) + 1
        if self.size + size > MAX_BULK_BYTES or len(self.items) >= self.limit.size:
            self.flush()  # nothing to do when empty: one item always fits
        self.items.append(row)
        self.size += size

    def add_many(self, rows: Iterable[BulkRow]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if self.items:
            batch, self.items, self.size = self.items, [], 0
            self.send(batch)


class Answer(NamedTuple):
    """What a bulk call came to for some rows of a batch (all of them, unless it was split).

    One per call rather than one per row: rows are many, and most calls take them all.
    """

    rows: Sequence[BulkRow]
    call: CallResult  # shared by the rows, with the size of the batch sent
    failures: Mapping[int, str]  # rows (by position) that failed inside an accepted call


# What a row adds to each bulk body (attribute getters: called for every row twice).
user_item: Callable[[BulkRow], bytes] = operator.attrgetter("payloads.user_bytes")
event_item: Callable[[BulkRow], bytes] = operator.attrgetter("payloads.event_bytes")


def deliver_users(
    client: IterableClient, batch: Sequence[BulkRow], limit: BatchLimit
) -> list[Answer]:
    """users/bulkUpdate for a batch (halved or resent as needed): answers for all its rows."""
    return deliver(client, USERS_BULK_UPDATE, "users", batch, user_item, limit)


def deliver_events(
    client: IterableClient, batch: Sequence[BulkRow], limit: BatchLimit
) -> list[Answer]:
    return deliver(client, EVENTS_TRACK_BULK, "events", batch, event_item, limit)


def deliver(
    client: IterableClient,
    endpoint: str,
    key: str,
    batch: Sequence[BulkRow],
    item: Callable[[BulkRow], bytes],
    limit: BatchLimit,
) -> list[Answer]:
    """Send a batch; answers that between them cover every row in it, in order.

    A batch refused as a whole because of one item is resent without that item (when
    Iterable names it) or in halves, so only the bad rows fail. A batch refused as too
    large is resent in halves, and later batches are cut to that size.
    """
    body = b'{"' + key.encode() + b'":[' + b",".join([item(w) for w in batch]) + b"]}"
    call = client.call(endpoint, None, body=body)
    if call.ok:
        return [accepted_answer(batch, call)]
    if is_too_large(call) and len(batch) > 1:
        limit.halve(len(batch))
        middle = len(batch) // 2
        return [
            *deliver(client, endpoint, key, batch[:middle], item, limit),
            *deliver(client, endpoint, key, batch[middle:], item, limit),
        ]
    if call.http_status == 400 and call.code in SPLITTABLE_CODES and len(batch) > 1:
        bad = named_item(call.body or {})
        if bad is not None and bad < len(batch):
            log.info(
                "%s: item %d of %d refused (%s); resending the rest",
                endpoint,
                bad,
                len(batch),
                call.code,
            )
            rest = [*batch[:bad], *batch[bad + 1 :]]
            return [
                Answer(batch[bad : bad + 1], _batch_call(call, len(batch)), NO_FAILURES),
                *deliver(client, endpoint, key, rest, item, limit),
            ]
        middle = len(batch) // 2
        log.info(
            "%s: batch of %d refused (%s); resending in halves", endpoint, len(batch), call.code
        )
        return [
            *deliver(client, endpoint, key, batch[:middle], item, limit),
            *deliver(client, endpoint, key, batch[middle:], item, limit),
        ]
    return [Answer(batch, _batch_call(call, len(batch)), NO_FAILURES)]


NO_FAILURES: Mapping[int, str] = {}


def accepted_answer(batch: Sequence[BulkRow], call: CallResult) -> Answer:
    """A batch Iterable took: each row succeeded unless the answer lists it as failed.

    Iterable names a failure by email or by userId, whichever it was about (a userId
    request whose email is taken or forgotten comes back in conflictEmails or
    forgottenEmails), so both of a row's names are looked for. When it counts more failures
    than it names rows for, the rows it did not name are not taken as accepted either:
    they fail as UNMATCHED_FAILURE and are sent again by the next run.
    """
    body = call.body or {}
    by_email, by_user_id = failed_identifiers(body)
    disallowed = set(body.get("disallowedEventNames") or [])
    shared = _batch_call(call, len(batch))
    fail_count = body.get("failCount")
    counted = fail_count if isinstance(fail_count, int) and not isinstance(fail_count, bool) else 0
    if not (by_email or by_user_id or disallowed or counted):
        return Answer(batch, shared, NO_FAILURES)
    failed: dict[int, str] = {}
    for position, work in enumerate(batch):
        payloads = work.payloads
        failure = by_email.get(payloads.email)
        if failure is None and payloads.user_id is not None:
            failure = by_user_id.get(payloads.user_id)
        if failure is None and payloads.event.get("eventName") in disallowed:
            failure = DISALLOWED_EVENT_NAME
        if failure is not None:
            failed[position] = failure
    if counted > len(failed):
        log.warning(
            "%s: Iterable counted %d failures in a batch of %d but named %d; the other rows "
            "are sent again next run",
            call.endpoint,
            counted,
            len(batch),
            len(failed),
        )
        failed = {
            position: failed.get(position, UNMATCHED_FAILURE) for position in range(len(batch))
        }
    return Answer(batch, shared, failed)


def is_too_large(call: CallResult) -> bool:
    return call.http_status == 413 or call.code == BATCH_TOO_LARGE


def _batch_call(call: CallResult, size: int) -> CallResult:
    """The batch's call as each row sees it, with the batch's size for the results file."""
    return replace(call, batch_size=size)


def failed_identifiers(body: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Every item a bulk answer lists as failed, as (email (lower-cased) -> reason,
    userId -> reason)."""
    by_email: dict[str, str] = {}
    by_user_id: dict[str, str] = {}
    failed_updates = body.get("failedUpdates") or {}
    sources = [failed_updates, body]  # top-level invalidEmails is the deprecated spelling
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for list_name, reason in FAILED_LISTS.items():
            by_emails = list_name.endswith("Emails")
            failures = by_email if by_emails else by_user_id
            for value in source.get(list_name) or []:
                if isinstance(value, str | int):
                    key = str(value).strip()
                    failures.setdefault(key.lower() if by_emails else key, reason)
    return by_email, by_user_id


def named_item(body: Mapping[str, Any]) -> int | None:
    """The index of the item a 400 names in its params, e.g. obj.events[1].createdAt."""
    params = body.get("params")
    if not isinstance(params, Mapping):
        return None
    for name in params:
        match = _ITEM_PATH.match(str(name))
        if match:
            return int(match.group(1))
    return None


@dataclass
class Delivered:
    """What a pool thread brings back from one bulk batch."""

    answers: list[Answer] = field(default_factory=list)
    interrupted: bool = False  # the run was stopping, or Iterable refused the key or is down
    unexpected: bool = False  # an unexpected error, logged where it happened


@dataclass
class BatchCall:
    batch: Sequence[BulkRow]
    future: Future[Delivered]


@dataclass
class BatchQueue:
    """Bulk batches on their way: sent from a pool, their answers settled in order here."""

    submit: Callable[[Sequence[BulkRow]], Future[Delivered]]
    settle_one: Callable[[BatchCall], object]
    calls: deque[BatchCall] = field(default_factory=deque)

    def send(self, batch: Sequence[BulkRow]) -> None:
        if len(self.calls) >= BATCHES_IN_FLIGHT:
            self.settle(wait=True)
        self.calls.append(BatchCall(batch, self.submit(batch)))

    def settle(self, wait: bool) -> None:
        """Apply the answers that have come, in order; with wait, at least one."""
        while self.calls and (wait or self.calls[0].future.done()):
            self.settle_one(self.calls.popleft())
            wait = False

    def drain(self) -> None:
        while self.calls:
            self.settle(wait=True)
