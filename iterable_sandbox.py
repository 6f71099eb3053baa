"""A local Iterable-compatible HTTP server: the sandbox the tests, the demo and the benchmark use.

It imitates the part of Iterable's REST API this project calls (users/update, events/track,
users/bulkUpdate, events/trackBulk, users/getByEmail) the way Iterable answers it: the same
validation errors and codes, per-field type locking, API-key checks, per-endpoint rate limits
and bulk results that name failed items. Faults (error statuses, delays, dropped connections,
optionally after the write was applied) can be injected to test a client's resilience, and
everything stored is observable, in process and over HTTP under /_sandbox/.

It is a small asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) rather than
http.server, because the benchmark drives it at well over a thousand requests a second.

In process (the asyncio loop runs in a daemon thread)::

    with SandboxServer(latency=0.0) as sandbox:
        requests.post(sandbox.base_url + "/api/users/update", headers={"Api-Key": "sandbox-key"},
                      json={"email": "a@example.com", "dataFields": {"plan": "pro"}})
        assert sandbox.users()["a@example.com"] == {"plan": "pro"}

As a process::

    python iterable_sandbox.py --port 0 --latency-ms 50 --rate-limits iterable --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ipaddress
import json
import logging
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import Any, Literal, cast
from urllib.parse import parse_qs

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
FieldKind = Literal["string", "integer", "boolean", "object", "array"]
FaultKind = Literal["status", "delay", "drop"]
RateLimitBody = Literal["alternate", "json", "text"]
RateLimitSpec = str | Mapping[str, float | None] | None

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_HOST = "127.0.0.1"
MAX_BULK_BODY_BYTES = 4 * 1024 * 1024
# A hard cap for any body, so a runaway client cannot exhaust the sandbox's memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_EVENT_ID_BYTES = 512
REQUEST_LOG_SIZE = 100_000

USERS_UPDATE = "users/update"
EVENTS_TRACK = "events/track"
USERS_BULK_UPDATE = "users/bulkUpdate"
EVENTS_TRACK_BULK = "events/trackBulk"
USERS_GET_BY_EMAIL = "users/getByEmail"

API_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/users/update"): USERS_UPDATE,
    ("POST", "/api/events/track"): EVENTS_TRACK,
    ("POST", "/api/users/bulkUpdate"): USERS_BULK_UPDATE,
    ("POST", "/api/events/trackBulk"): EVENTS_TRACK_BULK,
    ("GET", "/api/users/getByEmail"): USERS_GET_BY_EMAIL,
}
ENDPOINTS = frozenset(API_ROUTES.values())

# Iterable's published per-project limits, requests per second.
ITERABLE_RATE_LIMITS: dict[str, float] = {
    USERS_UPDATE: 500.0,
    EVENTS_TRACK: 2000.0,
    USERS_BULK_UPDATE: 5.0,
    EVENTS_TRACK_BULK: 10.0,
}

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9-]+")

# Request schemas, hand-written from Iterable's Swagger definitions (ApiUserUpdateRequest,
# OptionalApiUser, TrackRequest, BulkUpdateUsersRequest, BulkTrackRequest). Unknown
# properties are ignored, as Iterable does.
USER_UPDATE_SCHEMA: dict[str, FieldKind] = {
    "email": "string",
    "userId": "string",
    "dataFields": "object",
    "preferUserId": "boolean",
    "mergeNestedObjects": "boolean",
    "createNewFields": "boolean",
}
BULK_USER_SCHEMA: dict[str, FieldKind] = {
    key: kind for key, kind in USER_UPDATE_SCHEMA.items() if key != "createNewFields"
}
TRACK_SCHEMA: dict[str, FieldKind] = {
    "eventName": "string",
    "email": "string",
    "userId": "string",
    "id": "string",
    "createdAt": "integer",
    "dataFields": "object",
    "campaignId": "integer",
    "templateId": "integer",
    "createNewFields": "boolean",
}
BULK_USERS_SCHEMA: dict[str, FieldKind] = {"users": "array", "createNewFields": "boolean"}
BULK_EVENTS_SCHEMA: dict[str, FieldKind] = {"events": "array"}

EXPECTED_VALUE = {
    "string": "String value expected",
    "integer": "Number value expected",
    "boolean": "Boolean value expected",
    "object": "Object value expected",
    "array": "Array value expected",
}

USER_FAILURE_LISTS = (
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
)
EVENT_FAILURE_LISTS = USER_FAILURE_LISTS[:6]

RATE_LIMIT_TEXT = b"Rate limit exceeded. Please try again later."
RATE_LIMIT_JSON = {"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": None}
NOT_FOUND_HTML = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested resource could not be found.</p></body></html>"
)
REASONS = {status.value: status.phrase for status in HTTPStatus}


# --- HTTP values ---------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers)


def encode_response(response: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def retry_after_headers(seconds: float | None) -> tuple[tuple[str, str], ...]:
    if seconds is None:
        return ()
    value = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
    return (("Retry-After", value),)


def plain_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


SUCCESS = json_response(200, {"msg": "", "code": "Success", "params": None})
NOT_FOUND = Response(404, NOT_FOUND_HTML, "text/html; charset=utf-8")


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers (names lower-cased) of one request head; ValueError if malformed."""
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"unsupported protocol {version!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def wants_keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


# --- Iterable error answers and validation ---------------------------------------------------


