"""The Iterable API client: timeouts, retries with backoff, pacing, typed results, over the
transport in http_connections."""

from __future__ import annotations

import itertools
import logging
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

from http_connections import NoAnswer, Transport, describe_connection_error, open_connections
from payloads import encode_json
from rate_limit import RateLimiters
from version import VERSION

log = logging.getLogger(__name__)

USERS_UPDATE = "users/update"
EVENTS_TRACK = "events/track"
USERS_BULK_UPDATE = "users/bulkUpdate"
EVENTS_TRACK_BULK = "events/trackBulk"
GET_USER = "users/getByEmail"
GET_USER_BY_ID = "users/byUserId"  # GET users/byUserId/{userId}
UPDATE_EMAIL = "users/updateEmail"
DELETE_USER = "users/delete"  # DELETE users/{email} or users/byUserId/{userId}
GET_LISTS = "lists"
LISTS_SUBSCRIBE = "lists/subscribe"
LISTS_UNSUBSCRIBE = "lists/unsubscribe"
GET_FIELDS = "users/getFields"
# Answers that carry counts (successCount/failCount) rather than a code; per-item failures
# are read by the caller.
COUNTING_ENDPOINTS = frozenset(
    {USERS_BULK_UPDATE, EVENTS_TRACK_BULK, LISTS_SUBSCRIBE, LISTS_UNSUBSCRIBE}
)
# Endpoints paced together under one limiter name (settings.LISTS_LIMIT).
SHARED_LIMITS = {LISTS_SUBSCRIBE: "lists", LISTS_UNSUBSCRIBE: "lists"}

# Profile updates, watched at the start of a run for a field Iterable holds as another type.
PROFILE_UPDATES = frozenset({USERS_UPDATE, USERS_BULK_UPDATE})
TYPE_MISMATCH = "RequestFieldsTypesMismatched"
FIRST_UPDATES_WATCHED = 20
_TYPE_MISMATCH_MSG = re.compile(
    r"Field '(?P<name>[^']+)'.*?data type of '(?P<held>[^']+)' but possible types '(?P<sent>[^']+)'"
)
# 429 and gateway-style failures are worth another try; other 4xx never are.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# How Iterable says it has no such user: HTTP 404, or a 400 with one of these codes (and,
# in a bulk or list answer, the notFoundEmails/notFoundUserIds lists, read as these codes).
NO_SUCH_USER_CODES = frozenset({"NotFound", "UnknownEmailError", "UnknownUserIdError"})
AUTH_STATUSES = frozenset({401, 403})
CONNECT_TIMEOUT = 5.0
# Iterable counts as down, and the run stops, when no request has succeeded for this many
# seconds (settings.OUTAGE_SECONDS)...
OUTAGE_SECONDS = 30.0
# ...and after this many requests in a row got no answer or a 5xx, new requests stop and one
# at a time probes until one succeeds, these many seconds apart (the last gap repeats).
FAILURES_TO_PAUSE = 10
PROBE_GAPS = (0.25, 0.5, 1.0, 2.0, 4.0)
_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: exponential backoff with jitter, Retry-After honoured.

    Retrying a POST is safe for the idempotent calls only: users/update merges the same
    fields, events/track with the same id updates the same event, and the bulk and list
    calls are made of those. users/updateEmail is not (see UNSAFE_RETRY).
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    jitter: float = 0.25

    only_unprocessed: bool = False  # retry only answers that say nothing was done (429)

    def should_retry(self, status: int | None, attempt: int) -> bool:
        """status None means no response at all (timeout or connection error)."""
        if attempt >= self.max_attempts:
            return False
        if self.only_unprocessed:
            return status == 429
        return status is None or status in RETRY_STATUSES

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before attempt+1: base * 2**(attempt-1), capped, plus up to `jitter` of it."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return delay + delay * self.jitter * (rng or random).random()

    def delay(
        self, attempt: int, retry_after: str | None, rng: random.Random | None = None
    ) -> float:
        wait = parse_retry_after(retry_after)
        if wait is not None:
            return min(wait, self.retry_after_max)
        return self.backoff(attempt, rng)


