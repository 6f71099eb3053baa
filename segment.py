"""The segment over time: what to do about customers who left it, and a static list mirroring it.

"The segment" is Query 2's result set. The sync state remembers who was in it after the
last run; whoever is missing from this run's rows has left. A leaver whose name or plan
changed gets one profile update (so a downgrade reaches Iterable), one who only stopped
being active needs nothing, and one deleted from the database is counted (and, if asked,
deleted in Iterable). With ITERABLE_LIST_ID the list's members are kept equal to the
segment: newcomers are subscribed once their profile is in, leavers unsubscribed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bulk import FAILED_LISTS
from iterable_client import CallResult, IterableClient, StopRun, is_no_such_user
from payloads import (
    Customer,
    Payloads,
    SourceRow,
    is_valid_email,
    leaver_update,
    named,
    normalize_email,
)
from plan import Work
from results import LEFT_SEGMENT, SUBSCRIBED, UNSUBSCRIBED, RowResult
from sync_state import Member, StateStore

log = logging.getLogger(__name__)

# Subscribers per lists/subscribe or lists/unsubscribe request; Iterable publishes no
# count limit for them, and 1,000 keeps a body far below the 4 MB other endpoints allow.
LIST_BATCH = 1000
FORGOTTEN_LISTS = frozenset({"forgottenEmails", "forgottenUserIds"})

# The mass-leave guard holds a run back only when at least this many would leave: a segment
# of two may lose one, the seven-customer demo is guarded.
LEAVE_GUARD_MINIMUM = 3

# Reads the customers with these ids back from the database (RowSource.customers).
ReadCustomers = Callable[[list[int]], dict[int, Customer]]


@dataclass(frozen=True)
class LeaverUpdate:
    """A leaver whose profile fields (or email) in Iterable differ from the database now."""

    user_update: dict[str, Any]
    profile: dict[str, Any]
    email: str  # the customer's email now (what the update is sent under, or carries)
    previous_email: str | None  # the email Iterable holds, when the customer's changed


@dataclass(frozen=True)
class LeaveGuard:
    """Holds back a run in which a large share of the segment would leave at once: more
    likely a stalled pipeline or a half-loaded table than customers leaving."""

    percent: int  # LEAVE_GUARD_PERCENT; 100 turns the guard off
    allowed: bool  # --allow-mass-leave, for this run only
    newest_view: datetime | None  # the newest page view in page_views

    def verdict(self, leaving: int, segment: int) -> str | None:
        """Why the leavers are held back (one line), or None when they may go."""
        if self.allowed or self.percent >= 100 or leaving < LEAVE_GUARD_MINIMUM:
            return None
        if leaving * 100 <= self.percent * segment:
            return None
        share = round(leaving * 100 / max(segment, 1))
        return (
            f"{leaving:,} of {segment:,} customers in the segment would leave in this run "
            f"({share}%, more than LEAVE_GUARD_PERCENT={self.percent}%), and nothing was sent "
            f"for them; the newest page view in page_views is from {_when(self.newest_view)}. "
            "If the change is real: python main.py --allow-mass-leave"
        )


def stale_source(newest_view: datetime | None, lookback_days: int, now: datetime) -> str | None:
    """A warning when page_views has nothing inside the lookback window: a stalled load."""
    if newest_view is not None and now - newest_view <= timedelta(days=lookback_days):
        return None
    if newest_view is None:
        return "page_views holds no page view: is the pipeline that loads page_views stopped?"
    days = (now - newest_view).days
    return (
        f"the newest page view is {days} days old ({_when(newest_view)}): is the pipeline "
        "that loads page_views stopped?"
    )


def _when(moment: datetime | None) -> str:
    return "nowhere (page_views is empty)" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def plan_leaver(member: Member, customer: Customer, identify_by: str) -> LeaverUpdate | None:
    """None when Iterable already holds the customer's current name, plan and email."""
    current = normalize_email(customer.email)
    if not is_valid_email(current):
        current = None
    email = current or member.email
    if email is None:
        return None
    previous = member.email if member.email is not None and member.email != email else None
    update, profile = leaver_update(customer, email, identify_by)
    if member.profile == profile and previous is None:
        return None
    return LeaverUpdate(update, profile, email, previous)