class ApiError(Exception):
    """An Iterable error answer, raised inside a handler to stop processing the request."""

    def __init__(self, status: int, code: str, msg: str, params: JsonObject | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.params = params

    def response(self) -> Response:
        return json_response(
            self.status, {"msg": self.msg, "code": self.code, "params": self.params}
        )


def bad_json(params: JsonObject) -> ApiError:
    return ApiError(400, "BadJsonBody", "Invalid JSON body", params)


def bad_params(params: dict[str, str]) -> ApiError:
    details = "; ".join(f"{path}: {message}" for path, message in params.items())
    return ApiError(400, "BadParams", f"Invalid params: {details}", dict(params))


def parse_object(body: bytes) -> JsonObject:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "BadJsonBody", f"Invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "BadJsonBody", "Invalid JSON body: a JSON object was expected")
    return data


def kind_error(kind: FieldKind, value: Any) -> str | None:
    """Why value does not fit a schema property of this kind, or None when it does."""
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return EXPECTED_VALUE["integer"]
        if isinstance(value, float) and not value.is_integer():
            return "Integer value expected"
        return None
    fits = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]
    return None if fits else EXPECTED_VALUE[kind]


def check_shape(
    obj: Mapping[str, Any], schema: Mapping[str, FieldKind], path: str, errors: dict[str, str]
) -> None:
    """Adds to errors every property of obj whose JSON type the schema does not allow.

    null counts as absent, as it does for Iterable's optional properties.
    """
    for name, kind in schema.items():
        value = obj.get(name)
        if value is not None and (message := kind_error(kind, value)) is not None:
            errors[f"{path}.{name}"] = message


def param_errors(item: Mapping[str, Any], path: str, is_event: bool) -> dict[str, str]:
    """Missing or out-of-range parameters of one user or event (types already checked)."""
    errors: dict[str, str] = {}
    if is_event:
        if not item.get("eventName"):
            errors[f"{path}.eventName"] = "eventName is required"
        event_id = item.get("id")
        if event_id is not None and not valid_event_id(event_id):
            errors[f"{path}.id"] = (
                f"Event id must be letters, digits and hyphens, at most {MAX_EVENT_ID_BYTES} bytes"
            )
    if (item.get("email") is None) == (item.get("userId") is None):
        errors[path] = "Exactly one of email or userId must be given"
    return errors


def valid_event_id(event_id: str) -> bool:
    return bool(EVENT_ID_RE.fullmatch(event_id)) and len(event_id.encode()) <= MAX_EVENT_ID_BYTES


def parse_single(body: bytes, schema: Mapping[str, FieldKind], is_event: bool) -> JsonObject:
    """The body of a single-record request, or ApiError (BadJsonBody first, then BadParams)."""
    obj = parse_object(body)
    errors: dict[str, str] = {}
    check_shape(obj, schema, "obj", errors)
    if errors:
        raise bad_json(errors)
    if problems := param_errors(obj, "obj", is_event):
        raise bad_params(problems)
    return obj


def parse_batch(
    body: bytes,
    list_name: str,
    schema: Mapping[str, FieldKind],
    item_schema: Mapping[str, FieldKind],
    is_event: bool,
) -> tuple[JsonObject, list[JsonObject]]:
    """The body of a bulk request and its items; one malformed item fails the whole request."""
    obj = parse_object(body)
    errors: dict[str, str] = {}
    check_shape(obj, schema, "obj", errors)
    raw_items = obj.get(list_name)
    items: list[JsonObject] = []
    if isinstance(raw_items, list):
        for index, item in enumerate(raw_items):
            path = f"obj.{list_name}[{index}]"
            if isinstance(item, dict):
                check_shape(item, item_schema, path, errors)
                items.append(item)
            else:
                errors[path] = EXPECTED_VALUE["object"]
    if errors:
        raise bad_json(errors)
    if raw_items is None:
        raise bad_params({f"obj.{list_name}": f"{list_name} is required"})
    problems: dict[str, str] = {}
    for index, item in enumerate(items):
        problems.update(param_errors(item, f"obj.{list_name}[{index}]", is_event))
    if problems:
        raise bad_params(problems)
    return obj, items


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a user update or event is about: an email or a userId (validated to be exactly one)."""

    kind: Literal["email", "userId"]
    value: str

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> Identity:
        email = item.get("email")
        if email is not None:
            return cls("email", email)
        return cls("userId", item["userId"])

    def failure_list(self, reason: str) -> str:
        """The failedUpdates list naming this identity, e.g. forgottenEmails."""
        return reason + ("Emails" if self.kind == "email" else "UserIds")


# --- Field types ----------------------------------------------------------------------------


def value_type(value: Any) -> str | None:
    """The Iterable field type a dataFields value fixes; None for null, which fixes nothing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def check_field_types(
    known: Mapping[str, str],
    pending: dict[str, str],
    data: Mapping[str, Any],
    category: str,
    mismatches: JsonObject,
) -> None:
    """Records in pending the types data would fix and in mismatches the values that clash.

    Types go to pending rather than known so that a rejected request fixes no type.
    """
    for name, value in data.items():
        incoming = value_type(value)
        if incoming is None:
            continue
        expected = known.get(name) or pending.get(name)
        if expected is None:
            pending[name] = incoming
        elif expected != incoming and name not in mismatches:
            mismatches[name] = {
                "incomingTypes": [incoming],
                "expectedType": expected,
                "_type": "UnexpectedType",
                "offendingValue": value,
                "category": category,
            }


def types_mismatched(mismatches: JsonObject) -> ApiError:
    name, detail = next(iter(mismatches.items()))
    msg = (
        "The request does not have the same data types as the data previously submitted. "
        f"Field '{name}' already exists for type '{detail['category']}' and has a data type of "
        f"'{detail['expectedType']}' but possible types '{detail['incomingTypes'][0]}' "
        "in the request."
    )
    return ApiError(400, "RequestFieldsTypesMismatched", msg, {"validationErrors": mismatches})