# For a call that is not idempotent: after no answer or a 5xx it may have been applied,
# so the caller looks at what Iterable holds instead of sending it again.
UNSAFE_RETRY = RetryPolicy(only_unprocessed=True)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class CallResult:
    """What one API call came to, after every retry."""

    endpoint: str
    ok: bool
    http_status: int | None
    code: str | None
    msg: str | None
    attempts: int
    elapsed_seconds: float
    body: Mapping[str, Any] | None = field(default=None, repr=False)
    error: str | None = None
    batch_size: int | None = None
    interrupted: bool = False  # cut short (not sent, or not retried) because the run is stopping

    def __post_init__(self) -> None:
        # Built once here, not with functools.cached_property: on Python 3.11 that holds one
        # lock for every instance, which all of single mode's threads then queue on.
        object.__setattr__(self, "_summary", self._build_summary())

    @property
    def no_such_user(self) -> bool:
        """Iterable has no user by the identifier the call named."""
        return self.http_status == 404 or is_no_such_user(self.code)

    @property
    def answered(self) -> bool:
        """Iterable gave a definite answer: the call was (or was not) applied as it says."""
        return self.http_status is not None and self.http_status < 500

    def summary(self) -> dict[str, Any]:
        """The part that goes into the results file: one dict a call, which the rows of a
        bulk batch share (read-only)."""
        return self._summary  # type: ignore[attr-defined]

    def _build_summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "http_status": self.http_status,
            "code": self.code,
            "msg": self.msg,
            "attempts": self.attempts,
            "elapsed_seconds": round(self.elapsed_seconds, 4),
        }
        if self.error:
            data["error"] = self.error
        if self.batch_size is not None:
            data["batch_size"] = self.batch_size
        return data


def is_no_such_user(reason: str | None) -> bool:
    """Whether an error code (or a bulk failure's reason) means Iterable has no such user."""
    return reason in NO_SUCH_USER_CODES


class StopRun(Exception):
    """No further call can succeed (the key is refused, Iterable is down, the list is
    missing): the run stops, and the rows in flight are recorded as interrupted."""


class IterableAuthError(StopRun):
    """Iterable rejected the API key (401) or its permissions (403): no call will succeed."""

    def __init__(self, status: int, code: str | None, msg: str | None) -> None:
        super().__init__(
            f"Iterable rejected the API key: HTTP {status} {code or ''} {msg or ''}".strip()
        )
        self.status = status
        self.code = code


class IterableUnavailable(StopRun):
    """Iterable gave no usable answer for a sustained stretch: the run should stop, not grind."""

    def __init__(self, base_url: str, verdict: str) -> None:
        super().__init__(f"Iterable at {base_url}: unreachable: {verdict}")
        self.verdict = verdict


@dataclass(frozen=True)
class FieldClash:
    """A field Iterable holds as one type and a request sent as another (None: not said)."""

    name: str | None
    held: str | None = None
    sent: str | None = None

    def describe(self) -> str:
        if self.name is None:
            return "a field has another type in Iterable than the job sends"
        if self.held is None or self.sent is None:
            return f"{self.name} has another type in Iterable than the job sends"
        held, sent = with_article(self.held), with_article(self.sent)
        return f"{self.name} is {held} in Iterable; the job sends {sent}"


