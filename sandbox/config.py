"""What the sandbox is told: endpoints and their rate limits, API keys, latency, faults."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rate_limit import PUBLISHED_RATE_LIMITS
from sandbox.wire import REASONS, JsonObject, Response, json_response, retry_after_headers

FaultKind = Literal["status", "delay", "drop"]
ProjectType = Literal["hybrid", "email", "userId"]
RateLimitBody = Literal["alternate", "json", "text"]
RateLimitSpec = str | Mapping[str, float | None] | None

DEFAULT_API_KEY = "sandbox-key"
PROJECT_TYPES: tuple[ProjectType, ...] = ("hybrid", "email", "userId")
# Answers to an oversized bulk request: Iterable's BatchTooLarge, or a gateway's 413.
BATCH_TOO_LARGE_STATUSES = frozenset({400, 413})

# Endpoint names: what request_count(), stats(), rate limits and faults call each route.
USERS_UPDATE = "users/update"
EVENTS_TRACK = "events/track"
USERS_BULK_UPDATE = "users/bulkUpdate"
EVENTS_TRACK_BULK = "events/trackBulk"
USERS_GET_BY_EMAIL = "users/getByEmail"
USERS_GET = "users/get"  # GET /api/users/{email}
USERS_GET_BY_USER_ID = "users/getByUserId"  # GET /api/users/byUserId/{userId}
USERS_UPDATE_EMAIL = "users/updateEmail"
USERS_DELETE = "users/delete"  # DELETE /api/users/{email} and /api/users/byUserId/{userId}
USERS_FORGOTTEN = "users/forgotten"
USERS_FORGET = "users/forget"
USERS_GET_FIELDS = "users/getFields"
LISTS = "lists"  # GET /api/lists
LISTS_CREATE = "lists/create"  # POST /api/lists
LISTS_SUBSCRIBE = "lists/subscribe"
LISTS_UNSUBSCRIBE = "lists/unsubscribe"

ENDPOINTS = frozenset(
    {
        USERS_UPDATE,
        EVENTS_TRACK,
        USERS_BULK_UPDATE,
        EVENTS_TRACK_BULK,
        USERS_GET_BY_EMAIL,
        USERS_GET,
        USERS_GET_BY_USER_ID,
        USERS_UPDATE_EMAIL,
        USERS_DELETE,
        USERS_FORGOTTEN,
        USERS_FORGET,
        USERS_GET_FIELDS,
        LISTS,
        LISTS_CREATE,
        LISTS_SUBSCRIBE,
        LISTS_UNSUBSCRIBE,
    }
)

# Iterable's published per-project limits, requests per second: the four the job paces
# itself by (one copy, in rate_limit.py) and the lifecycle endpoints'. Endpoints without a
# published limit (updateEmail, list create/subscribe/unsubscribe, getByEmail) have none.
ITERABLE_RATE_LIMITS: dict[str, float] = {
    **PUBLISHED_RATE_LIMITS,
    USERS_GET: 100.0,
    USERS_GET_BY_USER_ID: 100.0,
    USERS_DELETE: 100.0,
    USERS_FORGOTTEN: 3.0,
    USERS_FORGET: 3.0,
    USERS_GET_FIELDS: 3.0,
    LISTS: 100.0,
}

RATE_LIMIT_TEXT = b"Rate limit exceeded. Please try again later."
RATE_LIMIT_JSON = {"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": None}


# --- Configuration --------------------------------------------------------------------------


@dataclass
class SandboxConfig:
    latency: float = 0.0
    rate_limits: dict[str, float] | None = None
    retry_after: float | None = None
    api_keys: set[str] = field(default_factory=lambda: {DEFAULT_API_KEY})
    disabled_keys: set[str] = field(default_factory=set)
    forbidden_keys: set[str] = field(default_factory=set)
    rate_limit_body: RateLimitBody = "alternate"
    project_type: ProjectType = "hybrid"
    # Iterable documents no item count limit for bulk requests; set one to test a client's
    # reaction to BatchTooLarge. The same status answers bodies over 4 MB.
    max_bulk_items: int | None = None
    batch_too_large_status: int = 400

    def to_dict(self) -> JsonObject:
        return {
            "latency": self.latency,
            "rate_limits": self.rate_limits,
            "retry_after": self.retry_after,
            "api_keys": sorted(self.api_keys),
            "disabled_keys": sorted(self.disabled_keys),
            "forbidden_keys": sorted(self.forbidden_keys),
            "rate_limit_body": self.rate_limit_body,
            "project_type": self.project_type,
            "max_bulk_items": self.max_bulk_items,
            "batch_too_large_status": self.batch_too_large_status,
        }


# --- Rate limits ----------------------------------------------------------------------------


Clock = Callable[[], float]


class TokenBucket:
    """Refills at rate tokens a second up to one second's worth, so pacing at rate never fails.

    Time comes from clock (seconds, monotonic), so a test can drive it without sleeping.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self.tokens = self.capacity
        self.updated = clock()

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def take(self) -> bool:
        """Takes one token if there is one; False means the request is over the limit."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def refill(self) -> None:
        self.tokens = self.capacity
        self.updated = self._clock()


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
    drawn from a generator seeded with seed so that a storm is repeatable. after lets that
    many matching requests through before the rule starts; seconds ends the rule that long
    after it first fired (a storm that lasts a while, then passes).
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
    after: int = 0
    seconds: float | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _first_fired: float | None = field(init=False, default=None, repr=False, compare=False)

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
        if self.after < 0:
            raise ValueError("after must not be negative")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("seconds must be positive, or None for no end in time")
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
        """Whether this matching request is hit (counting `after` down first)."""
        if self.after:
            self.after -= 1
            return False
        return self.probability is None or self._rng.random() < self.probability

    def started(self, now: float) -> None:
        """The rule fired at `now`; its `seconds` count from the first time."""
        if self._first_fired is None:
            self._first_fired = now

    def over(self, now: float) -> bool:
        """Whether the rule's time is up."""
        if self.seconds is None or self._first_fired is None:
            return False
        return now - self._first_fired >= self.seconds

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