def leaver_work(member: Member, update: LeaverUpdate) -> Work:
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
    identifier = update.user_update.get("userId") or update.user_update["email"]
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


class ListNotFound(StopRun):
    """ITERABLE_LIST_ID names no list of the project (or the lists could not be read)."""


def check_list_exists(client: IterableClient, list_id: int) -> None:
    """GET lists and look for the id; raises ListNotFound with one line saying why not."""
    call = client.get_lists()
    if not call.ok:
        problem = call.error or f"HTTP {call.http_status}"
        raise ListNotFound(f"cannot read Iterable's lists to check ITERABLE_LIST_ID: {problem}")
    ids = {item.get("id") for item in (call.body or {}).get("lists", []) if isinstance(item, dict)}
    if list_id not in ids:
        raise ListNotFound(
            f"ITERABLE_LIST_ID {list_id} is not a list of this Iterable project; nothing was sent"
        )


def _noted(
    result: RowResult | None,
    action: str,
    lists: ListPreview | ListMirror,
    identifier: str,
) -> None:
    """The row says what the run did to its customer's membership; a dry run's row also
    holds the call it would send."""
    if result is None:
        return
    result.list_action = action
    if lists.dry_run:
        call = "list_subscribe" if action == SUBSCRIBED else "list_unsubscribe"
        result.payloads = {
            **(result.payloads or {}),
            call: {
                "listId": lists.list_id,
                "subscribers": [dict(named(identifier, lists.identify_by))],
            },
        }