def with_article(word: str) -> str:
    """A type named in a sentence: "a long", "an object"."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


class FieldTypesRefused(StopRun):
    """Iterable refused the run's first profile updates, every one for a field's type: every
    later one would be refused too, one request a row."""

    def __init__(self, updates: int, clashes: list[FieldClash]) -> None:
        described = "; ".join(clash.describe() for clash in clashes)
        super().__init__(
            f"Iterable refused the first {updates} profile updates ({TYPE_MISMATCH}): {described}"
        )
        self.clashes = clashes


def field_clashes(body: Mapping[str, Any] | None, msg: str | None) -> list[FieldClash]:
    """The fields a RequestFieldsTypesMismatched answer names, from params.validationErrors
    or else from its message."""
    params = (body or {}).get("params")
    errors = params.get("validationErrors") if isinstance(params, Mapping) else None
    if isinstance(errors, Mapping) and errors:
        clashes = []
        for name, detail in errors.items():
            detail = detail if isinstance(detail, Mapping) else {}
            held = detail.get("expectedType")
            sent = detail.get("incomingTypes")
            sent = sent[0] if isinstance(sent, list) and sent else None
            clashes.append(
                FieldClash(
                    str(name),
                    held if isinstance(held, str) else None,
                    sent if isinstance(sent, str) else None,
                )
            )
        return clashes
    found = _TYPE_MISMATCH_MSG.search(msg or "")
    if found:
        return [FieldClash(found["name"], found["held"], found["sent"])]
    return [FieldClash(None)]


class FirstUpdatesWatch:
    """Watches the run's first `first` profile updates (a bulk request counts by its items):
    when every one is refused for a field's type, the run must stop (thread-safe).

    A refused update waits for the verdict, at most `settle` seconds after the first
    refusal, so that its row is interrupted rather than failed when the run stops: the
    console then shows one line, not one a row. Any other answer to a profile update ends
    the watch; 5xx, 429 and no answer say nothing about types and are not counted.
    """

    def __init__(
        self,
        first: int = FIRST_UPDATES_WATCHED,
        settle: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.settle = settle
        self.clock = clock
        self.done = False
        self.verdict: FieldTypesRefused | None = None
        self._decided = threading.Condition(threading.Lock())
        self._refused = 0
        self._clashes: Counter[FieldClash] = Counter()
        self._deadline: float | None = None

    def answered(
        self, endpoint: str, response: _Response, data: bytes | None
    ) -> FieldTypesRefused | None:
        """A profile update's final answer; the StopRun to raise when the run must stop."""
        if self.done or response.status is None or response.status in RETRY_STATUSES:
            return None
        if response.code != TYPE_MISMATCH:
            self._end()  # Iterable took one, or refused it for something else
            return None
        items = _bulk_items(data) if endpoint == USERS_BULK_UPDATE else 1
        clashes = field_clashes(response.body, response.msg)
        with self._decided:
            if self.done:
                return None
            self._refused += items
            self._clashes.update(clashes)
            if self._refused >= self.first:
                found = [clash for clash, _ in self._clashes.most_common()]
                self.verdict = FieldTypesRefused(self.first, found)
                self.done = True
                self._decided.notify_all()
                return self.verdict
            if self._deadline is None:
                self._deadline = self.clock() + self.settle
            while not self.done:
                remaining = self._deadline - self.clock()
                if remaining <= 0:
                    self.done = True  # too few updates in the run to tell
                    break
                self._decided.wait(remaining)
            return self.verdict

    def _end(self) -> None:
        with self._decided:
            self.done = True
            self._decided.notify_all()


def _bulk_items(data: bytes | None) -> int:
    """How many users a users/bulkUpdate body carries."""
    try:
        users = orjson.loads(data or b"{}").get("users")
    except (ValueError, AttributeError):
        return 1
    return len(users) if isinstance(users, list) else 1


def is_unavailable(status: int | None) -> bool:
    """No answer at all (refused, DNS, TLS, timeout, dropped) or a 5xx: Iterable may be down.
    Any other answer, a 4xx or a 429 included, proves it is there."""
    return status is None or status >= 500