def filter_new_fields(
    data: JsonObject, known: Mapping[str, str], create_new: bool | None, filtered: set[str]
) -> JsonObject:
    """With createNewFields false Iterable drops fields it does not know yet."""
    if create_new is not False:
        return data
    filtered.update(name for name in data if name not in known)
    return {name: value for name, value in data.items() if name in known}


def merge_fields(target: JsonObject, incoming: Mapping[str, Any], merge_nested: bool) -> None:
    """Merges a dataFields update: fields not sent are kept, objects merged if asked to."""
    for name, value in incoming.items():
        current = target.get(name)
        if merge_nested and isinstance(value, dict) and isinstance(current, dict):
            merge_fields(current, value, merge_nested)
        else:
            target[name] = copy.deepcopy(value)


def bulk_result(
    success: int, failed: dict[str, list[str]], created: Iterable[str], filtered: set[str]
) -> JsonObject:
    return {
        "successCount": success,
        "failCount": sum(len(names) for names in failed.values()),
        # Deprecated top-level copies that Iterable still sends.
        "invalidEmails": failed["invalidEmails"],
        "invalidUserIds": failed["invalidUserIds"],
        "failedUpdates": failed,
        "createdFields": sorted(set(created)),
        "filteredOutFields": sorted(filtered),
    }


