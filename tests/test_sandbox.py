"""The Iterable sandbox, exercised over real HTTP with requests (no mocks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import (
    MAX_BULK_BODY_BYTES,
    FaultRule,
    SandboxServer,
    TokenBucket,
    parse_rate_limits,
)
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
KEY = "sandbox-key"
SUCCESS = {"msg": "", "code": "Success", "params": None}
USER_LISTS = [
    "invalidEmails",
    "invalidUserIds",
    "notFoundEmails",
    "notFoundUserIds",
    "forgottenEmails",
    "forgottenUserIds",
    "conflictEmails",
    "conflictUserIds",
    "invalidDataEmails",
    "invalidDataUserIds",
]


class Api:
    """A keep-alive client for one sandbox, sending the API key unless told otherwise."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Api-Key"] = KEY

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None and "data" not in kwargs:
            kwargs["json"] = body
        return self.session.post(self.base_url + path, timeout=kwargs.pop("timeout", 5), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=kwargs.pop("timeout", 5), **kwargs)

    def update_user(
        self, email: str, fields: dict[str, Any], timeout: float = 5, **extra: Any
    ) -> requests.Response:
        headers = extra.pop("headers", None)
        body = {"email": email, "dataFields": fields, **extra}
        return self.post("/api/users/update", body, timeout=timeout, headers=headers)

    def track(self, timeout: float = 5, **event: Any) -> requests.Response:
        return self.post("/api/events/track", {"eventName": "login", **event}, timeout=timeout)