class CircuitBreaker:
    """Lets requests through while Iterable answers, one at a time while it does not, and
    stops the run when nothing has succeeded for `outage_seconds` (thread-safe).

    The run starts paused: its first request goes alone, and the rest follow at full speed
    once it is answered. After `failures_to_pause` failures in a row (see is_unavailable)
    it pauses again: new requests wait, and the longest waiting one goes out as a probe
    when the gap after the last failed probe has passed. Any answer resumes full speed.
    A StopRun given to stop_run() (a rejected key) is raised to every caller from then on.
    """

    def __init__(
        self,
        base_url: str,
        outage_seconds: float = OUTAGE_SECONDS,
        failures_to_pause: int = FAILURES_TO_PAUSE,
        probe_gaps: tuple[float, ...] = PROBE_GAPS,
        clock: Callable[[], float] = time.monotonic,
        poll: float = 0.25,
    ) -> None:
        self.base_url = base_url
        self.outage_seconds = outage_seconds
        self.failures_to_pause = failures_to_pause
        self.probe_gaps = probe_gaps
        self.clock = clock
        self.poll = poll  # how often a waiting caller looks at the run's stop event
        self.stopped: StopRun | None = None
        self._full_speed = False
        self._changed = threading.Condition(threading.Lock())
        self._waiting: deque[int] = deque()  # tickets of waiting callers, oldest first
        self._tickets = itertools.count()
        self._probe_out = False
        self._next_probe = float("-inf")
        self._gaps_used = 0
        self._failures = 0
        self._failing_since: float | None = None
        self._failed_at = 0.0
        self._last = ""

    def enter(self, stop: threading.Event) -> bool | None:
        """Wait for this caller's turn: True when its request is a probe (report it with
        probe=True), False at full speed, None when `stop` is set first (send nothing).
        Raises the run's StopRun once there is one."""
        if self._full_speed and self.stopped is None:  # read without the lock: the common case
            return False
        with self._changed:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            try:
                return self._wait_for_turn(ticket, stop)
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()  # the oldest waiting caller may have changed

    def _wait_for_turn(self, ticket: int, stop: threading.Event) -> bool | None:
        while True:
            now = self.clock()
            if self.stopped is not None:
                raise self.stopped
            if self._full_speed:
                return False
            if stop.is_set():
                return None
            timeout = self.poll
            if not self._probe_out and self._waiting[0] == ticket:
                if now >= self._next_probe:
                    self._probe_out = True
                    return True
                timeout = min(timeout, self._next_probe - now)
            self._changed.wait(max(timeout, 0.001))

    def record(self, status: int | None, error: str | None, probe: bool) -> None:
        """One request's outcome (`probe`: what enter() said for it)."""
        if self._full_speed and not probe and not self._failures and not is_unavailable(status):
            return  # nothing changes: read without the lock, as in enter()
        with self._changed:
            if probe:
                self._probe_out = False
            if not is_unavailable(status):
                if not self._full_speed and self._failures:
                    log.info("Iterable answers again; back to full speed")
                self._full_speed, self._failures, self._failing_since = True, 0, None
                self._gaps_used = 0
                self._changed.notify_all()
                return
            now = self.clock()
            self._failures += 1
            self._last = error or f"HTTP {status}"
            self._failed_at = now
            if self._failing_since is None:
                self._failing_since = now
            if self._full_speed and self._failures >= self.failures_to_pause:
                self._full_speed = False
                log.info(
                    "%d requests in a row failed (last: %s); one at a time until one succeeds",
                    self._failures,
                    self._last,
                )
                self._schedule_probe(now)
            elif probe:
                self._schedule_probe(now)
            self._check_outage()
            self._changed.notify_all()

    def release(self, probe: bool) -> None:
        """enter() let a request through that was not sent after all."""
        if probe:
            with self._changed:
                self._probe_out = False
                self._changed.notify_all()

    def stop_run(self, exc: StopRun) -> None:
        """No request can succeed (a rejected key): `exc` stops every caller."""
        with self._changed:
            if self.stopped is None:
                self.stopped = exc
            self._probe_out = False
            self._changed.notify_all()

    def _schedule_probe(self, now: float) -> None:
        gap = self.probe_gaps[min(self._gaps_used, len(self.probe_gaps) - 1)]
        self._gaps_used += 1
        # One probe goes out at the deadline: the verdict needs a failure that late.
        since = now if self._failing_since is None else self._failing_since
        deadline = since + self.outage_seconds
        self._next_probe = min(now + gap, deadline) if now < deadline else now + gap

    def _check_outage(self) -> None:
        """Iterable is down once failures with no success between span outage_seconds."""
        if self.stopped is not None or self._failing_since is None:
            return
        failing = self._failed_at - self._failing_since
        if failing >= self.outage_seconds:
            verdict = (
                f"{self._failures} requests in a row failed over {failing:.0f}s; last: {self._last}"
            )
            self.stopped = IterableUnavailable(self.base_url, verdict)
            self._changed.notify_all()


