"""Bulk mode: batching by count and bytes, and mapping bulk answers back to single rows."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from iterable_client import EVENTS_TRACK_BULK, USERS_BULK_UPDATE, CallResult, IterableClient, encode

if TYPE_CHECKING:
    from sync import Syncer, Work

log = logging.getLogger(__name__)

# Iterable refuses bulk bodies over 4 MB; keep a margin for the envelope.
MAX_BULK_BYTES = 4 * 1024 * 1024 - 1024
# A whole batch rejected for one bad item: find the item (or halve the batch) and resend.
SPLITTABLE_CODES = frozenset({"BadJsonBody", "RequestFieldsTypesMismatched", "BadParams"})
# Per-item failures inside an HTTP 200, named by email, and the reason each becomes:
# the same code a single-mode call would have given, where there is one.
FAILED_EMAIL_LISTS = {
    "invalidEmails": "InvalidEmailAddressError",
    "notFoundEmails": "UnknownEmailError",
    "forgottenEmails": "ForgottenUserError",
    "conflictEmails": "conflict",
    "invalidDataEmails": "RequestFieldsTypesMismatched",
}
DISALLOWED_EVENT_NAME = "disallowed_event_name"
_ITEM_PATH = re.compile(r"^obj\.(?:users|events)\[(\d+)\]")


class UserBatcher:
    """Collects users until a batch is full by count or bytes, then hands it on. One thread only."""

    def __init__(self, batch_size: int, send: Callable[[list[Work]], None]) -> None:
        self.batch_size = batch_size
        self.send = send
        self.items: list[Work] = []
        self.size = 0

    def add(self, work: Work) -> None:
        size = len(encode(work.payloads.user_update)) + 1
        if self.items and (len(self.items) >= self.batch_size or self.size + size > MAX_BULK_BYTES):
            self.flush()
        self.items.append(work)
        self.size += size

    def flush(self) -> None:
        if self.items:
            batch, self.items, self.size = self.items, [], 0
            self.send(batch)


class EventBatcher(UserBatcher):
    """The same for events; fed from several threads, so every step holds a lock."""

    def __init__(self, batch_size: int, send: Callable[[list[Work]], None]) -> None:
        super().__init__(batch_size, send)
        self._lock = threading.Lock()

    def add(self, work: Work) -> None:
        self.add_many([work])

    def add_many(self, works: Sequence[Work]) -> None:
        ready: list[list[Work]] = []
        with self._lock:
            for work in works:
                size = len(encode(work.payloads.event)) + 1
                if self.items and (
                    len(self.items) >= self.batch_size or self.size + size > MAX_BULK_BYTES
                ):
                    ready.append(self.items)
                    self.items, self.size = [], 0
                self.items.append(work)
                self.size += size
        for batch in ready:
            self.send(batch)

    def flush(self) -> None:
        with self._lock:
            batch, self.items, self.size = self.items, [], 0
        if batch:
            self.send(batch)


# What a bulk call came to for one row: (row, the batch's call, failure reason or None).
RowOutcome = tuple["Work", CallResult, str | None]


def deliver_users(client: IterableClient, batch: list[Work]) -> Iterator[RowOutcome]:
    """users/bulkUpdate for a batch (halved or resent as needed): an outcome per row."""
    return deliver(client, USERS_BULK_UPDATE, "users", batch, _user_item)


def deliver_events(client: IterableClient, batch: list[Work]) -> Iterator[RowOutcome]:
    return deliver(client, EVENTS_TRACK_BULK, "events", batch, _event_item)


def apply_user_outcomes(syncer: Syncer, outcomes: Iterable[RowOutcome]) -> list[Work]:
    """Record users/bulkUpdate outcomes; returns the rows whose events may now be sent."""
    accepted: list[Work] = []
    for work, call, failure in outcomes:
        if syncer.user_done(work, call, failure):
            if work.send_event:
                accepted.append(work)
            else:
                syncer.skip_event(work)
    return accepted


def apply_event_outcomes(syncer: Syncer, outcomes: Iterable[RowOutcome]) -> list[Work]:
    for work, call, failure in outcomes:
        syncer.event_done(work, call, failure)
    return []


def _user_item(work: Work) -> Mapping[str, Any]:
    return work.payloads.user_update


def _event_item(work: Work) -> Mapping[str, Any]:
    return work.payloads.event


def deliver(
    client: IterableClient,
    endpoint: str,
    key: str,
    batch: list[Work],
    item: Callable[[Work], Mapping[str, Any]],
) -> Iterator[RowOutcome]:
    """Send a batch and yield (row, call, failure reason or None) for every row in it.

    A batch refused as a whole because of one item is resent without that item (when
    Iterable names it) or in halves, so only the bad rows fail.
    """
    body = b'{"' + key.encode() + b'":[' + b",".join(encode(item(w)) for w in batch) + b"]}"
    call = client.call(endpoint, None, body=body)
    if call.ok:
        failures = failed_emails(call.body or {})
        disallowed = set((call.body or {}).get("disallowedEventNames") or [])
        shared = _batch_call(call, len(batch))
        for work in batch:
            failure = failures.get(work.payloads.email)
            if failure is None and item(work).get("eventName") in disallowed:
                failure = DISALLOWED_EVENT_NAME
            yield work, shared, failure
        return
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
            yield batch[bad], _batch_call(call, len(batch)), None
            rest = batch[:bad] + batch[bad + 1 :]
            yield from deliver(client, endpoint, key, rest, item)
            return
        middle = len(batch) // 2
        log.info(
            "%s: batch of %d refused (%s); resending in halves", endpoint, len(batch), call.code
        )
        yield from deliver(client, endpoint, key, batch[:middle], item)
        yield from deliver(client, endpoint, key, batch[middle:], item)
        return
    for work in batch:
        yield work, _batch_call(call, len(batch)), None


def _batch_call(call: CallResult, size: int) -> CallResult:
    """The batch's call as each row sees it, with the batch's size for the results file."""
    return replace(call, batch_size=size)


def failed_emails(body: Mapping[str, Any]) -> dict[str, str]:
    """email -> reason for every item a bulk answer lists as failed."""
    failures: dict[str, str] = {}
    failed_updates = body.get("failedUpdates") or {}
    sources = [failed_updates, body]  # top-level invalidEmails is the deprecated spelling
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for list_name, reason in FAILED_EMAIL_LISTS.items():
            for email in source.get(list_name) or []:
                if isinstance(email, str):
                    failures.setdefault(email.strip().lower(), reason)
    return failures


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
