"""The sandbox itself: its in-process API, the /_sandbox/ control routes and the asyncio server.

Sandbox keeps the store and the configuration behind one lock, so that a test thread can
read or change them while the event loop serves requests; SandboxServer runs that loop in a
daemon thread. The server is a small HTTP/1.1 implementation (keep-alive, Content-Length
bodies) rather than http.server, because the benchmark drives it at well over a thousand
requests a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from sandbox.config import (
    BATCH_TOO_LARGE_STATUSES,
    DEFAULT_API_KEY,
    EVENTS_TRACK,
    PROJECT_TYPES,
    RATE_LIMIT_JSON,
    RATE_LIMIT_TEXT,
    USERS_UPDATE,
    Clock,
    FaultKind,
    FaultRule,
    ProjectType,
    RateLimitBody,
    RateLimitSpec,
    SandboxConfig,
    TokenBucket,
    parse_rate_limits,
)
from sandbox.handlers import Handlers, RouteMatch, match_route, request_emails
from sandbox.store import Store, json_copy
from sandbox.validation import ApiError
from sandbox.wire import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    NOT_FOUND,
    JsonObject,
    Request,
    Response,
    encode_response,
    json_response,
    parse_head,
    plain_response,
    retry_after_headers,
    wants_keep_alive,
)

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
REQUEST_LOG_SIZE = 100_000


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
        project_type: ProjectType = "hybrid",
        max_bulk_items: int | None = None,
        batch_too_large_status: int = 400,
        clock: Clock = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        # The rate limits' time source: tests pass a fake clock instead of sleeping.
        self._clock = clock
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
        self.set_project_type(project_type)
        self.set_bulk_limits(max_bulk_items, batch_too_large_status)

    def _clear(self) -> None:
        """Forgets everything stored, counted or injected; keeps the configuration."""
        with self._lock:
            self._store = Store(self._config.project_type)
            self._handlers = Handlers(self._store, self._config)
            self._faults: list[FaultRule] = []
            self._outcomes: Counter[tuple[str, str]] = Counter()
            self._log: deque[JsonObject] = deque(maxlen=REQUEST_LOG_SIZE)
            self._rate_limited = 0
            self._faults_applied = 0
            self._connections = 0
            self._json_429_next = False
            for bucket in self._buckets.values():
                bucket.refill()

    # --- programmatic API: reading the store ---

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def users(self) -> dict[str, JsonObject]:
        """email -> dataFields of every profile that has an email."""
        with self._lock:
            return {
                p.email: json_copy(p.data)
                for p in self._store.profiles.values()
                if p.email is not None
            }

    def user_ids(self) -> dict[str, JsonObject]:
        """userId -> dataFields of every profile that has a userId."""
        with self._lock:
            return {
                p.user_id: json_copy(p.data)
                for p in self._store.profiles.values()
                if p.user_id is not None
            }

    def user_writes(self) -> dict[str, int]:
        """How many accepted user updates each profile got, keyed by its email (or userId)."""
        with self._lock:
            return {
                cast(str, p.email or p.user_id): p.writes
                for p in self._store.profiles.values()
                if p.writes
            }

    def profiles(self) -> list[JsonObject]:
        """Every profile, oldest first: {"email", "userId", "dataFields", "events" (ids),
        "lists" (ids), "unsubscribed_globally"}; email or userId is None when it has none."""
        with self._lock:
            return [
                {
                    **profile.identifiers(),
                    "dataFields": json_copy(profile.data),
                    "events": list(profile.events),
                    "lists": self._store.lists_of(profile),
                    "unsubscribed_globally": profile.unsubscribed_globally,
                }
                for profile in self._store.profiles.values()
            ]

    def events(self) -> dict[str, JsonObject]:
        """id -> event (id, its profile's current email and/or userId, eventName, createdAt,
        dataFields...)."""
        with self._lock:
            return {event_id: self._store.event_view(event_id) for event_id in self._store.events}

    def event_writes(self) -> dict[str, int]:
        """How many times each event id was written (a resend with the same id adds one)."""
        with self._lock:
            return dict(self._store.event_writes)

    def duplicate_events(self) -> list[JsonObject]:
        """Logical duplicates: same user, eventName, createdAt and dataFields under several ids."""
        groups: dict[str, list[str]] = {}
        samples: dict[str, JsonObject] = {}
        for event_id, event in self.events().items():
            key_fields = {
                "email": event.get("email"),
                "userId": event.get("userId"),
                "eventName": event.get("eventName"),
                "createdAt": event.get("createdAt"),
                "dataFields": event.get("dataFields"),
            }
            key = json.dumps(key_fields, sort_keys=True)
            groups.setdefault(key, []).append(event_id)
            samples.setdefault(key, key_fields)
        return [{**samples[key], "ids": ids} for key, ids in groups.items() if len(ids) > 1]

    def lists(self) -> list[JsonObject]:
        """Every static list as GET /api/lists shows it (id, name, createdAt, listType...)."""
        with self._lock:
            return [static_list.details() for static_list in self._store.lists.values()]

    def list_members(self, list_id: int) -> list[JsonObject]:
        """{"email", "userId"} of everyone on a list, sorted; ValueError for an unknown list."""
        with self._lock:
            if list_id not in self._store.lists:
                raise ValueError(f"no list with id {list_id}")
            members = [profile.identifiers() for profile in self._store.members(list_id)]
        return sorted(members, key=lambda m: (m["email"] or "", m["userId"] or ""))

    def deleted(self) -> list[JsonObject]:
        """{"email", "userId"} of every profile deleted through the API, in order."""
        with self._lock:
            return json_copy(self._store.deleted)

    def forgotten(self) -> JsonObject:
        """{"emails": [...], "userIds": [...]}: who is GDPR-forgotten (emails lowercased)."""
        with self._lock:
            return {
                "emails": sorted(self._store.forgotten_emails),
                "userIds": sorted(self._store.forgotten_user_ids),
            }

    def channel_unsubscribes(self) -> list[bool | None]:
        """The channelUnsubscribe of every lists/unsubscribe request, None where omitted."""
        with self._lock:
            return list(self._store.channel_unsubscribes)

    def field_types(self) -> JsonObject:
        """The field types fixed so far: {"user": {field: type}, "events": {name: {...}}}."""
        with self._lock:
            return {
                "user": dict(self._store.user_types),
                "events": json_copy(self._store.event_types),
            }

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
                "bulk_batch_sizes": json_copy(self._store.batch_sizes),
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

    # --- programmatic API: changing what is stored ---

    def reset(self) -> None:
        """Empties the store, statistics, faults and forgotten/conflict/not-found sets."""
        self._clear()

    def create_list(self, name: str, description: str | None = None) -> int:
        """Creates a static list, as POST /api/lists does; returns its id."""
        with self._lock:
            created_at = int(time.time() * 1000)
            return self._store.create_list(name, description, created_at).id

    def forget(self, identifier: str) -> None:
        """GDPR-forgets an email or userId: its profile's data goes, later writes are refused."""
        with self._lock:
            self._store.forget(self._store.identity_of(identifier))

    def mark_conflict(self, identifier: str) -> None:
        """User updates about this email or userId fail with an email/userId conflict."""
        with self._lock:
            self._store.conflicts.add(identifier)

    def mark_not_found(self, identifier: str) -> None:
        """Events about this email or userId fail as for a user that does not exist."""
        with self._lock:
            self._store.not_found.add(identifier)

    # --- programmatic API: changing behaviour ---

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
            self._buckets = {
                ep: TokenBucket(rate, self._clock) for ep, rate in (limits or {}).items()
            }

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

    def set_project_type(self, project_type: ProjectType) -> None:
        """hybrid, email or userId; only while nothing is stored, as Iterable never changes it."""
        if project_type not in PROJECT_TYPES:
            raise ValueError(f"unknown project type {project_type!r}, not one of {PROJECT_TYPES}")
        with self._lock:
            if project_type != self._store.project_type and not self._store.is_empty():
                raise ValueError("the project type can only change while the sandbox is empty")
            self._config.project_type = project_type
            self._store.project_type = project_type

    def set_bulk_limits(self, max_items: int | None, too_large_status: int | None = None) -> None:
        """Most items a bulkUpdate/trackBulk may carry (None: no limit) and the status
        (400 or 413) that answers more items or a body over 4 MB; None keeps the status."""
        if max_items is not None and (isinstance(max_items, bool) or max_items < 1):
            raise ValueError("max_bulk_items must be a positive integer or None")
        if too_large_status is not None and too_large_status not in BATCH_TOO_LARGE_STATUSES:
            raise ValueError(f"batch_too_large_status must be one of {BATCH_TOO_LARGE_STATUSES}")
        with self._lock:
            self._config.max_bulk_items = max_items
            if too_large_status is not None:
                self._config.batch_too_large_status = too_large_status

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
        setters: dict[str, Callable[[Any], None]] = {
            "latency": lambda v: self.set_latency(float(v)),
            "latency_ms": lambda v: self.set_latency(float(v) / 1000.0),
            "rate_limits": self.set_rate_limits,
            "retry_after": lambda v: self.set_retry_after(None if v is None else float(v)),
            "rate_limit_body": self.set_rate_limit_body,
            "api_keys": lambda v: self.set_api_keys(valid=list_of_strings(v)),
            "disabled_keys": lambda v: self.set_api_keys(disabled=list_of_strings(v)),
            "forbidden_keys": lambda v: self.set_api_keys(forbidden=list_of_strings(v)),
            "project_type": self.set_project_type,
            "max_bulk_items": lambda v: self.set_bulk_limits(None if v is None else int(v)),
            "batch_too_large_status": lambda v: self.set_bulk_limits(
                self._config.max_bulk_items, int(v)
            ),
            "forgotten": lambda v: for_each(self.forget, v),
            "conflict": lambda v: for_each(self.mark_conflict, v),
            "not_found": lambda v: for_each(self.mark_not_found, v),
        }
        unknown = set(options) - set(setters)
        if unknown:
            raise ValueError(f"unknown config options: {sorted(unknown)}")
        for name, value in options.items():
            setters[name](value)

    # --- request handling ---

    async def _dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response | None:
        """The answer to one request; None means close the connection without one."""
        if request.path.startswith("/_sandbox/"):
            return self._control(request)
        match = match_route(request.method, request.path)
        if match is None:
            self._record("unknown", NOT_FOUND, None, None)
            return NOT_FOUND
        if self._config.latency > 0:
            await asyncio.sleep(self._config.latency)
        fault = self._take_fault(match, request)
        if fault is None:
            response: Response | None = self._process(match, request)
        else:
            response = await self._apply_fault(fault, match, request, reader)
        self._record(match.endpoint, response, fault, request)
        return response

    def _take_fault(self, match: RouteMatch, request: Request) -> FaultRule | None:
        if not self._faults:
            return None
        with self._lock:
            emails: set[str] | None = None
            now = time.monotonic()
            for rule in list(self._faults):
                if not rule.matches_endpoint(match.endpoint):
                    continue
                if rule.over(now):
                    self._faults.remove(rule)
                    continue
                if rule.email is not None:
                    if emails is None:
                        emails = request_emails(match, request)
                    if rule.email not in emails:
                        continue
                if not rule.fires():
                    continue
                rule.started(now)
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._faults.remove(rule)
                self._faults_applied += 1
                return rule
        return None

    async def _apply_fault(
        self, fault: FaultRule, match: RouteMatch, request: Request, reader: asyncio.StreamReader
    ) -> Response | None:
        applied = self._process(match, request) if fault.apply_first else None
        logger.debug(
            "fault %s on %s (applied first: %s)", fault.kind, match.endpoint, fault.apply_first
        )
        if fault.kind == "status":
            return fault.response()
        if fault.kind == "drop":
            return None
        await asyncio.sleep(fault.delay)
        if reader.at_eof():
            # The client gave up while we were slow: a write not yet applied never happens.
            return None
        return applied if applied is not None else self._process(match, request)

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
            sorted(request_emails(RouteMatch(endpoint), request))
            if request is not None and endpoint in (USERS_UPDATE, EVENTS_TRACK)
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

    def _process(self, match: RouteMatch, request: Request) -> Response:
        """Authenticates, rate-limits, validates and applies one API request."""
        with self._lock:
            try:
                self._authorize(request.headers.get("api-key"))
                limited = self._check_rate(match.endpoint)
                if limited is not None:
                    return limited
                return self._handlers.handle(match, request)
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
        if bucket is None or bucket.take():
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

    # --- /_sandbox/ control API ---

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path.removeprefix("/_sandbox/").rstrip("/"))
        try:
            payload = self._control_payload(route, request)
        except (ValueError, TypeError) as exc:
            return json_response(400, {"error": str(exc)})
        except KeyError as exc:
            return json_response(400, {"error": f"{exc} is required"})
        if payload is None:
            return json_response(404, {"error": f"no sandbox route {route[0]} {request.path}"})
        return json_response(200, payload)

    def _control_payload(self, route: tuple[str, str], request: Request) -> JsonObject | None:
        method, path = route
        reads: dict[str, Callable[[], JsonObject]] = {
            "users": lambda: {
                "users": self.users(),
                "userIds": self.user_ids(),
                "writes": self.user_writes(),
            },
            "events": lambda: {"events": self.events(), "writes": self.event_writes()},
            "duplicates": lambda: {"duplicates": self.duplicate_events()},
            "profiles": lambda: {"profiles": self.profiles()},
            "lists": lambda: {"lists": self.lists()},
            "deleted": lambda: {"deleted": self.deleted()},
            "forgotten": self.forgotten,
            "channel_unsubscribes": lambda: {"channelUnsubscribes": self.channel_unsubscribes()},
            "stats": self.stats,
            "requests": lambda: {"requests": self.request_log()},
            "fields": self.field_types,
            "config": self.config,
            "faults": lambda: {"faults": [rule.to_dict() for rule in self.faults()]},
        }
        if method == "GET" and path in reads:
            return reads[path]()
        if method == "GET" and path.startswith("lists/") and path.endswith("/members"):
            list_id = int(path.removeprefix("lists/").removesuffix("/members"))
            return {"members": self.list_members(list_id)}
        return self._control_change(route, control_body(request))

    def _control_change(self, route: tuple[str, str], body: JsonObject) -> JsonObject | None:
        if route == ("POST", "config"):
            self.configure(body)
            return self.config()
        if route == ("POST", "reset"):
            self.reset()
            return {"ok": True}
        if route == ("POST", "lists"):
            return {"listId": self.create_list(body["name"], body.get("description"))}
        if route == ("POST", "forget"):
            self.forget(body["identifier"])
            return {"ok": True}
        if route == ("POST", "faults"):
            return {"fault": self.add_fault(FaultRule.from_dict(body)).to_dict()}
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


def for_each(action: Callable[[str], None], values: Any) -> None:
    for value in list_of_strings(values):
        action(value)


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