class ListPreview:
    """The dry run's list: decides the same subscriptions and unsubscriptions as ListMirror,
    records them in the rows (with the calls' bodies) and sends nothing."""

    dry_run = True

    def __init__(self, list_id: int, identify_by: str) -> None:
        self.list_id = list_id
        self.identify_by = identify_by
        self.on_stop: Callable[[StopRun], object] = lambda _exc: None

    def subscribe(
        self, customer_id: int, identifier: str, email: str, result: RowResult | None = None
    ) -> None:
        _noted(result, SUBSCRIBED, self, identifier)

    def unsubscribe(
        self, customer_id: int, identifier: str, result: RowResult | None = None
    ) -> None:
        _noted(result, UNSUBSCRIBED, self, identifier)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ListMirror:
    """Batched list subscriptions and unsubscriptions on a worker thread of their own.

    Only changes are sent: the state records who is on the list under which identifier.
    A subscriber Iterable does not find stays off the list in the state (tried again next
    run); one it says is forgotten is recorded as forgotten (not sent again until their
    email changes); an unsubscribe of someone Iterable does not find, or forgot, is done.
    A call that finds the key rejected, the list missing or Iterable down stops the run
    through `on_stop`, as any other call would.
    """

    dry_run = False

    def __init__(
        self, client: IterableClient, state: StateStore, list_id: int, identify_by: str
    ) -> None:
        self.client = client
        self.state = state
        self.list_id = list_id
        self.identify_by = identify_by
        self._lock = threading.Lock()
        self._subscribe: list[tuple[int, str]] = []
        self._emails: dict[int, str] = {}  # the emails of those to subscribe
        self._unsubscribe: list[tuple[int, str]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lists")
        self._sent: list[Future[None]] = []
        self.calls = 0
        self.on_stop: Callable[[StopRun], object] = lambda _exc: None

    def subscribe(
        self, customer_id: int, identifier: str, email: str, result: RowResult | None = None
    ) -> None:
        """Subscribe the customer (in a batch); `result`, their row, records it."""
        _noted(result, SUBSCRIBED, self, identifier)
        with self._lock:
            self._emails[customer_id] = email
        self._add(self._subscribe, customer_id, identifier)

    def unsubscribe(
        self, customer_id: int, identifier: str, result: RowResult | None = None
    ) -> None:
        _noted(result, UNSUBSCRIBED, self, identifier)
        self._add(self._unsubscribe, customer_id, identifier)

    def _add(self, pending: list[tuple[int, str]], customer_id: int, identifier: str) -> None:
        with self._lock:
            pending.append((customer_id, identifier))
            if len(pending) >= LIST_BATCH:
                self._send_pending()

    def flush(self) -> None:
        """Send what is pending and wait for every request to be answered."""
        with self._lock:
            self._send_pending()
            sent, self._sent = self._sent, []
        for future in sent:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _send_pending(self) -> None:
        for pending, send in (
            (self._unsubscribe, self._send_unsubscribe),
            (self._subscribe, self._send_subscribe),
        ):
            if pending:
                batch = list(pending)
                pending.clear()
                self._sent.append(self._pool.submit(send, batch))

    def _send_subscribe(self, batch: list[tuple[int, str]]) -> None:
        try:
            call = self.client.subscribe(self.list_id, self._subscribers(batch))
        except StopRun as exc:
            log.debug("lists/subscribe for %d not sent (%s); tried again next run", len(batch), exc)
            self.on_stop(exc)
            return
        self.calls += 1
        refused = self._refused(call, batch, including_not_found=True)
        forgotten = self._named_in(call, FORGOTTEN_LISTS)
        for customer_id, identifier in batch:
            with self._lock:
                email = self._emails.pop(customer_id, identifier)
            if identifier in forgotten:
                self.state.forgotten(customer_id, email)
            elif identifier not in refused:
                self.state.subscribed(customer_id, identifier)

    def _send_unsubscribe(self, batch: list[tuple[int, str]]) -> None:
        try:
            call = self.client.unsubscribe(self.list_id, self._subscribers(batch))
        except StopRun as exc:
            log.debug(
                "lists/unsubscribe for %d not sent (%s); tried again next run", len(batch), exc
            )
            self.on_stop(exc)
            return
        self.calls += 1
        refused = self._refused(call, batch, including_not_found=False)
        for customer_id, identifier in batch:
            if identifier not in refused:
                self.state.unsubscribed(customer_id)

    def _subscribers(self, batch: list[tuple[int, str]]) -> list[Mapping[str, str]]:
        return [named(identifier, self.identify_by) for _, identifier in batch]

    def _refused(
        self, call: CallResult, batch: list[tuple[int, str]], including_not_found: bool
    ) -> set[str]:
        """The identifiers this call did not settle (all of them when the call failed)."""
        if not call.ok:
            log.warning(
                "%s for %d subscribers failed (%s); they are tried again next run",
                call.endpoint,
                len(batch),
                call.error or call.code or call.http_status,
            )
            return {identifier for _, identifier in batch}
        failed = _failed_updates(call)
        # Off the list already: nobody by that name, or a forgotten user (whom Iterable took
        # off every list when it forgot them).
        names = [
            name
            for name in failed
            if including_not_found
            or not (is_no_such_user(FAILED_LISTS.get(name)) or name in FORGOTTEN_LISTS)
        ]
        return self._named_in(call, names)

    @staticmethod
    def _named_in(call: CallResult, names: Iterable[str]) -> set[str]:
        """The identifiers an answer's failedUpdates lists under these names."""
        failed = _failed_updates(call)
        return {
            str(value).strip().lower() if "Email" in name else str(value)
            for name in names
            for value in failed.get(name) or ()
        }


# The list a run keeps equal to the segment: the real one, or the dry run's preview.
Lists = ListMirror | ListPreview


def _failed_updates(call: CallResult) -> Mapping[str, list[object]]:
    failed = (call.body or {}).get("failedUpdates") if call.ok else None
    return failed if isinstance(failed, Mapping) else {}
