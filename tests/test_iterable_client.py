"""The Iterable client over real HTTP: retries, Retry-After, no retry on 4xx, odd bodies, auth,
failures named in a few words, and an outage told apart from a storm that passes."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest

from iterable_client import (
    CircuitBreaker,
    FieldClash,
    FirstUpdatesWatch,
    IterableAuthError,
    IterableClient,
    IterableUnavailable,
    RequestStats,
    RetryPolicy,
    _Response,
    field_clashes,
    parse_retry_after,
)
from payloads import encode_json
from rate_limit import RateLimiter
from tests.support.waiting import wait_until

USER = {"email": "alice@example.com", "dataFields": {"plan_type": "pro"}}
EVENT = {
    "email": "alice@example.com",
    "eventName": "page_view",
    "id": "page-view-1",
    "createdAt": 1,
}
FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05)


def quick(base_url: str, outage_seconds: float = 30.0, **options) -> CircuitBreaker:
    """A breaker that probes every 10 ms, for tests that do not wait on its pacing."""
    return CircuitBreaker(base_url, outage_seconds, probe_gaps=(0.01,), **options)


@pytest.fixture
def client(sandbox):
    breaker = quick(sandbox.base_url)
    with IterableClient(
        "sandbox-key", sandbox.base_url, timeout=1.0, retry=FAST, breaker=breaker
    ) as c:
        yield c


def test_success_is_200_and_code_success(client, sandbox):
    result = client.update_user(USER)
    assert (result.ok, result.http_status, result.code, result.attempts) == (
        True,
        200,
        "Success",
        1,
    )
    assert sandbox.users()["alice@example.com"] == {"plan_type": "pro"}
    event = client.track_event(EVENT)
    assert event.ok and sandbox.events()["page-view-1"]["email"] == "alice@example.com"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (503, None, None),  # HTML page from a gateway
        (500, "<html><body>Internal Server Error</body></html>", "text/html"),
        (502, None, None),
        (429, "Rate limit exceeded. Please try again later.", "text/plain"),
        (429, '{"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": null}', None),
    ],
)
def test_retries_transient_failures_then_succeeds(client, sandbox, status, body, content_type):
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        status=status,
        body=body,
        content_type=content_type,
        times=2,
    )
    result = client.update_user(USER)
    assert result.ok and result.attempts == 3
    assert sandbox.request_count("users/update") == 3
    assert sandbox.user_writes()["alice@example.com"] == 1


def test_gives_up_after_max_attempts_with_a_readable_reason(client, sandbox):
    sandbox.add_fault("status", endpoint="users/update", status=503, times=None)
    result = client.update_user(USER)
    assert not result.ok and result.attempts == 4 and result.http_status == 503
    assert result.error == "HTTP 503"
    assert result.msg == "503 Service Unavailable"  # the HTML page's title, not its markup
    assert sandbox.users() == {}


@pytest.mark.parametrize("code", ["InvalidEmailAddressError", "BadParams", "BadJsonBody"])
def test_no_retry_on_other_4xx(client, sandbox, code):
    body = f'{{"msg": "nope", "code": "{code}", "params": null}}'
    sandbox.add_fault("status", endpoint="users/update", status=400, body=body, times=None)
    result = client.update_user(USER)
    assert (result.ok, result.http_status, result.code, result.attempts) == (False, 400, code, 1)
    assert sandbox.request_count("users/update") == 1


def test_real_invalid_email_answer(client, sandbox):
    result = client.update_user({"email": "bad@@example", "dataFields": {}})
    assert (result.http_status, result.code, result.attempts) == (
        400,
        "InvalidEmailAddressError",
        1,
    )


def test_400_that_says_success_is_not_success(client, sandbox):
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        status=400,
        body='{"msg": "", "code": "Success", "params": null}',
    )
    assert not client.update_user(USER).ok


def test_200_without_success_code_is_not_success(client, sandbox):
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        status=200,
        body="<html>ok</html>",
        content_type="text/html",
    )
    result = client.update_user(USER)
    assert not result.ok and result.http_status == 200 and result.attempts == 1


def test_retry_after_is_honoured(sandbox):
    sandbox.add_fault("status", endpoint="users/update", status=429, retry_after=1, times=1)
    with IterableClient("sandbox-key", sandbox.base_url, timeout=1.0, retry=FAST) as client:
        assert client.update_user(USER).ok
    times = [entry["t"] for entry in sandbox.request_log() if entry["endpoint"] == "users/update"]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95  # waited as told, not the 10 ms backoff


def test_retry_after_is_capped(sandbox):
    policy = RetryPolicy(retry_after_max=0.2, backoff_base=0.01)
    assert policy.delay(1, "3600") == 0.2
    sandbox.add_fault("status", endpoint="users/update", status=503, retry_after=3600, times=1)
    with IterableClient("sandbox-key", sandbox.base_url, timeout=1.0, retry=policy) as client:
        assert client.update_user(USER).ok


def test_timeouts_are_retried_and_the_write_is_idempotent(client, sandbox):
    sandbox.add_fault("delay", endpoint="events/track", delay=1.5, apply_first=True, times=1)
    result = client.track_event(EVENT)
    assert result.ok and result.attempts == 2
    assert len(sandbox.events()) == 1 and sandbox.event_writes()["page-view-1"] == 2
    assert sandbox.duplicate_events() == []


def test_dropped_connections_are_retried(client, sandbox):
    sandbox.add_fault("drop", endpoint="users/update", times=2)
    result = client.update_user(USER)
    assert result.ok and result.attempts == 3


def test_dropped_connection_every_time_reports_no_response(client, sandbox):
    sandbox.add_fault("drop", endpoint="users/update", times=None)
    result = client.update_user(USER)
    assert not result.ok and result.http_status is None and result.attempts == 4
    assert result.error == "connection reset"


@pytest.mark.parametrize("config", [{"api_keys": ["other"]}, {"disabled_keys": ["sandbox-key"]}])
def test_rejected_key_raises_without_retrying(client, sandbox, config):
    sandbox.configure(config)
    with pytest.raises(IterableAuthError) as caught:
        client.update_user(USER)
    assert caught.value.status == 401
    assert "sandbox-key" not in str(caught.value)
    assert sandbox.request_count("users/update") == 1
    assert client.stats.snapshot()["requests"] == {"users/update": {"401": 1}}


def test_forbidden_key_raises(client, sandbox):
    sandbox.configure({"forbidden_keys": ["sandbox-key"]})
    with pytest.raises(IterableAuthError) as caught:
        client.update_user(USER)
    assert caught.value.status == 403


def test_key_sent_as_header_only(client, sandbox):
    client.update_user(USER)
    assert "sandbox-key" not in str(sandbox.request_log())


def test_check_key_changes_nothing(client, sandbox):
    assert client.check_key().ok
    assert sandbox.users() == {} and sandbox.events() == {}


def test_unreachable_server_is_no_response(sandbox):
    url = "http://127.0.0.1:9"
    with IterableClient("k", url, timeout=0.5, retry=FAST, breaker=quick(url)) as client:
        result = client.update_user(USER)
    assert not result.ok and result.http_status is None and result.attempts == 4
    assert result.error == "connection refused"


def test_a_host_that_does_not_resolve_is_named_as_such():
    url = "https://no-such-host.invalid"
    with IterableClient("k", url, retry=FAST, breaker=quick(url)) as client:
        result = client.update_user(USER)
    assert result.http_status is None and result.error == "name resolution failed"


def test_a_read_timeout_says_how_long_it_waited(sandbox):
    sandbox.add_fault("delay", endpoint="users/update", delay=1.0, times=None)
    policy = RetryPolicy(max_attempts=1)
    with IterableClient("sandbox-key", sandbox.base_url, timeout=0.3, retry=policy) as client:
        assert client.update_user(USER).error == "timed out after 0.3s"
    # The sandbox finishes the slow request now, not in the middle of the next test.
    wait_until(lambda: sandbox.request_count(status="client_gone") == 1, 10, "the slow request")


def test_stats_count_requests_by_endpoint_and_status(client, sandbox):
    sandbox.set_latency(0.01)  # so that the times do not round to 0
    sandbox.add_fault("status", endpoint="users/update", status=503, times=1)
    client.update_user(USER)
    snapshot = client.stats.snapshot()
    assert snapshot["requests"]["users/update"] == {"200": 1, "503": 1}
    assert snapshot["retries"] == {"users/update": 1}
    assert snapshot["seconds"]["users/update"] > 0
    assert snapshot["busy_seconds"]["users/update"] > 0


def test_busy_seconds_count_overlapping_requests_once():
    now = [0.0]
    stats = RequestStats(clock=lambda: now[0])
    stats.started("users/update")  # 0 s
    now[0] = 1.0
    stats.started("users/update")  # 1 s, overlapping the first
    now[0] = 3.0
    stats.finished("users/update", 200, 3.0, retry=False)
    now[0] = 4.0
    stats.finished("users/update", 503, 3.0, retry=True)  # busy from 0 to 4
    now[0] = 10.0
    stats.started("users/update")
    now[0] = 11.0  # and from 10 to 11
    stats.finished("users/update", None, 1.0, retry=True)
    stats.started("events/track")
    now[0] = 13.0
    snapshot = stats.snapshot()
    assert snapshot["busy_seconds"] == {"users/update": 5.0, "events/track": 2.0}
    assert snapshot["requests"]["users/update"] == {"200": 1, "503": 1, "no_response": 1}
    assert snapshot["retries"] == {"users/update": 2}


# -- an outage: nothing succeeds for outage_seconds; until then, one request at a time -----


def test_an_unreachable_iterable_stops_the_calls():
    url = "http://127.0.0.1:9"
    breaker = quick(url, outage_seconds=0.3)
    with IterableClient("k", url, retry=FAST, breaker=breaker) as client:
        assert client.update_user(USER).attempts == 4  # failures: no outage, so far
        with pytest.raises(IterableUnavailable) as caught:
            while True:
                client.update_user(USER)
        assert re.fullmatch(
            r"Iterable at http://127.0.0.1:9: unreachable: \d+ requests in a row failed "
            r"over 0s; last: connection refused",
            str(caught.value),
        ), caught.value
        sent = client.stats.total_requests()
        with pytest.raises(IterableUnavailable):
            client.track_event(EVENT)  # nothing more is tried
    assert client.stats.total_requests() == sent


def test_the_first_request_goes_alone_then_the_rest_together(sandbox):
    sandbox.set_latency(0.3)
    started = time.time()
    with IterableClient("sandbox-key", sandbox.base_url, retry=FAST) as client:
        threads = [threading.Thread(target=client.update_user, args=(USER,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # (An earlier test's slow request may end now: only this test's answers count.)
    log = sandbox.request_log()
    answered = sorted(e["t"] for e in log if e["t"] > started and e["fault"] is None)
    assert len(answered) == 6
    assert answered[1] - answered[0] >= 0.25  # the others were sent after the first answer
    assert answered[-1] - answered[1] < 0.6  # and then together (one by one: 1.2 s)


def test_a_key_refused_on_the_first_request_stops_every_caller(sandbox):
    raised: list[BaseException] = []

    def call(client: IterableClient) -> None:
        try:
            client.update_user(USER)
        except IterableAuthError as exc:
            raised.append(exc)

    sandbox.set_latency(0.1)
    with IterableClient("wrong-key", sandbox.base_url, retry=FAST) as client:
        threads = [threading.Thread(target=call, args=(client,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(raised) == 8
    assert sandbox.stats()["total_requests"] == 1


def test_a_storm_slows_the_calls_to_one_at_a_time_and_a_success_ends_it(sandbox):
    sandbox.add_fault("status", endpoint="users/update", status=503, times=3)
    sandbox.add_fault("status", endpoint="events/track", status=503, times=3)
    breaker = quick(sandbox.base_url, failures_to_pause=2)
    with IterableClient("sandbox-key", sandbox.base_url, retry=FAST, breaker=breaker) as client:
        assert client.update_user(USER).ok  # 3 failures, then an answer
        assert client.track_event(EVENT).ok  # 3 more, not 6 in a row
    assert breaker.stopped is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_decisions():
    clock = Clock()
    breaker = CircuitBreaker(
        "http://iterable", 30.0, failures_to_pause=3, probe_gaps=(1.0, 8.0), clock=clock
    )
    go, stopping = threading.Event(), threading.Event()
    stopping.set()  # enter() gives None instead of waiting
    assert breaker.enter(go) is True  # the run's first request is a probe...
    assert breaker.enter(stopping) is None  # ...and goes alone
    breaker.record(400, None, probe=True)  # any answer: Iterable is there
    assert breaker.enter(go) is False
    for status in (None, 503, 429, 502, 504):  # 429 is an answer too
        breaker.record(status, "HTTP x", probe=False)
    assert breaker.enter(go) is False  # 2 failures in a row so far
    breaker.record(None, "connection refused", probe=False)  # started at 100
    assert breaker.enter(stopping) is None  # paused: the first probe comes after 1 s
    clock.now = 101.0
    assert breaker.enter(go) is True
    breaker.record(503, "HTTP 503", probe=True)
    clock.now = 108.9
    assert breaker.enter(stopping) is None  # the next gap is 8 s
    clock.now = 109.0
    assert breaker.enter(go) is True
    breaker.record(503, "HTTP 503", probe=True)
    clock.now = 129.0
    assert breaker.enter(go) is True  # the gap ends at the deadline: a probe at 130 s...
    clock.now = 130.0
    breaker.record(None, "timed out after 10s", probe=True)
    assert isinstance(breaker.stopped, IterableUnavailable)  # ...failed: 30 s of failures
    assert str(breaker.stopped) == (
        "Iterable at http://iterable: unreachable: 6 requests in a row failed over 30s; "
        "last: timed out after 10s"
    )
    with pytest.raises(IterableUnavailable):
        breaker.enter(go)
    breaker.record(200, None, probe=False)
    assert breaker.stopped is not None  # once stopped, the run is stopping


def test_a_probe_at_the_deadline_that_succeeds_is_no_outage():
    clock = Clock()
    breaker = CircuitBreaker("http://iterable", 5.0, probe_gaps=(4.0,), clock=clock)
    go = threading.Event()
    assert breaker.enter(go) is True
    breaker.record(None, "connection refused", probe=True)
    clock.now += 4.0
    assert breaker.enter(go) is True
    breaker.record(None, "connection refused", probe=True)
    clock.now += 1.0  # the deadline, before the gap's end
    assert breaker.enter(go) is True
    breaker.record(200, None, probe=True)
    assert breaker.stopped is None and breaker.enter(go) is False


# -- the first profile updates, all refused for a field's type ---------------------------

CLASH_MSG = (
    "Field 'plan_type' already exists for type 'user' and has a data type of 'long' "
    "but possible types 'string' in the request."
)
CLASH = {
    "msg": CLASH_MSG,
    "code": "RequestFieldsTypesMismatched",
    "params": {
        "validationErrors": {"plan_type": {"expectedType": "long", "incomingTypes": ["string"]}}
    },
}


def refusal(body: dict) -> _Response:
    return _Response(400, body["code"], body["msg"], body)


def test_a_type_clash_is_read_from_validation_errors_or_else_from_the_message():
    assert field_clashes(CLASH, CLASH_MSG) == [FieldClash("plan_type", "long", "string")]
    assert field_clashes({}, CLASH_MSG) == [FieldClash("plan_type", "long", "string")]
    assert field_clashes({}, "types differ") == [FieldClash(None)]
    assert FieldClash("plan_type", "long", "string").describe() == (
        "plan_type is a long in Iterable; the job sends a string"
    )
    assert (
        FieldClash("first_name", "object", "string")
        .describe()
        .startswith("first_name is an object")
    )


def test_a_bulk_batch_refused_for_a_type_counts_by_its_items():
    watch = FirstUpdatesWatch(first=20)
    users = encode_json({"users": [{"email": f"u{n}@example.com"} for n in range(25)]})
    verdict = watch.answered("users/bulkUpdate", refusal(CLASH), users)
    assert str(verdict) == (
        "Iterable refused the first 20 profile updates (RequestFieldsTypesMismatched): "
        "plan_type is a long in Iterable; the job sends a string"
    )


def test_an_update_taken_ends_the_watch_and_releases_the_refused_ones():
    watch = FirstUpdatesWatch(first=20, settle=30.0)
    outcomes: list[object] = []
    waiting = threading.Thread(
        target=lambda: outcomes.append(watch.answered("users/update", refusal(CLASH), None))
    )
    waiting.start()
    wait_until(lambda: watch._refused == 1, 5, "the refusal to be counted")
    assert waiting.is_alive()  # it waits for the verdict
    watch.answered("users/update", _Response(200, "Success", "", {}), None)
    waiting.join(5)
    assert outcomes == [None] and watch.done  # its row fails as refused; the run goes on


def test_too_few_updates_to_tell_end_the_watch_after_a_while():
    clock = Clock()
    watch = FirstUpdatesWatch(first=20, settle=0.0, clock=clock)
    assert watch.answered("users/update", refusal(CLASH), None) is None
    assert watch.done


# -- the retry policy and the limiter as plain values ------------------------------------


def test_backoff_grows_exponentially_with_bounded_jitter():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30, jitter=0.25)
    rng = random.Random(1)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)]:
        delay = policy.backoff(attempt, rng)
        assert base <= delay <= base * 1.25


def test_should_retry_decisions():
    policy = RetryPolicy(max_attempts=3)
    assert (
        policy.should_retry(429, 1) and policy.should_retry(503, 2) and policy.should_retry(None, 1)
    )
    assert not policy.should_retry(503, 3)
    assert not any(policy.should_retry(s, 1) for s in (200, 400, 401, 403, 404, 409))


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_rate_limiter_spaces_requests_and_slows_after_429():
    now = [0.0]
    waits: list[float] = []
    limiter = RateLimiter(10, clock=lambda: now[0], wait=waits.append)
    for _ in range(5):
        limiter.acquire()
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4])
    now[0] = 10.0
    limiter.penalize(2.0)
    assert limiter.reserve() == pytest.approx(2.0)
    assert limiter.reserve() == pytest.approx(2.2)  # half rate right after the pause