# --- Rate limits ----------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """Refills at rate tokens a second up to one second's worth, so pacing at rate never fails."""

    rate: float
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.updated = time.monotonic()

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def parse_rate_limits(spec: RateLimitSpec) -> dict[str, float] | None:
    """None/"off" (no limits), "iterable" (published limits), "endpoint=rate,..." or a mapping."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "off", "none"):
            return None
        if text.lower() == "iterable":
            return dict(ITERABLE_RATE_LIMITS)
        pairs = (part.split("=", 1) for part in text.split(",") if part.strip())
        spec = {name.strip(): float(rate) for name, rate in pairs}
    limits: dict[str, float] = {}
    for endpoint, rate in spec.items():
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r} in rate limits")
        if rate is not None:
            if float(rate) <= 0:
                raise ValueError(f"rate limit for {endpoint} must be positive")
            limits[endpoint] = float(rate)
    return limits


# --- Faults ---------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """A fault applied to matching API requests, consumed in the order rules were added.

    endpoint is a path suffix ("users/update", "trackBulk") or "*"; email narrows it to
    requests about that email (any item of a bulk request). times counts matching requests
    down (None: every one); with probability, each matching request is hit with that chance,
    drawn from a generator seeded with seed so that a storm is repeatable.
    """

    kind: FaultKind
    endpoint: str = "*"
    email: str | None = None
    times: int | None = 1
    probability: float | None = None
    seed: int = 0
    status: int = 503
    body: str | None = None
    content_type: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    apply_first: bool = False
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("status", "delay", "drop"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for every matching request")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        self.endpoint = self.endpoint.strip().strip("/")
        self._rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        allowed = {item.name for item in fields(cls) if item.init}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault options: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> JsonObject:
        return {item.name: getattr(self, item.name) for item in fields(self) if item.init}

    def matches_endpoint(self, endpoint: str) -> bool:
        return self.endpoint == "*" or f"/api/{endpoint}".endswith(f"/{self.endpoint}")

    def fires(self) -> bool:
        return self.probability is None or self._rng.random() < self.probability

    def response(self) -> Response:
        headers = retry_after_headers(self.retry_after)
        if self.body is None:
            return self._default_response(headers)
        content_type = self.content_type or guess_content_type(self.body)
        return Response(self.status, self.body.encode(), content_type, headers)

    def _default_response(self, headers: tuple[tuple[str, str], ...]) -> Response:
        """Gateways answer 5xx with HTML pages; the API itself answers 4xx with JSON."""
        phrase = REASONS.get(self.status, "Error")
        if self.status >= 500 or self.content_type == "text/html":
            title = f"{self.status} {phrase}"
            html = f"<html><head><title>{title}</title></head><body><h1>{phrase}</h1></body></html>"
            return Response(self.status, html.encode(), "text/html; charset=utf-8", headers)
        code = {401: "BadApiKey", 403: "Forbidden", 409: "ForgottenUserError"}.get(
            self.status, "RateLimitExceeded" if self.status == 429 else "BadParams"
        )
        return json_response(self.status, {"msg": phrase, "code": code, "params": None}, headers)


def guess_content_type(body: str) -> str:
    if body.lstrip().startswith("<"):
        return "text/html; charset=utf-8"
    try:
        json.loads(body)
    except ValueError:
        return "text/plain; charset=utf-8"
    return "application/json"


def request_emails(endpoint: str, request: Request) -> set[str]:
    """The emails a request is about, for faults narrowed to one email."""
    if endpoint == USERS_GET_BY_EMAIL:
        return set(parse_qs(request.query).get("email", []))
    try:
        data = json.loads(request.body)
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    items = data.get("users") or data.get("events") or [data]
    if not isinstance(items, list):
        return set()
    return {
        item["email"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("email"), str)
    }


# --- The sandbox ----------------------------------------------------------------------------


@dataclass
class SandboxConfig:
    latency: float = 0.0
    rate_limits: dict[str, float] | None = None
    retry_after: float | None = None
    api_keys: set[str] = field(default_factory=lambda: {DEFAULT_API_KEY})
    disabled_keys: set[str] = field(default_factory=set)
    forbidden_keys: set[str] = field(default_factory=set)
    rate_limit_body: RateLimitBody = "alternate"

    def to_dict(self) -> JsonObject:
        return {
            "latency": self.latency,
            "rate_limits": self.rate_limits,
            "retry_after": self.retry_after,
            "api_keys": sorted(self.api_keys),
            "disabled_keys": sorted(self.disabled_keys),
            "forbidden_keys": sorted(self.forbidden_keys),
            "rate_limit_body": self.rate_limit_body,
        }


class Sandbox:
    """The Iterable imitation: store, configuration, request handling and the HTTP server.

    The store is guarded by a lock so that a test thread can read it or change the
    configuration while the server's event loop runs in another thread.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        rate_limits: RateLimitSpec = None,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        disabled_keys: Iterable[str] = (),
        forbidden_keys: Iterable[str] = (),
        retry_after: float | None = None,
        rate_limit_body: RateLimitBody = "alternate",
    ) -> None:
        self._lock = threading.RLock()
        self._config = SandboxConfig(
            latency=float(latency),
            retry_after=retry_after,
            api_keys=set(api_keys),
            disabled_keys=set(disabled_keys),
            forbidden_keys=set(forbidden_keys),
            rate_limit_body=rate_limit_body,
        )
        self._buckets: dict[str, TokenBucket] = {}
        self.set_rate_limits(rate_limits)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = DEFAULT_HOST
        self.port = 0
        self._clear()

    def _clear(self) -> None:
        """Forgets everything stored, counted or injected; keeps the configuration."""
        with self._lock:
            self._users: dict[tuple[str, str], JsonObject] = {}
            self._user_writes: Counter[tuple[str, str]] = Counter()
            self._events: dict[str, JsonObject] = {}
            self._event_writes: Counter[str] = Counter()
            self._user_types: dict[str, str] = {}
            self._event_types: dict[str, dict[str, str]] = {}
            self._forgotten: set[str] = set()
            self._conflicts: set[str] = set()
            self._not_found: set[str] = set()
            self._faults: list[FaultRule] = []
            self._outcomes: Counter[tuple[str, str]] = Counter()
            self._log: deque[JsonObject] = deque(maxlen=REQUEST_LOG_SIZE)
            self._batch_sizes: dict[str, list[int]] = {USERS_BULK_UPDATE: [], EVENTS_TRACK_BULK: []}
            self._rate_limited = 0
            self._faults_applied = 0
            self._connections = 0
            self._json_429_next = False
            for bucket in self._buckets.values():
                bucket.tokens = bucket.capacity

    # --- programmatic API: reading the store ---

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def users(self) -> dict[str, JsonObject]:
        """email -> dataFields of every user identified by email."""
        return self._users_of_kind("email")

    def user_ids(self) -> dict[str, JsonObject]:
        """userId -> dataFields of every user identified by userId only."""
        return self._users_of_kind("userId")

    def _users_of_kind(self, kind: str) -> dict[str, JsonObject]:
        with self._lock:
            return {
                value: copy.deepcopy(data) for (k, value), data in self._users.items() if k == kind
            }

    def user_writes(self) -> dict[str, int]:
        """How many accepted updates each user got, keyed by email (or userId)."""
        with self._lock:
            return {value: count for (_, value), count in self._user_writes.items()}

    def events(self) -> dict[str, JsonObject]:
        """id -> event as stored (id, email or userId, eventName, createdAt, dataFields...)."""
        with self._lock:
            return copy.deepcopy(self._events)

    def event_writes(self) -> dict[str, int]:
        """How many times each event id was written (a resend with the same id adds one)."""
        with self._lock:
            return dict(self._event_writes)

    def duplicate_events(self) -> list[JsonObject]:
        """Logical duplicates: same user, eventName, createdAt and dataFields under several ids."""
        groups: dict[str, list[str]] = {}
        samples: dict[str, JsonObject] = {}
        with self._lock:
            for event_id, event in self._events.items():
                key_fields = {
                    "email": event.get("email"),
                    "userId": event.get("userId"),
                    "eventName": event.get("eventName"),
                    "createdAt": event.get("createdAt"),
                    "dataFields": event.get("dataFields"),
                }
                key = json.dumps(key_fields, sort_keys=True)
                groups.setdefault(key, []).append(event_id)
                samples.setdefault(key, copy.deepcopy(key_fields))
        return [{**samples[key], "ids": ids} for key, ids in groups.items() if len(ids) > 1]

    def field_types(self) -> JsonObject:
        """The field types fixed so far: {"user": {field: type}, "events": {name: {...}}}."""
        with self._lock:
            return {"user": dict(self._user_types), "events": copy.deepcopy(self._event_types)}

    def stats(self) -> JsonObject:
        with self._lock:
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, outcome), count in sorted(self._outcomes.items()):
                by_endpoint.setdefault(endpoint, {})[outcome] = count
            return {
                "total_requests": sum(self._outcomes.values()),
                "by_endpoint": by_endpoint,
                "status_429": sum(c for (_, o), c in self._outcomes.items() if o == "429"),
                "rate_limited": self._rate_limited,
                "faults_applied": self._faults_applied,
                "connections": self._connections,
                "bulk_batch_sizes": copy.deepcopy(self._batch_sizes),
            }

    def request_count(self, endpoint: str | None = None, status: int | str | None = None) -> int:
        """Requests answered, optionally only for one endpoint and/or status ("dropped" too)."""
        with self._lock:
            return sum(
                count
                for (ep, outcome), count in self._outcomes.items()
                if (endpoint is None or ep == endpoint)
                and (status is None or outcome == str(status))
            )

    def request_log(self) -> list[JsonObject]:
        """Latest requests: {"t", "endpoint", "status" (None: no answer), "fault", "emails"}."""
        with self._lock:
            return list(self._log)

    # --- programmatic API: changing behaviour ---

    def reset(self) -> None:
        """Empties the store, statistics, faults and forgotten/conflict/not-found sets."""
        self._clear()

    def config(self) -> JsonObject:
        with self._lock:
            return self._config.to_dict()

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._config.latency = float(seconds)

    def set_rate_limits(self, spec: RateLimitSpec) -> None:
        """None/"off", "iterable" (published limits) or {endpoint: requests per second}."""
        limits = parse_rate_limits(spec)
        with self._lock:
            self._config.rate_limits = limits
            self._buckets = {ep: TokenBucket(rate) for ep, rate in (limits or {}).items()}

    def set_retry_after(self, seconds: float | None) -> None:
        """The Retry-After header sent with rate-limit 429s; None sends none."""
        self._config.retry_after = seconds

    def set_rate_limit_body(self, style: RateLimitBody) -> None:
        if style not in ("alternate", "json", "text"):
            raise ValueError(f"unknown rate limit body style {style!r}")
        self._config.rate_limit_body = style

    def set_api_keys(
        self,
        valid: Iterable[str] | None = None,
        disabled: Iterable[str] | None = None,
        forbidden: Iterable[str] | None = None,
    ) -> None:
        """Replaces the given key sets; a set left as None is kept."""
        with self._lock:
            if valid is not None:
                self._config.api_keys = set(valid)
            if disabled is not None:
                self._config.disabled_keys = set(disabled)
            if forbidden is not None:
                self._config.forbidden_keys = set(forbidden)

    def forget(self, identifier: str) -> None:
        """GDPR-forgets an email or userId: later writes about it are refused."""
        with self._lock:
            self._forgotten.add(identifier)

    def mark_conflict(self, identifier: str) -> None:
        """User updates about this email or userId fail with an email/userId conflict."""
        with self._lock:
            self._conflicts.add(identifier)

    def mark_not_found(self, identifier: str) -> None:
        """Events about this email or userId fail as for a user that does not exist."""
        with self._lock:
            self._not_found.add(identifier)

    def add_fault(self, rule: FaultRule | FaultKind, **options: Any) -> FaultRule:
        """Adds a fault rule, given as a FaultRule or as a kind plus FaultRule's options."""
        if not isinstance(rule, FaultRule):
            rule = FaultRule.from_dict({"kind": rule, **options})
        elif options:
            raise TypeError("options go into the FaultRule")
        with self._lock:
            self._faults.append(rule)
        return rule

    def faults(self) -> list[FaultRule]:
        with self._lock:
            return list(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def configure(self, options: Mapping[str, Any]) -> None:
        """Applies the options POST /_sandbox/config takes; unknown names are refused up front."""
        setters = {
            "latency": lambda v: self.set_latency(float(v)),
            "latency_ms": lambda v: self.set_latency(float(v) / 1000.0),
            "rate_limits": self.set_rate_limits,
            "retry_after": lambda v: self.set_retry_after(None if v is None else float(v)),
            "rate_limit_body": self.set_rate_limit_body,
            "api_keys": lambda v: self.set_api_keys(valid=list_of_strings(v)),
            "disabled_keys": lambda v: self.set_api_keys(disabled=list_of_strings(v)),
            "forbidden_keys": lambda v: self.set_api_keys(forbidden=list_of_strings(v)),
            "forgotten": lambda v: self._add_identifiers(self._forgotten, v),
            "conflict": lambda v: self._add_identifiers(self._conflicts, v),
            "not_found": lambda v: self._add_identifiers(self._not_found, v),
        }
        unknown = set(options) - set(setters)
        if unknown:
            raise ValueError(f"unknown config options: {sorted(unknown)}")
        for name, value in options.items():
            setters[name](value)

    def _add_identifiers(self, target: set[str], values: Any) -> None:
        identifiers = list_of_strings(values)
        with self._lock:
            target.update(identifiers)

    # --- request handling ---

    async def _dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response | None:
        """The answer to one request; None means close the connection without one."""
        if request.path.startswith("/_sandbox/"):
            return self._control(request)
        endpoint = API_ROUTES.get((request.method, request.path))
        if endpoint is None:
            self._record("unknown", NOT_FOUND, None, None)
            return NOT_FOUND
        if self._config.latency > 0:
            await asyncio.sleep(self._config.latency)
        fault = self._take_fault(endpoint, request)
        if fault is None:
            response: Response | None = self._process(endpoint, request)
        else:
            response = await self._apply_fault(fault, endpoint, request, reader)
        self._record(endpoint, response, fault, request)
        return response

    def _take_fault(self, endpoint: str, request: Request) -> FaultRule | None:
        if not self._faults:
            return None
        with self._lock:
            emails: set[str] | None = None
            for rule in self._faults:
                if not rule.matches_endpoint(endpoint):
                    continue
                if rule.email is not None:
                    if emails is None:
                        emails = request_emails(endpoint, request)
                    if rule.email not in emails:
                        continue
                if not rule.fires():
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._faults.remove(rule)
                self._faults_applied += 1
                return rule
        return None

    async def _apply_fault(
        self, fault: FaultRule, endpoint: str, request: Request, reader: asyncio.StreamReader
    ) -> Response | None:
        applied = self._process(endpoint, request) if fault.apply_first else None
        logger.debug("fault %s on %s (applied first: %s)", fault.kind, endpoint, fault.apply_first)
        if fault.kind == "status":
            return fault.response()
        if fault.kind == "drop":
            return None
        await asyncio.sleep(fault.delay)
        if reader.at_eof():
            # The client gave up while we were slow: a write not yet applied never happens.
            return None
        return applied if applied is not None else self._process(endpoint, request)

    def _record(
        self,
        endpoint: str,
        response: Response | None,
        fault: FaultRule | None,
        request: Request | None,
    ) -> None:
        # Single-user requests are small, so naming their email costs little and lets a
        # test check per-user ordering; bulk bodies are too big to parse twice.
        emails = (
            sorted(request_emails(endpoint, request))
            if request is not None and endpoint in ("users/update", "events/track")
            else []
        )
        if response is not None:
            outcome = str(response.status)
        else:
            outcome = "dropped" if fault is not None and fault.kind == "drop" else "client_gone"
        with self._lock:
            self._outcomes[(endpoint, outcome)] += 1
            self._log.append(
                {
                    "t": time.time(),
                    "endpoint": endpoint,
                    "status": None if response is None else response.status,
                    "fault": None if fault is None else fault.kind,
                    "emails": emails,
                }
            )

    def _process(self, endpoint: str, request: Request) -> Response:
        """Authenticates, rate-limits, validates and applies one API request."""
        with self._lock:
            try:
                self._authorize(request.headers.get("api-key"))
                limited = self._check_rate(endpoint)
                if limited is not None:
                    return limited
                return self._handle(endpoint, request)
            except ApiError as error:
                return error.response()

    def _authorize(self, key: str | None) -> None:
        config = self._config
        if key is not None and key in config.disabled_keys:
            raise ApiError(401, "BadApiKey", "Disabled API key or insufficient privileges")
        if key is not None and key in config.forbidden_keys:
            raise ApiError(403, "Forbidden", "This API key may not use this endpoint")
        if key is None or key not in config.api_keys:
            raise ApiError(401, "BadApiKey", "Invalid API key")

    def _check_rate(self, endpoint: str) -> Response | None:
        bucket = self._buckets.get(endpoint)
        if bucket is None or bucket.take(time.monotonic()):
            return None
        self._rate_limited += 1
        headers = retry_after_headers(self._config.retry_after)
        style = self._config.rate_limit_body
        if style == "alternate":
            # Iterable answers some 429s in plain text and others in JSON.
            style = "json" if self._json_429_next else "text"
            self._json_429_next = not self._json_429_next
        if style == "json":
            return json_response(429, RATE_LIMIT_JSON, headers)
        return Response(429, RATE_LIMIT_TEXT, "text/plain; charset=utf-8", headers)

    def _handle(self, endpoint: str, request: Request) -> Response:
        if endpoint == USERS_UPDATE:
            return self._users_update(request)
        if endpoint == EVENTS_TRACK:
            return self._events_track(request)
        if endpoint == USERS_BULK_UPDATE:
            return self._users_bulk_update(request)
        if endpoint == EVENTS_TRACK_BULK:
            return self._events_track_bulk(request)
        return self._get_by_email(request)

    def _rejection(self, identity: Identity, is_event: bool) -> str | None:
        """Why Iterable would refuse a write about this identity: a failedUpdates reason."""
        if identity.kind == "email" and not EMAIL_RE.fullmatch(identity.value):
            return "invalid"
        if identity.kind == "userId" and not identity.value.strip():
            return "invalid"
        if identity.value in self._forgotten:
            return "forgotten"
        if not is_event and identity.value in self._conflicts:
            return "conflict"
        if is_event and identity.value in self._not_found:
            return "notFound"
        return None

    def _refuse_single(self, identity: Identity, is_event: bool) -> None:
        """Raises the error a single-record endpoint answers for a refused identity."""
        reason = self._rejection(identity, is_event)
        value, by_email = identity.value, identity.kind == "email"
        if reason == "invalid" and by_email:
            raise ApiError(400, "InvalidEmailAddressError", f"Invalid email: {value}")
        if reason == "invalid":
            raise ApiError(400, "InvalidUserIdError", f"Invalid userId: {value}")
        if reason == "forgotten":
            raise ApiError(409, "ForgottenUserError", f"User {value} was forgotten (GDPR)")
        if reason == "conflict":
            raise ApiError(409, "ExternalKeyConflict", f"Email and userId conflict for {value}")
        if reason == "notFound":
            code = "UnknownEmailError" if by_email else "UnknownUserIdError"
            raise ApiError(400, code, f"No user exists with {identity.kind} {value}")

    def _users_update(self, request: Request) -> Response:
        item = parse_single(request.body, USER_UPDATE_SCHEMA, is_event=False)
        identity = Identity.of(item)
        self._refuse_single(identity, is_event=False)
        pending: dict[str, str] = {}
        mismatches: JsonObject = {}
        data = filter_new_fields(
            item.get("dataFields") or {}, self._user_types, item.get("createNewFields"), set()
        )
        check_field_types(self._user_types, pending, data, "user", mismatches)
        if mismatches:
            raise types_mismatched(mismatches)
        self._user_types.update(pending)
        self._write_user(identity, data, bool(item.get("mergeNestedObjects")))
        return SUCCESS

    def _events_track(self, request: Request) -> Response:
        item = parse_single(request.body, TRACK_SCHEMA, is_event=True)
        identity = Identity.of(item)
        self._refuse_single(identity, is_event=True)
        pending: dict[str, dict[str, str]] = {}
        mismatches: JsonObject = {}
        data = self._event_data(item, item.get("createNewFields"), pending, mismatches, set())
        if mismatches:
            raise types_mismatched(mismatches)
        self._commit_event_types(pending)
        event_id = self._write_event(identity, item, data)
        return json_response(200, {"msg": "", "code": "Success", "params": {"id": event_id}})

    def _users_bulk_update(self, request: Request) -> Response:
        self._check_batch_size(request)
        obj, items = parse_batch(
            request.body, "users", BULK_USERS_SCHEMA, BULK_USER_SCHEMA, is_event=False
        )
        failed: dict[str, list[str]] = {name: [] for name in USER_FAILURE_LISTS}
        pending: dict[str, str] = {}
        mismatches: JsonObject = {}
        filtered: set[str] = set()
        accepted: list[tuple[Identity, JsonObject, bool]] = []
        for item in items:
            identity = Identity.of(item)
            reason = self._rejection(identity, is_event=False)
            if reason is not None:
                failed[identity.failure_list(reason)].append(identity.value)
                continue
            data = filter_new_fields(
                item.get("dataFields") or {}, self._user_types, obj.get("createNewFields"), filtered
            )
            check_field_types(self._user_types, pending, data, "user", mismatches)
            accepted.append((identity, data, bool(item.get("mergeNestedObjects"))))
        if mismatches:
            raise types_mismatched(mismatches)
        self._user_types.update(pending)
        for identity, data, merge_nested in accepted:
            self._write_user(identity, data, merge_nested)
        self._batch_sizes[USERS_BULK_UPDATE].append(len(items))
        return json_response(200, bulk_result(len(accepted), failed, pending, filtered))

    def _events_track_bulk(self, request: Request) -> Response:
        self._check_batch_size(request)
        _, items = parse_batch(
            request.body, "events", BULK_EVENTS_SCHEMA, TRACK_SCHEMA, is_event=True
        )
        failed: dict[str, list[str]] = {name: [] for name in EVENT_FAILURE_LISTS}
        pending: dict[str, dict[str, str]] = {}
        mismatches: JsonObject = {}
        filtered: set[str] = set()
        accepted: list[tuple[Identity, JsonObject, JsonObject]] = []
        for item in items:
            identity = Identity.of(item)
            reason = self._rejection(identity, is_event=True)
            if reason is not None:
                failed[identity.failure_list(reason)].append(identity.value)
                continue
            data = self._event_data(
                item, item.get("createNewFields"), pending, mismatches, filtered
            )
            accepted.append((identity, item, data))
        if mismatches:
            raise types_mismatched(mismatches)
        self._commit_event_types(pending)
        for identity, item, data in accepted:
            self._write_event(identity, item, data)
        self._batch_sizes[EVENTS_TRACK_BULK].append(len(items))
        created = [name for types in pending.values() for name in types]
        result = bulk_result(len(accepted), failed, created, filtered)
        result["disallowedEventNames"] = []
        return json_response(200, result)

    def _get_by_email(self, request: Request) -> Response:
        email = parse_qs(request.query).get("email", [""])[0]
        if not email:
            raise bad_params({"email": "email is required"})
        if not EMAIL_RE.fullmatch(email):
            raise ApiError(400, "InvalidEmailAddressError", f"Invalid email: {email}")
        profile = self._users.get(("email", email))
        if profile is None or email in self._forgotten:
            return json_response(200, {})
        return json_response(200, {"user": {"email": email, "dataFields": profile}})

    @staticmethod
    def _check_batch_size(request: Request) -> None:
        if len(request.body) > MAX_BULK_BODY_BYTES:
            raise ApiError(
                400, "BatchTooLarge", f"Request body is larger than {MAX_BULK_BODY_BYTES} bytes"
            )

    def _event_data(
        self,
        item: JsonObject,
        create_new: bool | None,
        pending: dict[str, dict[str, str]],
        mismatches: JsonObject,
        filtered: set[str],
    ) -> JsonObject:
        """An event's dataFields after field filtering, its types checked per event name."""
        name = item["eventName"]
        known = self._event_types.get(name, {})
        data = filter_new_fields(item.get("dataFields") or {}, known, create_new, filtered)
        check_field_types(known, pending.setdefault(name, {}), data, "event", mismatches)
        return data

    def _commit_event_types(self, pending: Mapping[str, Mapping[str, str]]) -> None:
        for name, types in pending.items():
            if types:
                self._event_types.setdefault(name, {}).update(types)

    def _write_user(self, identity: Identity, data: JsonObject, merge_nested: bool) -> None:
        key = (identity.kind, identity.value)
        merge_fields(self._users.setdefault(key, {}), data, merge_nested)
        self._user_writes[key] += 1

    def _write_event(self, identity: Identity, item: JsonObject, data: JsonObject) -> str:
        """Stores an event under its id, replacing an earlier one with that id."""
        event_id = item.get("id") or uuid.uuid4().hex
        event: JsonObject = {"id": event_id, identity.kind: identity.value}
        event["eventName"] = item["eventName"]
        for name in ("createdAt", "campaignId", "templateId"):
            if item.get(name) is not None:
                event[name] = int(item[name])
        event["dataFields"] = copy.deepcopy(data)
        self._events[event_id] = event
        self._event_writes[event_id] += 1
        return event_id

    # --- /_sandbox/ control API ---

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path.removeprefix("/_sandbox/").rstrip("/"))
        try:
            payload = self._control_payload(route, request)
        except (ValueError, TypeError) as exc:
            return json_response(400, {"error": str(exc)})
        if payload is None:
            return json_response(404, {"error": f"no sandbox route {route[0]} {request.path}"})
        return json_response(200, payload)

    def _control_payload(self, route: tuple[str, str], request: Request) -> JsonObject | None:
        if route == ("GET", "users"):
            return {"users": self.users(), "userIds": self.user_ids(), "writes": self.user_writes()}
        if route == ("GET", "events"):
            return {"events": self.events(), "writes": self.event_writes()}
        if route == ("GET", "duplicates"):
            return {"duplicates": self.duplicate_events()}
        if route == ("GET", "stats"):
            return self.stats()
        if route == ("GET", "requests"):
            return {"requests": self.request_log()}
        if route == ("GET", "fields"):
            return self.field_types()
        if route == ("GET", "config"):
            return self.config()
        if route == ("POST", "config"):
            self.configure(control_body(request))
            return self.config()
        if route == ("POST", "reset"):
            self.reset()
            return {"ok": True}
        if route == ("GET", "faults"):
            return {"faults": [rule.to_dict() for rule in self.faults()]}
        if route == ("POST", "faults"):
            return {"fault": self.add_fault(FaultRule.from_dict(control_body(request))).to_dict()}
        if route == ("DELETE", "faults"):
            self.clear_faults()
            return {"ok": True}
        return None

    # --- HTTP/1.1 server ---

    async def listen(self, host: str = DEFAULT_HOST, port: int = 0) -> None:
        """Starts serving on a loopback address (port 0 picks a free port)."""
        require_loopback(host)
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEAD_BYTES, backlog=1024
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("iterable sandbox listening on %s", self.base_url)

    async def close(self) -> None:
        """Stops listening and closes every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        logger.info("iterable sandbox on %s stopped", self.base_url)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(cast("asyncio.Task[None]", task))
        self._connections += 1
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.debug("connection ended: %r", exc)
        except asyncio.CancelledError:
            # Only close() cancels these tasks. Ending normally matters: Python 3.11's
            # stream callback calls task.exception(), which raises on a cancelled task.
            logger.debug("connection closed by shutdown")
        except Exception:
            logger.exception("sandbox connection failed")
        finally:
            if task is not None:
                self._tasks.discard(cast("asyncio.Task[None]", task))
            writer.close()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            request = await self._read_request(reader, writer)
            if request is None:
                return
            response = await self._dispatch(request, reader)
            if response is None:
                return
            writer.write(encode_response(response, request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        """The next request on the connection, or None when the connection should end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            return self._refuse(writer, plain_response(431, "Request header too large"))
        try:
            method, target, version, headers = parse_head(head)
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            return self._refuse(writer, plain_response(400, f"Bad request: {exc}"))
        if "transfer-encoding" in headers:
            return self._refuse(writer, plain_response(501, "Chunked bodies are not supported"))
        if not 0 <= length <= MAX_BODY_BYTES:
            return self._refuse(writer, plain_response(413, "Request body too large"))
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, wants_keep_alive(version, headers))

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, response: Response) -> None:
        writer.write(encode_response(response, keep_alive=False))