class FakeClock:
    """The sandbox's rate-limit clock, moved on by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[SandboxServer]:
    with SandboxServer(
        disabled_keys={"old-key"}, forbidden_keys={"read-only-key"}, clock=clock
    ) as server:
        yield server


@pytest.fixture
def api(sandbox: SandboxServer) -> Iterator[Api]:
    client = Api(sandbox.base_url)
    yield client
    client.session.close()


# --- success answers and the store ---


def test_users_update_merges_data_fields(api: Api, sandbox: SandboxServer) -> None:
    first = api.update_user("ann@example.com", {"plan": "pro", "logins": 3})
    second = api.update_user("ann@example.com", {"logins": 4, "lastSeen": None})

    assert first.status_code == second.status_code == 200
    assert first.json() == SUCCESS
    assert first.headers["Content-Type"] == "application/json"
    assert sandbox.users() == {"ann@example.com": {"plan": "pro", "logins": 4, "lastSeen": None}}
    assert sandbox.user_writes() == {"ann@example.com": 2}


def test_users_update_merges_nested_objects_only_when_asked(
    api: Api, sandbox: SandboxServer
) -> None:
    api.update_user("a@example.com", {"address": {"city": "Oslo", "zip": "0150"}})
    api.update_user("a@example.com", {"address": {"city": "Bergen"}}, mergeNestedObjects=True)
    api.update_user("b@example.com", {"address": {"city": "Oslo", "zip": "0150"}})
    api.update_user("b@example.com", {"address": {"city": "Bergen"}})

    users = sandbox.users()
    assert users["a@example.com"]["address"] == {"city": "Bergen", "zip": "0150"}
    assert users["b@example.com"]["address"] == {"city": "Bergen"}


def test_users_update_by_user_id(api: Api, sandbox: SandboxServer) -> None:
    response = api.post("/api/users/update", {"userId": "u-1", "dataFields": {"plan": "free"}})

    assert response.json() == SUCCESS
    assert sandbox.user_ids() == {"u-1": {"plan": "free"}}
    assert sandbox.users() == {}


def test_track_stores_event_and_returns_its_id(api: Api, sandbox: SandboxServer) -> None:
    response = api.track(
        email="ann@example.com", id="evt-1", createdAt=1_700_000_000, dataFields={"n": 1}
    )

    assert response.status_code == 200
    assert response.json() == {"msg": "", "code": "Success", "params": {"id": "evt-1"}}
    assert sandbox.events() == {
        "evt-1": {
            "id": "evt-1",
            "email": "ann@example.com",
            "eventName": "login",
            "createdAt": 1_700_000_000,
            "dataFields": {"n": 1},
        }
    }


def test_track_without_id_generates_one(api: Api, sandbox: SandboxServer) -> None:
    event_id = api.track(email="ann@example.com").json()["params"]["id"]

    assert event_id and set(event_id) <= set("0123456789abcdef")
    assert list(sandbox.events()) == [event_id]


def test_same_event_id_twice_is_one_event_written_twice(api: Api, sandbox: SandboxServer) -> None:
    api.track(email="ann@example.com", id="evt-1", createdAt=1, dataFields={"v": 1})
    api.track(email="ann@example.com", id="evt-1", createdAt=1, dataFields={"v": 2})

    assert list(sandbox.events()) == ["evt-1"]
    assert sandbox.events()["evt-1"]["dataFields"] == {"v": 2}
    assert sandbox.event_writes() == {"evt-1": 2}
    assert sandbox.duplicate_events() == []


def test_duplicate_events_finds_same_event_under_two_ids(api: Api, sandbox: SandboxServer) -> None:
    for event_id in ("a-1", "a-2"):
        api.track(email="ann@example.com", id=event_id, createdAt=5, dataFields={"x": 1})
    api.track(email="ann@example.com", id="a-3", createdAt=6, dataFields={"x": 1})

    duplicates = sandbox.duplicate_events()
    assert len(duplicates) == 1
    assert duplicates[0]["ids"] == ["a-1", "a-2"]
    assert duplicates[0]["eventName"] == "login"


def test_get_by_email_answers_without_changing_anything(api: Api, sandbox: SandboxServer) -> None:
    api.update_user("ann@example.com", {"plan": "pro"})

    known = api.get("/api/users/getByEmail", params={"email": "ann@example.com"})
    unknown = api.get("/api/users/getByEmail", params={"email": "zed@example.com"})

    assert known.json() == {"user": {"email": "ann@example.com", "dataFields": {"plan": "pro"}}}
    assert unknown.status_code == 200
    assert unknown.json() == {}
    assert sandbox.user_writes() == {"ann@example.com": 1}
    assert list(sandbox.users()) == ["ann@example.com"]


# --- bulk endpoints ---


def test_bulk_update_applies_good_users_and_names_failed_ones(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.forget("gone@example.com")
    sandbox.mark_conflict("clash@example.com")
    users = [
        {"email": "ann@example.com", "dataFields": {"plan": "pro"}},
        {"email": "not-an-email", "dataFields": {"plan": "pro"}},
        {"email": "gone@example.com", "dataFields": {"plan": "pro"}},
        {"email": "clash@example.com", "dataFields": {"plan": "pro"}},
        {"userId": "u-7", "dataFields": {"plan": "free"}},
    ]

    response = api.post("/api/users/bulkUpdate", {"users": users})

    assert response.status_code == 200
    body = response.json()
    assert body["successCount"] == 2
    assert body["failCount"] == 3
    assert list(body["failedUpdates"]) == USER_LISTS
    assert body["failedUpdates"]["invalidEmails"] == ["not-an-email"]
    assert body["failedUpdates"]["forgottenEmails"] == ["gone@example.com"]
    assert body["failedUpdates"]["conflictEmails"] == ["clash@example.com"]
    assert body["createdFields"] == ["plan"]
    assert body["filteredOutFields"] == []
    assert sandbox.users() == {"ann@example.com": {"plan": "pro"}}
    assert sandbox.user_ids() == {"u-7": {"plan": "free"}}
    assert sandbox.stats()["bulk_batch_sizes"]["users/bulkUpdate"] == [5]


def test_track_bulk_applies_good_events_and_names_failed_ones(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.mark_not_found("nobody@example.com")
    sandbox.forget("gone@example.com")
    events = [
        {"eventName": "login", "email": "ann@example.com", "id": "e-1", "createdAt": 1},
        {"eventName": "login", "email": "bad email@example.com", "id": "e-2"},
        {"eventName": "login", "email": "nobody@example.com", "id": "e-3"},
        {"eventName": "login", "email": "gone@example.com", "id": "e-4"},
    ]

    body = api.post("/api/events/trackBulk", {"events": events}).json()

    assert (body["successCount"], body["failCount"]) == (1, 3)
    assert list(body["failedUpdates"]) == USER_LISTS[:6]
    assert body["failedUpdates"]["invalidEmails"] == ["bad email@example.com"]
    assert body["failedUpdates"]["notFoundEmails"] == ["nobody@example.com"]
    assert body["failedUpdates"]["forgottenEmails"] == ["gone@example.com"]
    assert body["disallowedEventNames"] == []
    assert list(sandbox.events()) == ["e-1"]


@pytest.mark.parametrize(
    ("path", "body", "params"),
    [
        (
            "/api/events/trackBulk",
            {
                "events": [
                    {"eventName": "a", "email": "x@example.com"},
                    {"eventName": "a", "email": "y@example.com", "createdAt": "yesterday"},
                ]
            },
            {"obj.events[1].createdAt": "Number value expected"},
        ),
        (
            "/api/users/bulkUpdate",
            {"users": [{"email": "x@example.com"}, "y@example.com"]},
            {"obj.users[1]": "Object value expected"},
        ),
        (
            "/api/users/bulkUpdate",
            {"users": [{"email": "x@example.com", "dataFields": []}]},
            {"obj.users[0].dataFields": "Object value expected"},
        ),
        (
            "/api/users/bulkUpdate",
            {"users": {"email": "x@example.com"}},
            {"obj.users": "Array value expected"},
        ),
    ],
)
def test_bulk_with_a_malformed_item_fails_whole_request(
    api: Api, sandbox: SandboxServer, path: str, body: Any, params: dict[str, str]
) -> None:
    response = api.post(path, body)

    assert response.status_code == 400
    assert response.json()["code"] == "BadJsonBody"
    assert response.json()["params"] == params
    assert sandbox.users() == {} and sandbox.events() == {}


GOOD_EVENT = {"eventName": "a", "email": "x@example.com", "id": "ok-1"}
BAD_ID_EVENT = {"eventName": "a", "email": "y@example.com", "id": "no_underscores"}


@pytest.mark.parametrize(
    ("path", "body", "bad_path"),
    [
        ("/api/events/trackBulk", {"events": [GOOD_EVENT, BAD_ID_EVENT]}, "obj.events[1].id"),
        ("/api/events/trackBulk", {"events": [{"email": "x@y.io"}]}, "obj.events[0].eventName"),
        ("/api/users/bulkUpdate", {"users": [{"dataFields": {}}]}, "obj.users[0]"),
        ("/api/users/bulkUpdate", {"createNewFields": True}, "obj.users"),
    ],
)
def test_bulk_with_bad_params_fails_whole_request(
    api: Api, sandbox: SandboxServer, path: str, body: Any, bad_path: str
) -> None:
    response = api.post(path, body)

    assert response.status_code == 400
    assert response.json()["code"] == "BadParams"
    assert bad_path in response.json()["params"]
    assert sandbox.events() == {}


def test_bulk_type_mismatch_fails_whole_request(api: Api, sandbox: SandboxServer) -> None:
    api.update_user("ann@example.com", {"score": 1})
    users = [
        {"email": "bob@example.com", "dataFields": {"score": 2}},
        {"email": "cid@example.com", "dataFields": {"score": "high"}},
    ]

    response = api.post("/api/users/bulkUpdate", {"users": users})

    assert response.status_code == 400
    assert response.json()["code"] == "RequestFieldsTypesMismatched"
    assert response.json()["params"]["validationErrors"]["score"]["expectedType"] == "number"
    assert list(sandbox.users()) == ["ann@example.com"]


def test_bulk_type_clash_inside_one_batch_fixes_no_type(api: Api, sandbox: SandboxServer) -> None:
    events = [
        {"eventName": "buy", "email": "a@example.com", "dataFields": {"total": 5}},
        {"eventName": "buy", "email": "b@example.com", "dataFields": {"total": "5"}},
    ]

    assert api.post("/api/events/trackBulk", {"events": events}).status_code == 400
    assert sandbox.field_types()["events"] == {}
    assert api.track(eventName="buy", email="a@example.com", dataFields={"total": "5"}).ok


def test_bulk_body_over_4_mb_is_batch_too_large(api: Api, sandbox: SandboxServer) -> None:
    padding = "x" * (MAX_BULK_BODY_BYTES + 1)
    body = json.dumps({"users": [{"email": "a@example.com", "dataFields": {"pad": padding}}]})

    response = api.post("/api/users/bulkUpdate", data=body)

    assert response.status_code == 400
    assert response.json()["code"] == "BatchTooLarge"
    assert sandbox.users() == {}


def test_create_new_fields_false_filters_unknown_fields(api: Api, sandbox: SandboxServer) -> None:
    api.update_user("ann@example.com", {"plan": "pro"})
    users = [{"email": "bob@example.com", "dataFields": {"plan": "free", "shoeSize": 44}}]

    body = api.post("/api/users/bulkUpdate", {"users": users, "createNewFields": False}).json()

    assert body["filteredOutFields"] == ["shoeSize"]
    assert sandbox.users()["bob@example.com"] == {"plan": "free"}


# --- validation of single requests ---


USER = "/api/users/update"
TRACK = "/api/events/track"
EVENT = {"eventName": "a", "email": "a@example.com"}


@pytest.mark.parametrize(
    ("path", "body", "code", "params"),
    [
        (
            TRACK,
            {"email": "a@example.com"},
            "BadParams",
            {"obj.eventName": "eventName is required"},
        ),
        (
            USER,
            {"email": "a@example.com", "dataFields": "plan=pro"},
            "BadJsonBody",
            {"obj.dataFields": "Object value expected"},
        ),
        (USER, {"email": 42}, "BadJsonBody", {"obj.email": "String value expected"}),
        (
            TRACK,
            {**EVENT, "createdAt": "now"},
            "BadJsonBody",
            {"obj.createdAt": "Number value expected"},
        ),
        (
            TRACK,
            {**EVENT, "createdAt": 1.5},
            "BadJsonBody",
            {"obj.createdAt": "Integer value expected"},
        ),
        (
            USER,
            {"email": "a@example.com", "mergeNestedObjects": "yes"},
            "BadJsonBody",
            {"obj.mergeNestedObjects": "Boolean value expected"},
        ),
        (USER, {"dataFields": {}}, "BadParams", None),
        (USER, {"email": "a@example.com", "userId": "u1"}, "BadParams", None),
        (TRACK, {**EVENT, "id": "has space"}, "BadParams", None),
        (TRACK, {**EVENT, "id": "x" * 513}, "BadParams", None),
    ],
)
def test_invalid_single_request_is_400(
    api: Api, sandbox: SandboxServer, path: str, body: Any, code: str, params: Any
) -> None:
    response = api.post(path, body)

    assert response.status_code == 400
    assert response.json()["code"] == code
    if params is not None:
        assert response.json()["params"] == params
    assert sandbox.users() == {} and sandbox.events() == {}


def test_event_id_of_512_bytes_is_accepted(api: Api) -> None:
    assert api.track(email="a@example.com", id="a-" + "b" * 510).status_code == 200


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", "", '"text"'])
def test_body_that_is_not_a_json_object_is_bad_json_body(api: Api, body: str) -> None:
    response = api.post("/api/users/update", data=body)

    assert response.status_code == 400
    assert response.json()["code"] == "BadJsonBody"


@pytest.mark.parametrize("email", ["plain", "two@@example.com", "a@localhost", "a b@example.com"])
def test_invalid_email_is_400_invalid_email_address_error(api: Api, email: str) -> None:
    response = api.update_user(email, {})

    assert response.status_code == 400
    assert response.json() == {
        "msg": f"Invalid email: {email}",
        "code": "InvalidEmailAddressError",
        "params": None,
    }


def test_field_type_is_fixed_by_first_value(api: Api, sandbox: SandboxServer) -> None:
    api.update_user("ann@example.com", {"score": None})  # null fixes no type
    api.update_user("ann@example.com", {"score": 10})
    response = api.update_user("bob@example.com", {"score": "ten"})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "RequestFieldsTypesMismatched"
    assert body["params"]["validationErrors"]["score"] == {
        "incomingTypes": ["string"],
        "expectedType": "number",
        "_type": "UnexpectedType",
        "offendingValue": "ten",
        "category": "user",
    }
    assert "bob@example.com" not in sandbox.users()
    assert api.update_user("bob@example.com", {"score": None}).status_code == 200


def test_get_fields_names_each_user_field_with_the_type_its_first_value_fixed(
    api: Api,
) -> None:
    api.update_user("ann@example.com", {"plan_type": 5, "first_name": None, "score": 1.5})
    users = [
        {"email": "bob@example.com", "dataFields": {"first_name": "Bob", "tags": ["a"]}},
        {"email": "cid@example.com", "dataFields": {"vip": True, "address": {"city": "Oslo"}}},
    ]
    assert api.post("/api/users/bulkUpdate", {"users": users}).status_code == 200

    response = api.get("/api/users/getFields")

    assert response.status_code == 200
    assert response.json() == {
        "fields": {
            "email": "string",
            "userId": "string",
            "plan_type": "long",
            "score": "double",
            "first_name": "string",
            "tags": "string",
            "vip": "boolean",
            "address": "object",
        }
    }
    refused = api.update_user("dan@example.com", {"plan_type": "pro"})
    assert refused.json()["code"] == "RequestFieldsTypesMismatched"
    assert api.get("/api/users/getFields").json()["fields"]["plan_type"] == "long"


def test_event_field_types_are_per_event_name(api: Api) -> None:
    assert api.track(eventName="buy", email="a@example.com", dataFields={"total": 5}).ok
    assert api.track(eventName="refund", email="a@example.com", dataFields={"total": "5"}).ok
    clash = api.track(eventName="buy", email="a@example.com", dataFields={"total": True})

    assert clash.status_code == 400
    assert clash.json()["code"] == "RequestFieldsTypesMismatched"


def test_forgotten_user_is_409_on_single_endpoints(api: Api, sandbox: SandboxServer) -> None:
    sandbox.forget("gone@example.com")

    update = api.update_user("gone@example.com", {"plan": "pro"})
    track = api.track(email="gone@example.com")

    assert (update.status_code, track.status_code) == (409, 409)
    assert update.json()["code"] == track.json()["code"] == "ForgottenUserError"
    assert sandbox.users() == {} and sandbox.events() == {}


def test_unknown_route_is_404_html(api: Api, sandbox: SandboxServer) -> None:
    response = api.post("/api/users/updateEverything", {})
    wrong_method = api.get("/api/users/update")

    assert response.status_code == wrong_method.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text.lower() or "<!doctype html>" in response.text.lower()


# --- authentication ---


@pytest.mark.parametrize(
    ("key", "status", "code", "msg"),
    [
        (None, 401, "BadApiKey", "Invalid API key"),
        ("wrong-key", 401, "BadApiKey", "Invalid API key"),
        ("old-key", 401, "BadApiKey", "Disabled API key or insufficient privileges"),
        ("read-only-key", 403, "Forbidden", None),
    ],
)
def test_bad_api_keys_are_refused(
    sandbox: SandboxServer, key: str | None, status: int, code: str, msg: str | None
) -> None:
    headers = {} if key is None else {"Api-Key": key}
    response = requests.post(
        sandbox.base_url + "/api/users/update",
        json={"email": "a@example.com", "dataFields": {"x": 1}},
        headers=headers,
        timeout=5,
    )

    assert response.status_code == status
    assert response.json()["code"] == code
    if msg is not None:
        assert response.json() == {"msg": msg, "code": code, "params": None}
    assert sandbox.users() == {}


def test_api_key_in_query_string_is_not_accepted(sandbox: SandboxServer) -> None:
    response = requests.get(
        sandbox.base_url + "/api/users/getByEmail",
        params={"email": "a@example.com", "api_key": KEY},
        timeout=5,
    )

    assert response.status_code == 401


# --- rate limits ---


def test_rate_limit_answers_429_in_both_body_styles(api: Api, sandbox: SandboxServer) -> None:
    sandbox.set_rate_limits({"users/update": 3})
    sandbox.set_retry_after(2)

    responses = [api.update_user(f"u{i}@example.com", {"n": i}) for i in range(6)]

    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 429]
    text, as_json = responses[3], responses[4]
    assert text.headers["Content-Type"].startswith("text/plain")
    assert text.text == "Rate limit exceeded. Please try again later."
    assert as_json.json() == {
        "msg": "Rate limit exceeded",
        "code": "RateLimitExceeded",
        "params": None,
    }
    assert text.headers["Retry-After"] == "2"
    assert len(sandbox.users()) == 3
    assert sandbox.stats()["status_429"] == 3
    assert sandbox.stats()["rate_limited"] == 3


def test_rate_limit_is_per_endpoint_and_refills(
    api: Api, sandbox: SandboxServer, clock: FakeClock
) -> None:
    sandbox.set_rate_limits({"users/update": 20})

    burst = [api.update_user("a@example.com", {}).status_code for _ in range(21)]
    other_endpoint = api.track(email="a@example.com").status_code
    clock.advance(0.1)  # two tokens at 20/s
    refilled = [api.update_user("a@example.com", {}).status_code for _ in range(3)]

    assert burst == [200] * 20 + [429]
    assert other_endpoint == 200
    assert refilled == [200, 200, 429]


def test_client_pacing_at_the_limit_never_sees_429(
    api: Api, sandbox: SandboxServer, clock: FakeClock
) -> None:
    sandbox.set_rate_limits({"users/bulkUpdate": 40})
    statuses = []
    for _ in range(120):
        clock.advance(1 / 40)
        statuses.append(api.post("/api/users/bulkUpdate", {"users": []}).status_code)
    burst = [api.post("/api/users/bulkUpdate", {"users": []}).status_code for _ in range(41)]

    assert set(statuses) == {200}
    assert burst.count(429) >= 1


def test_token_bucket_holds_one_second_of_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, clock)

    first_second = [bucket.take() for _ in range(6)]
    clock.advance(10)  # a long pause refills only up to the capacity
    after_pause = [bucket.take() for _ in range(6)]
    clock.advance(0.2)

    assert first_second == after_pause == [True] * 5 + [False]
    assert bucket.take() and not bucket.take()


def test_parse_rate_limits() -> None:
    assert parse_rate_limits("iterable") == {
        "users/update": 500.0,
        "events/track": 2000.0,
        "users/bulkUpdate": 5.0,
        "events/trackBulk": 10.0,
        "users/get": 100.0,
        "users/getByUserId": 100.0,
        "users/delete": 100.0,
        "users/forgotten": 3.0,
        "users/forget": 3.0,
        "users/getFields": 3.0,
        "lists": 100.0,
    }
    assert parse_rate_limits("off") is None
    assert parse_rate_limits("users/update=50, events/track=7") == {
        "users/update": 50.0,
        "events/track": 7.0,
    }
    with pytest.raises(ValueError):
        parse_rate_limits("users/nope=5")


# --- faults ---


def test_status_fault_answers_html_then_stops(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault("status", endpoint="users/update", status=503, times=2)

    statuses = [api.update_user("a@example.com", {"n": i}) for i in range(3)]

    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].headers["Content-Type"].startswith("text/html")
    assert sandbox.user_writes() == {"a@example.com": 1}
    assert sandbox.faults() == []


def test_status_fault_with_custom_body_and_retry_after(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault(
        FaultRule("status", endpoint="*", status=429, body="slow down", retry_after=0.5)
    )

    response = api.track(email="a@example.com")

    assert response.status_code == 429
    assert response.text == "slow down"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Retry-After"] == "0.5"


def test_status_fault_apply_first_stores_the_write(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault("status", endpoint="events/track", status=500, apply_first=True)

    response = api.track(email="a@example.com", id="evt-1")

    assert response.status_code == 500
    assert list(sandbox.events()) == ["evt-1"]


def test_fault_narrowed_to_one_email(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault("status", email="bob@example.com", status=502, times=None)

    assert api.update_user("ann@example.com", {}).status_code == 200
    assert api.update_user("bob@example.com", {}).status_code == 502
    bulk = api.post("/api/users/bulkUpdate", {"users": [{"email": "bob@example.com"}]})
    assert bulk.status_code == 502
    assert api.update_user("bob@example.com", {}).status_code == 502


def test_probability_faults_are_repeatable_with_a_seed(sandbox: SandboxServer) -> None:
    def storm() -> list[int]:
        sandbox.reset()
        sandbox.add_fault("status", probability=0.3, seed=7, times=None)
        api = Api(sandbox.base_url)
        return [api.update_user("a@example.com", {}).status_code for _ in range(40)]

    first, second = storm(), storm()

    assert first == second
    assert 0 < first.count(503) < 40


def test_a_timed_storm_starts_after_some_requests_and_passes(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.add_fault("status", status=503, times=None, after=2, seconds=0.3)

    before = [api.update_user("a@example.com", {}).status_code for _ in range(4)]
    time.sleep(0.3)
    after = [api.update_user("a@example.com", {}).status_code for _ in range(2)]

    assert (before, after) == ([200, 200, 503, 503], [200, 200])
    assert sandbox.faults() == []


def test_delay_fault_beyond_client_timeout_applies_nothing(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.add_fault("delay", endpoint="users/update", delay=0.6)

    with pytest.raises(requests.ReadTimeout):
        api.update_user("a@example.com", {"n": 1}, timeout=0.2)
    wait_until(
        lambda: sandbox.request_count("users/update", "client_gone") == 1, 5, "the late answer"
    )

    assert sandbox.users() == {}


def test_delay_fault_apply_first_stores_write_client_never_hears(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.add_fault("delay", endpoint="events/track", delay=0.6, apply_first=True)

    with pytest.raises(requests.ReadTimeout):
        api.track(email="a@example.com", id="evt-1", timeout=0.2)

    assert list(sandbox.events()) == ["evt-1"]
    assert api.track(email="a@example.com", id="evt-1").status_code == 200
    assert sandbox.event_writes() == {"evt-1": 2}


def test_delay_shorter_than_timeout_answers_normally(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault("delay", delay=0.2)

    started = time.monotonic()
    response = api.update_user("a@example.com", {})

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("apply_first", [False, True])
def test_drop_fault_closes_connection_without_answer(
    api: Api, sandbox: SandboxServer, apply_first: bool
) -> None:
    sandbox.add_fault("drop", endpoint="users/update", apply_first=apply_first)

    with pytest.raises(requests.ConnectionError):
        api.update_user("a@example.com", {"n": 1})

    assert bool(sandbox.users()) is apply_first
    assert sandbox.request_count("users/update", "dropped") == 1
    assert api.update_user("a@example.com", {"n": 2}).status_code == 200


def test_fault_rules_are_consumed_in_order(api: Api, sandbox: SandboxServer) -> None:
    sandbox.add_fault("status", status=500)
    sandbox.add_fault("status", status=502)

    statuses = [api.update_user("a@example.com", {}).status_code for _ in range(3)]

    assert statuses == [500, 502, 200]
    assert sandbox.stats()["faults_applied"] == 2


def test_bad_fault_rules_are_refused(sandbox: SandboxServer) -> None:
    with pytest.raises(ValueError):
        sandbox.add_fault(FaultRule.from_dict({"kind": "explode"}))
    with pytest.raises(ValueError):
        sandbox.add_fault("status", times=0)
    with pytest.raises(ValueError):
        sandbox.add_fault("status", colour="red")
    with pytest.raises(ValueError):
        sandbox.add_fault("status", seconds=0)


# --- latency and HTTP handling ---


def test_latency_overlaps_for_concurrent_requests(sandbox: SandboxServer) -> None:
    sandbox.set_latency(0.3)
    statuses: list[int] = []

    def send(index: int) -> None:
        api = Api(sandbox.base_url)
        statuses.append(api.update_user(f"u{index}@example.com", {}).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert statuses == [200] * 8
    assert 0.3 <= elapsed < 1.2


def test_keep_alive_reuses_one_connection(api: Api, sandbox: SandboxServer) -> None:
    for index in range(5):
        api.update_user(f"u{index}@example.com", {})

    assert sandbox.stats()["connections"] == 1
    closing = api.update_user("last@example.com", {}, headers={"Connection": "close"})
    assert closing.headers["Connection"] == "close"


def raw_exchange(sandbox: SandboxServer, payload: bytes) -> bytes:
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as conn:
        conn.sendall(payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_and_http_1_0(sandbox: SandboxServer) -> None:
    body = b'{"email": "a@example.com", "dataFields": {"n": 1}}'
    one = (
        b"POST /api/users/update HTTP/1.1\r\nHost: x\r\nApi-Key: sandbox-key\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    last = (
        b"GET /api/users/getByEmail?email=a%40example.com HTTP/1.0\r\nApi-Key: sandbox-key\r\n\r\n"
    )

    answer = raw_exchange(sandbox, one + one + last)

    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.endswith(b'{"user":{"email":"a@example.com","dataFields":{"n":1}}}')
    assert sandbox.user_writes() == {"a@example.com": 2}


def test_malformed_and_chunked_requests_are_refused(sandbox: SandboxServer) -> None:
    assert raw_exchange(sandbox, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    chunked = b"POST /api/users/update HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_exchange(sandbox, chunked).startswith(b"HTTP/1.1 501 ")


def test_expect_100_continue(sandbox: SandboxServer) -> None:
    body = b'{"email": "a@example.com"}'
    head = (
        b"POST /api/users/update HTTP/1.1\r\nApi-Key: sandbox-key\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as conn:
        conn.sendall(head)
        assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(body)
        assert conn.recv(1000).startswith(b"HTTP/1.1 200 OK")


def test_only_loopback_addresses_are_bound() -> None:
    with pytest.raises(ValueError):
        SandboxServer(host="0.0.0.0")


# --- /_sandbox/ control API ---


def test_control_api_over_http(api: Api, sandbox: SandboxServer) -> None:
    plain = requests.Session()  # no API key needed
    base = sandbox.base_url + "/_sandbox"
    api.update_user("ann@example.com", {"plan": "pro"})
    api.track(email="ann@example.com", id="evt-1")

    users = plain.get(base + "/users", timeout=5).json()
    events = plain.get(base + "/events", timeout=5).json()
    stats = plain.get(base + "/stats", timeout=5).json()

    assert users["users"] == {"ann@example.com": {"plan": "pro"}}
    assert users["writes"] == {"ann@example.com": 1}
    assert list(events["events"]) == ["evt-1"] and events["writes"] == {"evt-1": 1}
    assert stats["total_requests"] == 2
    assert stats["by_endpoint"]["users/update"] == {"200": 1}
    assert plain.get(base + "/requests", timeout=5).json()["requests"][0]["status"] == 200

    assert plain.post(base + "/reset", timeout=5).json() == {"ok": True}
    assert sandbox.users() == {} and sandbox.stats()["total_requests"] == 0


def test_control_api_faults(api: Api, sandbox: SandboxServer) -> None:
    base = sandbox.base_url + "/_sandbox"
    rule = {"kind": "status", "endpoint": "users/update", "status": 503, "times": 5}

    added = requests.post(base + "/faults", json=rule, timeout=5)
    listed = requests.get(base + "/faults", timeout=5).json()["faults"]

    assert added.json()["fault"]["status"] == 503
    assert [item["times"] for item in listed] == [5]
    assert api.update_user("a@example.com", {}).status_code == 503
    assert requests.delete(base + "/faults", timeout=5).json() == {"ok": True}
    assert api.update_user("a@example.com", {}).status_code == 200
    bad = requests.post(base + "/faults", json={"kind": "status", "nope": 1}, timeout=5)
    assert bad.status_code == 400


def test_control_api_config(api: Api, sandbox: SandboxServer) -> None:
    base = sandbox.base_url + "/_sandbox"
    options = {
        "latency_ms": 0,
        "rate_limits": {"events/track": 1},
        "retry_after": 3,
        "api_keys": ["new-key"],
        "forgotten": ["gone@example.com"],
    }

    config = requests.post(base + "/config", json=options, timeout=5).json()

    assert config["rate_limits"] == {"events/track": 1.0}
    assert config["api_keys"] == ["new-key"]
    assert api.update_user("a@example.com", {}).status_code == 401
    api.session.headers["Api-Key"] = "new-key"
    assert api.update_user("gone@example.com", {}).status_code == 409
    assert api.track(email="a@example.com").status_code == 200
    limited = api.track(email="a@example.com")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    bad = requests.post(base + "/config", json={"latency_ms": 1, "colour": "red"}, timeout=5)
    assert bad.status_code == 400
    assert requests.get(base + "/nothing", timeout=5).status_code == 404


# --- as a separate process ---


def test_command_line_server(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    command = [
        sys.executable,
        "-m",
        "sandbox",
        "--port",
        "0",
        "--latency-ms",
        "10",
        "--rate-limits",
        "iterable",
        "--api-key",
        "cli-key",
        "--port-file",
        str(port_file),
    ]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            port = int(port_file.read_text())
            assert line == f"sandbox listening on http://127.0.0.1:{port}"
            response = requests.post(
                f"http://127.0.0.1:{port}/api/users/update",
                json={"email": "a@example.com"},
                headers={"Api-Key": "cli-key"},
                timeout=5,
            )
            assert response.json() == SUCCESS
            config = requests.get(f"http://127.0.0.1:{port}/_sandbox/config", timeout=5).json()
            assert config["latency"] == 0.01
            assert config["rate_limits"]["users/bulkUpdate"] == 5.0
        finally:
            process.terminate()
        assert process.wait(timeout=5) == 0