class RequestStats:
    """Counts of requests by endpoint and outcome, for the summary and the metrics file.

    `seconds` sums every request's time; `busy_seconds` is the wall-clock time an endpoint
    had at least one request in flight (overlapping requests count once).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.requests: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.busy_seconds: dict[str, float] = {}
        self._in_flight: Counter[str] = Counter()
        self._busy_since: dict[str, float] = {}

    def started(self, endpoint: str) -> None:
        """A request to `endpoint` is going out (busy_seconds keeps the union of the
        endpoint's request intervals)."""
        with self._lock:
            if self._in_flight[endpoint] == 0:
                self._busy_since[endpoint] = self._clock()
            self._in_flight[endpoint] += 1

    def finished(self, endpoint: str, status: int | None, seconds: float, retry: bool) -> None:
        """The request that started() announced came back (or got no answer)."""
        with self._lock:
            self._in_flight[endpoint] -= 1
            if self._in_flight[endpoint] == 0:
                busy = self._clock() - self._busy_since.pop(endpoint)
                self.busy_seconds[endpoint] = self.busy_seconds.get(endpoint, 0.0) + busy
            self.requests[(endpoint, str(status) if status else "no_response")] += 1
            self.seconds[endpoint] = self.seconds.get(endpoint, 0.0) + seconds
            if retry:
                self.retries[endpoint] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, status), count in sorted(self.requests.items()):
                by_endpoint.setdefault(endpoint, {})[status] = count
            busy = dict(self.busy_seconds)
            now = self._clock()
            for endpoint, since in self._busy_since.items():
                busy[endpoint] = busy.get(endpoint, 0.0) + now - since
            return {
                "requests": by_endpoint,
                "retries": dict(self.retries),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "busy_seconds": {k: round(v, 3) for k, v in busy.items()},
            }

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())


@dataclass
class _Response:
    """One HTTP exchange as the retry loop sees it; status None means no answer at all."""

    status: int | None = None
    code: str | None = None
    msg: str | None = None
    body: Mapping[str, Any] | None = None
    retry_after: str | None = None
    error: str | None = None
    seconds: float = 0.0


