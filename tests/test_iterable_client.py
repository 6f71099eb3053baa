"""The Iterable client over real HTTP: retries, Retry-After, no retry on 4xx, odd bodies, auth,
failures named in a few words, and an outage told apart from a blip."""

from __future__ import annotations

import random

import pytest

from iterable_client import (
    IterableAuthError,
    IterableClient,
    IterableUnavailable,
    OutageDetector,
    RequestStats,
    RetryPolicy,
    parse_retry_after,
)
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


@pytest.fixture
def client(sandbox):
    with IterableClient("sandbox-key", sandbox.base_url, timeout=1.0, retry=FAST) as c:
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
    with IterableClient("k", "http://127.0.0.1:9", timeout=0.5, retry=FAST) as client:
        result = client.update_user(USER)
    assert not result.ok and result.http_status is None and result.attempts == 4
    assert result.error == "connection refused"


def test_a_host_that_does_not_resolve_is_named_as_such():
    with IterableClient("k", "https://no-such-host.invalid", retry=FAST) as client:
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


# -- an outage: no answer, or only 5xx, for a sustained stretch ----------------------------


def test_an_unreachable_iterable_stops_the_calls(sandbox):
    outage = OutageDetector(failures_in_a_row=6)
    with IterableClient("k", "http://127.0.0.1:9", retry=FAST, outage=outage) as client:
        assert client.update_user(USER).attempts == 4  # 4 failures: a blip, so far
        with pytest.raises(IterableUnavailable) as caught:
            client.update_user(USER)
        assert str(caught.value) == (
            "Iterable at http://127.0.0.1:9: unreachable: 6 requests in a row failed; "
            "last: connection refused"
        )
        with pytest.raises(IterableUnavailable):
            client.track_event(EVENT)  # nothing more is tried
    assert client.stats.total_requests() == 6


def test_a_second_call_giving_up_in_the_same_streak_is_an_outage(sandbox):
    """Few requests, each for many users (bulk mode): two calls that retried in vain, with
    nothing answered in between, are enough."""
    with IterableClient("k", "http://127.0.0.1:9", retry=FAST) as client:
        assert client.update_user(USER).error == "connection refused"  # alone: rows fail
        with pytest.raises(IterableUnavailable) as caught:
            client.update_user(USER)
    assert caught.value.verdict == "8 requests in a row failed; last: connection refused"


def test_calls_that_never_retry_do_not_give_up_into_an_outage():
    one_try = RetryPolicy(max_attempts=1)
    with IterableClient("k", "http://127.0.0.1:9", retry=one_try) as client:
        for _ in range(3):
            assert client.update_user(USER).error == "connection refused"
    assert client.outage.verdict is None


def test_5xx_for_a_minute_is_an_outage(sandbox):
    ticks = iter([0.0, 30.0, 61.0])
    outage = OutageDetector(failures_in_a_row=100, seconds=60, clock=lambda: next(ticks))
    sandbox.add_fault("status", endpoint="users/update", status=503, times=None)
    client = IterableClient("sandbox-key", sandbox.base_url, retry=FAST, outage=outage)
    with client, pytest.raises(IterableUnavailable) as caught:
        client.update_user(USER)
    assert caught.value.verdict == "no answer for 61s; last: HTTP 503"
    assert sandbox.request_count("users/update", 503) == 3


def test_any_other_answer_ends_the_streak(sandbox):
    outage = OutageDetector(failures_in_a_row=4)
    sandbox.add_fault("status", endpoint="users/update", status=502, times=3)
    sandbox.add_fault("status", endpoint="events/track", status=503, times=3)
    with IterableClient("sandbox-key", sandbox.base_url, retry=FAST, outage=outage) as client:
        assert client.update_user(USER).ok  # 3 failures, then an answer
        assert client.track_event(EVENT).ok  # 3 more, not 6 in a row
    assert outage.verdict is None


def test_outage_detector_decisions():
    now = [0.0]
    outage = OutageDetector(failures_in_a_row=3, seconds=60, clock=lambda: now[0])
    for status in (None, 500, 429, 503, 400, None, 502):
        outage.record(status, None)  # 429 and 400 are answers: Iterable is there
    assert outage.verdict is None
    outage.record(None, "connection refused")
    assert outage.verdict == "3 requests in a row failed; last: connection refused"
    outage.record(200, None)
    assert outage.verdict is not None  # once tripped, the run is stopping
    slow = OutageDetector(failures_in_a_row=100, seconds=60, clock=lambda: now[0])
    slow.record(504, None)
    now[0] = 59.0
    slow.record(None, "timed out after 10s")
    assert slow.verdict is None
    now[0] = 60.0
    slow.record(None, "timed out after 10s")
    assert slow.verdict == "no answer for 60s; last: timed out after 10s"


def test_a_call_giving_up_trips_only_with_others_failing_in_the_same_streak():
    outage = OutageDetector()
    streak = outage.record(503, "HTTP 503", call=1)
    assert streak is not None and outage.record(503, "HTTP 503", call=1) == streak
    outage.gave_up(streak)
    assert outage.verdict is None  # one call alone: its rows fail, the run goes on
    outage.record(None, "connection refused", call=2)
    outage.gave_up(streak)
    assert outage.verdict == "3 requests in a row failed; last: connection refused"
    answered = OutageDetector()
    first = answered.record(None, "timed out", call=1)
    assert first is not None
    answered.record(None, "timed out", call=2)
    assert answered.record(200, None, call=3) is None
    answered.record(None, "timed out", call=1)
    answered.gave_up(first)  # an answer came since this call's first attempt
    assert answered.verdict is None


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