def control_body(request: Request) -> JsonObject:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def list_of_strings(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list):
        raise ValueError("a list of strings was expected")
    if not all(isinstance(item, str) for item in value):
        raise ValueError("a list of strings was expected")
    return value


def require_loopback(host: str) -> None:
    """The sandbox accepts any key and stores personal data: never expose it beyond this host."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox only binds loopback addresses, not {host!r}")


class SandboxServer(Sandbox):
    """A Sandbox served from a daemon thread running its own event loop (for tests and demos)."""

    def __init__(self, *, host: str = DEFAULT_HOST, port: int = 0, **options: Any) -> None:
        require_loopback(host)
        super().__init__(**options)
        self._bind = (host, port)
        self.host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    def start(self) -> SandboxServer:
        if self._thread is not None:
            raise RuntimeError("sandbox already started")
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="iterable-sandbox", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("sandbox did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.listen(*self._bind))
        except OSError as exc:
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- command line ---------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a local Iterable-compatible API server.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated latency")
    parser.add_argument(
        "--rate-limits",
        default="off",
        help='"off", "iterable" (published limits) or "users/update=500,events/track=2000"',
    )
    parser.add_argument("--retry-after", type=float, default=None, help="Retry-After on 429s")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help=f"valid key (default {DEFAULT_API_KEY})"
    )
    parser.add_argument("--disabled-key", action="append", default=[], help="disabled key")
    parser.add_argument("--forbidden-key", action="append", default=[], help="key answered 403")
    parser.add_argument("--port-file", help="write the chosen port to this file")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING...")
    return parser


def write_port_file(path: str, port: int) -> None:
    """Written whole then renamed, so a process polling for the file never reads half of it."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(f"{port}\n")
    os.replace(temporary, path)


async def serve_until_signalled(
    sandbox: Sandbox, host: str, port: int, port_file: str | None
) -> None:
    await sandbox.listen(host, port)
    # The port file first: whoever waits for either signal may then read both.
    if port_file:
        write_port_file(port_file, sandbox.port)
    print(f"sandbox listening on {sandbox.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await sandbox.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        require_loopback(args.host)
        sandbox = Sandbox(
            latency=args.latency_ms / 1000.0,
            rate_limits=args.rate_limits,
            api_keys=args.api_keys or [DEFAULT_API_KEY],
            disabled_keys=args.disabled_key,
            forbidden_keys=args.forbidden_key,
            retry_after=args.retry_after,
        )
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_signalled(sandbox, args.host, args.port, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