class IterableClient:
    """Talks to Iterable's endpoints over kept-alive connections (one per calling thread)."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        limiters: RateLimiters | None = None,
        stop: threading.Event | None = None,
        stats: RequestStats | None = None,
        outage_seconds: float = OUTAGE_SECONDS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.retry = retry or RetryPolicy()
        self.limiters = limiters or RateLimiters({})
        self.stop = stop or threading.Event()
        self.stats = stats or RequestStats()
        self.breaker = breaker or CircuitBreaker(self.base_url, outage_seconds)
        self.first_updates = FirstUpdatesWatch()
        self._api_key = api_key
        self.headers = {
            "Api-Key": api_key,
            "Content-Type": "application/json",
            "User-Agent": f"iterable-sync/{VERSION}",
        }
        self._connections: Transport = open_connections(self.base_url, self.headers, self.timeout)
        self._path = urlsplit(self.base_url).path.rstrip("/") + "/api/"
        self._rng = random.Random()
        # A check that must pass before the run's first call (see set_gate).
        self._gate: Callable[[], None] | None = None
        self._gate_open = threading.Event()
        self._gate_open.set()
        self._gate_lock = threading.RLock()
        self._gate_error: StopRun | None = None

    def set_gate(self, check: Callable[[], None]) -> None:
        """Run `check` before the first call (it may call this client); if it raises StopRun,
        that call and every later one raise it too. Costs nothing in a run that calls nothing.
        """
        self._gate = check
        self._gate_open.clear()

    def _pass_gate(self) -> None:
        if self._gate_open.is_set():
            return
        with self._gate_lock:
            if self._gate_error is not None:
                raise self._gate_error
            check, self._gate = self._gate, None
            if check is None:
                return  # a call the check itself makes
            try:
                check()
            except StopRun as exc:
                self._gate_error = exc
                raise
            self._gate_open.set()

    def api_key_bytes(self) -> bytes:
        """The key, for a digest of it (the sync state records that, never the key)."""
        return self._api_key.encode()

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> IterableClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update_user(self, payload: Mapping[str, Any], body: bytes | None = None) -> CallResult:
        """users/update; `body` is the payload already encoded, when the caller has it."""
        return self.call(USERS_UPDATE, payload, body=body)

    def track_event(self, payload: Mapping[str, Any], body: bytes | None = None) -> CallResult:
        return self.call(EVENTS_TRACK, payload, body=body)

    def update_email(self, current_email: str, new_email: str) -> CallResult:
        """Move a profile, with its data, events and lists, to a new email.

        Not idempotent: after a lost answer a resend finds the old email gone, so it is
        retried only when Iterable said it did nothing (429); the caller looks up the rest.
        """
        body = {"currentEmail": current_email, "newEmail": new_email}
        return self.call(UPDATE_EMAIL, body, retry_policy=UNSAFE_RETRY)

    def get_user(self, email: str) -> CallResult:
        """users/getByEmail: the answer's "user" is empty when Iterable has nobody by it."""
        return self.call(GET_USER, None, params={"email": email}, method="GET")

    def get_user_by_id(self, user_id: str) -> CallResult:
        """GET users/byUserId/{userId}; as get_user, an empty "user" for nobody."""
        path = "users/byUserId/" + quote(user_id, safe="")
        return self.call(GET_USER_BY_ID, None, method="GET", path=path)

    def delete_user(self, identity: Mapping[str, str]) -> CallResult:
        """DELETE users/{email}, or users/byUserId/{userId}."""
        if "userId" in identity:
            path = "users/byUserId/" + quote(identity["userId"], safe="")
        else:
            path = "users/" + quote(identity["email"], safe="@")
        return self.call(DELETE_USER, None, method="DELETE", path=path)

    def get_lists(self) -> CallResult:
        return self.call(GET_LISTS, None, method="GET")

    def subscribe(self, list_id: int, subscribers: list[Mapping[str, str]]) -> CallResult:
        body = {"listId": list_id, "subscribers": subscribers, "updateExistingUsersOnly": False}
        return self.call(LISTS_SUBSCRIBE, body)

    def unsubscribe(self, list_id: int, subscribers: list[Mapping[str, str]]) -> CallResult:
        # channelUnsubscribe would be "essentially a global unsubscribe"; Iterable's default
        # for it is disputed, so it is always written out.
        body = {"listId": list_id, "subscribers": subscribers, "channelUnsubscribe": False}
        return self.call(LISTS_UNSUBSCRIBE, body)

    def get_fields(self) -> CallResult:
        """Every user field of the project with its type: {"fields": {"plan_type": "long"}}."""
        return self.call(GET_FIELDS, None, method="GET")

    def check_key(self, probe_email: str = "iterable-sync-check@example.com") -> CallResult:
        """Reads one (normally absent) user: proves the key works without changing anything."""
        return self.get_user(probe_email)

    def call(
        self,
        endpoint: str,
        payload: Mapping[str, Any] | None,
        params: Mapping[str, str] | None = None,
        method: str = "POST",
        body: bytes | None = None,
        path: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> CallResult:
        """Send with retries (this client's policy, unless given one); return a CallResult.

        Raises IterableAuthError on 401/403, and IterableUnavailable once nothing has
        succeeded for the breaker's outage_seconds (then nothing more is sent).
        """
        self._pass_gate()
        policy = retry_policy or self.retry
        data = body if body is not None else encode_json(payload) if payload is not None else None
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            probe = self.breaker.enter(self.stop)
            if probe is None or not self.limiters.acquire_unless_stopped(
                SHARED_LIMITS.get(endpoint, endpoint), self.stop
            ):
                # A stopping run waits neither for Iterable to recover nor for the limiter
                # (a 429's pause can be a minute).
                self.breaker.release(bool(probe))
                log.debug("%s: stop requested while waiting to send; not sent", endpoint)
                unsent = _Response(error="not sent: the run is stopping")
                return self._result(endpoint, False, unsent, attempt - 1, started, stopped=True)
            self.stats.started(endpoint)
            try:
                response = self._send(method, path or endpoint, data, params)
            except BaseException:
                self.stats.finished(endpoint, None, 0.0, retry=False)
                self.breaker.release(probe)
                raise
            if response.status in AUTH_STATUSES:
                self.stats.finished(endpoint, response.status, response.seconds, retry=False)
                refused = IterableAuthError(response.status or 0, response.code, response.msg)
                self.breaker.stop_run(refused)
                raise refused
            self.breaker.record(response.status, response.error, probe)
            ok = self._is_success(endpoint, response)
            retry = not ok and policy.should_retry(response.status, attempt)
            stopped = retry and self.stop.is_set()
            if stopped:
                retry = False
                response.error = (response.error or "") + " (not retried: the run is stopping)"
            self.stats.finished(endpoint, response.status, response.seconds, retry)
            if not ok and self.breaker.stopped is not None:
                raise self.breaker.stopped
            if not retry:
                if endpoint in PROFILE_UPDATES and not self.first_updates.done:
                    self._watch_first_updates(endpoint, response, data)
                return self._result(endpoint, ok, response, attempt, started, stopped)
            delay = policy.delay(attempt, response.retry_after, self._rng)
            if response.status == 429:
                self.limiters.penalize(SHARED_LIMITS.get(endpoint, endpoint), delay)
            # DEBUG: a 429 storm would otherwise flood the console; the counts reach the results.
            log.debug(
                "%s: %s, attempt %d of %d, retrying in %.2fs",
                endpoint,
                response.error or f"HTTP {response.status}",
                attempt,
                policy.max_attempts,
                delay,
            )
            if self.stop.wait(delay):
                # Not even one more attempt: it would first wait out the limiter's pause.
                log.debug("%s: stop requested during backoff; giving up on this call", endpoint)
                response.error = (response.error or "") + " (not retried: the run is stopping)"
                return self._result(endpoint, False, response, attempt, started, stopped=True)

    def _watch_first_updates(self, endpoint: str, response: _Response, data: bytes | None) -> None:
        refused = self.first_updates.answered(endpoint, response, data)
        if refused is not None:
            self.breaker.stop_run(refused)
            raise refused

    @staticmethod
    def _result(
        endpoint: str,
        ok: bool,
        response: _Response,
        attempts: int,
        started: float,
        stopped: bool = False,
    ) -> CallResult:
        return CallResult(
            endpoint=endpoint,
            ok=ok,
            http_status=response.status,
            code=response.code,
            msg=response.msg,
            attempts=attempts,
            elapsed_seconds=time.monotonic() - started,
            body=response.body,
            error=None if ok else response.error,
            interrupted=stopped,
        )

    @staticmethod
    def _is_success(endpoint: str, response: _Response) -> bool:
        if response.status != 200 or response.body is None:
            return False
        if endpoint in COUNTING_ENDPOINTS:
            return "failCount" in response.body or "successCount" in response.body
        if endpoint in (GET_USER, GET_USER_BY_ID):
            return True
        if endpoint == GET_LISTS:
            return isinstance(response.body.get("lists"), list)
        if endpoint == GET_FIELDS:
            return isinstance(response.body.get("fields"), Mapping)
        return response.code == "Success"

    def _send(
        self, method: str, endpoint: str, data: bytes | None, params: Mapping[str, str] | None
    ) -> _Response:
        started = time.monotonic()
        path = self._path + endpoint + (f"?{urlencode(params)}" if params else "")
        try:
            reply = self._connections.request(method, path, data)
        except NoAnswer as exc:
            return _Response(error=self._no_answer(exc), seconds=time.monotonic() - started)
        status, content = reply.status, reply.content
        body = parse_body(reply.headers.get("content-type", ""), content)
        code = body.get("code") if isinstance(body.get("code"), str) else None
        msg = body.get("msg") if isinstance(body.get("msg"), str) else None
        if not body and status != 200:
            msg = _text_excerpt(content)
        # A server (or a proxy) that echoes the request back must not carry the key into
        # the results file, the log or an error message.
        code, msg = self._scrub(code), self._scrub(msg)
        error: str | None = None
        if status != 200:
            error = f"HTTP {status} {code or ''}".strip()
        return _Response(
            status=status,
            code=code,
            msg=msg,
            body=body if body or status == 200 else None,
            retry_after=reply.headers.get("retry-after"),
            error=error,
            seconds=time.monotonic() - started,
        )

    def _no_answer(self, exc: NoAnswer) -> str:
        """Why a request got no answer, in a short phrase: "timed out after 10s", ..."""
        if isinstance(exc.cause, TimeoutError):
            if exc.connecting:
                return f"timed out after {self.timeout[0]:g}s connecting"
            return f"timed out after {self.timeout[1]:g}s"
        return describe_connection_error(exc.cause)

    def _scrub(self, text: str | None) -> str | None:
        if text and self._api_key and self._api_key in text:
            return text.replace(self._api_key, "[REDACTED]")
        return text


def parse_body(content_type: str, content: bytes) -> dict[str, Any]:
    """The JSON object in a reply, or {} for anything else (plain-text 429s, HTML error pages)."""
    if "json" not in content_type and not content.startswith(b"{"):
        return {}
    try:
        body = orjson.loads(content)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return {}
    return body if isinstance(body, dict) else {}


def _text_excerpt(content: bytes, limit: int = 120) -> str:
    """A short message from a non-JSON body: an HTML page's title, or the first line of text."""
    text = content.decode("utf-8", errors="replace").strip()
    title = _HTML_TITLE.search(text)
    if title:
        return title.group(1).strip()[:limit]
    return text.splitlines()[0][:limit] if text else ""
