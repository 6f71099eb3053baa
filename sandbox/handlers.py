"""Iterable's endpoints as the sandbox answers them: the route table and one handler per endpoint.

Handlers run with the sandbox's lock held, after authentication and rate limiting; they read
and change the Store and answer a Response, or raise ApiError for an Iterable error answer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, unquote

from sandbox.config import (
    EVENTS_TRACK,
    EVENTS_TRACK_BULK,
    LISTS,
    LISTS_CREATE,
    LISTS_SUBSCRIBE,
    LISTS_UNSUBSCRIBE,
    USERS_BULK_UPDATE,
    USERS_DELETE,
    USERS_FORGET,
    USERS_FORGOTTEN,
    USERS_GET,
    USERS_GET_BY_EMAIL,
    USERS_GET_BY_USER_ID,
    USERS_GET_FIELDS,
    USERS_UPDATE,
    USERS_UPDATE_EMAIL,
    SandboxConfig,
)
from sandbox.store import (
    EMAIL_RE,
    Identity,
    Profile,
    StaticList,
    Store,
    email_hash,
    merge_fields,
)
from sandbox.validation import (
    BULK_EVENTS_SCHEMA,
    BULK_USER_SCHEMA,
    BULK_USERS_SCHEMA,
    CREATE_LIST_SCHEMA,
    EVENT_FAILURE_LISTS,
    MAX_BULK_BODY_BYTES,
    NOT_BY_EMAIL,
    SUBSCRIBE_SCHEMA,
    TRACK_SCHEMA,
    UNSUBSCRIBE_SCHEMA,
    UPDATE_EMAIL_SCHEMA,
    USER_SCHEMA,
    USER_UPDATE_SCHEMA,
    ApiError,
    FieldKind,
    bad_params,
    bulk_result,
    check_field_types,
    failure_lists,
    filter_new_fields,
    parse_batch,
    parse_shape,
    parse_single,
    require,
    types_mismatched,
)
from sandbox.wire import SUCCESS, JsonObject, Request, Response, json_response

MAX_USER_ID_CHARS = 52


# --- Routes ---------------------------------------------------------------------------------


class Route(NamedTuple):
    method: str
    path: str  # as Iterable's spec spells it: "{email}" or "{userId}" for a path parameter
    endpoint: str


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/users/update", USERS_UPDATE),
    Route("POST", "/api/events/track", EVENTS_TRACK),
    Route("POST", "/api/users/bulkUpdate", USERS_BULK_UPDATE),
    Route("POST", "/api/events/trackBulk", EVENTS_TRACK_BULK),
    Route("GET", "/api/users/getByEmail", USERS_GET_BY_EMAIL),
    Route("GET", "/api/users/getFields", USERS_GET_FIELDS),
    Route("GET", "/api/users/{email}", USERS_GET),
    Route("GET", "/api/users/byUserId/{userId}", USERS_GET_BY_USER_ID),
    Route("POST", "/api/users/updateEmail", USERS_UPDATE_EMAIL),
    Route("DELETE", "/api/users/{email}", USERS_DELETE),
    Route("DELETE", "/api/users/byUserId/{userId}", USERS_DELETE),
    Route("GET", "/api/users/forgotten", USERS_FORGOTTEN),
    Route("POST", "/api/users/forget", USERS_FORGET),
    Route("GET", "/api/lists", LISTS),
    Route("POST", "/api/lists", LISTS_CREATE),
    Route("POST", "/api/lists/subscribe", LISTS_SUBSCRIBE),
    Route("POST", "/api/lists/unsubscribe", LISTS_UNSUBSCRIBE),
)

LITERAL_PATHS = frozenset(route.path for route in ROUTES if "{" not in route.path)
# A path parameter never takes a name another route spells at that place ("update",
# "byUserId", ...): GET /api/users/update is a wrong method, not a user called "update".
RESERVED_SEGMENTS: dict[int, frozenset[str]] = {
    index: frozenset(
        route.path.split("/")[index]
        for route in ROUTES
        if len(route.path.split("/")) > index and "{" not in route.path.split("/")[index]
    )
    for index in range(max(len(route.path.split("/")) for route in ROUTES))
}


class RouteMatch(NamedTuple):
    endpoint: str
    param: str | None = None  # "email" or "userId" when the path carries one
    value: str | None = None  # that parameter, percent-decoded


def match_route(method: str, path: str) -> RouteMatch | None:
    """The endpoint a request goes to, or None (Iterable's HTML 404) for an unknown route."""
    if path in LITERAL_PATHS:
        for route in ROUTES:
            if route.path == path and route.method == method:
                return RouteMatch(route.endpoint)
        return None
    segments = path.split("/")
    for route in ROUTES:
        if route.method == method and "{" in route.path:
            match = match_segments(route, segments)
            if match is not None:
                return match
    return None


def match_segments(route: Route, segments: list[str]) -> RouteMatch | None:
    pattern = route.path.split("/")
    if len(pattern) != len(segments):
        return None
    found: RouteMatch | None = RouteMatch(route.endpoint)
    for index, (want, got) in enumerate(zip(pattern, segments, strict=True)):
        if want.startswith("{"):
            if not got or got in RESERVED_SEGMENTS[index]:
                return None
            found = RouteMatch(route.endpoint, want.strip("{}"), unquote(got))
        elif want != got:
            return None
    return found


def request_emails(match: RouteMatch, request: Request) -> set[str]:
    """The emails a request is about, for faults narrowed to one email."""
    if match.param == "email" and match.value is not None:
        return {match.value}
    if match.endpoint == USERS_GET_BY_EMAIL:
        return set(parse_qs(request.query).get("email", []))
    try:
        data = json.loads(request.body)
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    items = data.get("users") or data.get("events") or data.get("subscribers") or [data]
    if not isinstance(items, list):
        return set()
    emails = {
        item["email"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("email"), str)
    }
    emails.update(data[name] for name in ("currentEmail", "newEmail") if name in data)
    return {email for email in emails if isinstance(email, str)}


# --- Refusals -------------------------------------------------------------------------------


# conflict: marked by a test (mark_conflict); taken: an email another profile has.
RefusalReason = Literal["invalid", "forgotten", "conflict", "taken", "notFound", "invalidData"]


class Refusal(NamedTuple):
    """Why a write about one user is refused: answered alone, or listed in a bulk answer."""

    reason: RefusalReason
    identity: Identity

    def failure_list(self) -> str:
        """The failedUpdates list that names the refused user, e.g. forgottenEmails."""
        return self.identity.failure_list("conflict" if self.reason == "taken" else self.reason)

    def error(self) -> ApiError:
        """The answer of a single-user endpoint."""
        value, by_email = self.identity.value, self.identity.by_email
        if self.reason == "invalid" and by_email:
            return ApiError(400, "InvalidEmailAddressError", f"Invalid email: {value}")
        if self.reason == "invalid":
            return ApiError(400, "InvalidUserIdError", f"Invalid userId: {value}")
        if self.reason == "forgotten":
            return ApiError(409, "ForgottenUserError", f"User {value} was forgotten (GDPR)")
        if self.reason == "conflict":
            return ApiError(409, "ExternalKeyConflict", f"Email and userId conflict for {value}")
        if self.reason == "taken":
            return ApiError(409, "EmailAlreadyExists", f"Another user has the email {value}")
        if self.reason == "notFound":
            code = "UnknownEmailError" if by_email else "UnknownUserIdError"
            return ApiError(400, code, f"No user exists with {self.identity.kind} {value}")
        return bad_params(
            {"obj.dataFields.email": "differs from email; change an email with users/updateEmail"}
        )


def valid_user_id(user_id: str) -> bool:
    """Iterable's userId: 1 to 52 printable ASCII characters, no trailing space."""
    return (
        bool(user_id.strip())
        and len(user_id) <= MAX_USER_ID_CHARS
        and user_id.isascii()
        and user_id.isprintable()
        and user_id == user_id.rstrip()
    )


class UserWrite(NamedTuple):
    identity: Identity
    data: JsonObject
    merge_nested: bool
    new_email: str | None  # dataFields.email: the email the profile is to have


class UserBatch(NamedTuple):
    """A batch of user updates, checked: what to write, who failed, which fields are new."""

    writes: list[UserWrite]
    failed: dict[str, list[str]]
    created: dict[str, str]  # field types the batch fixes
    filtered: set[str]  # fields dropped because createNewFields was false


class EventWrite(NamedTuple):
    identity: Identity
    item: JsonObject
    data: JsonObject


Handler = Callable[[Request, RouteMatch], Response]


# --- Handlers -------------------------------------------------------------------------------


class Handlers:
    """One handler per endpoint, reading and writing one Store."""

    def __init__(
        self, store: Store, config: SandboxConfig, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config
        self._wall_clock = wall_clock
        self._handlers: dict[str, Handler] = {
            USERS_UPDATE: self._users_update,
            EVENTS_TRACK: self._events_track,
            USERS_BULK_UPDATE: self._users_bulk_update,
            EVENTS_TRACK_BULK: self._events_track_bulk,
            USERS_GET_BY_EMAIL: self._get_by_email,
            USERS_GET: self._get_user,
            USERS_GET_BY_USER_ID: self._get_user,
            USERS_GET_FIELDS: self._get_fields,
            USERS_UPDATE_EMAIL: self._update_email,
            USERS_DELETE: self._delete_user,
            USERS_FORGOTTEN: self._forgotten,
            USERS_FORGET: self._forget,
            LISTS: self._get_lists,
            LISTS_CREATE: self._create_list,
            LISTS_SUBSCRIBE: self._subscribe,
            LISTS_UNSUBSCRIBE: self._unsubscribe,
        }

    def handle(self, match: RouteMatch, request: Request) -> Response:
        return self._handlers[match.endpoint](request, match)

    # --- who a request is about ---

    def _identity_refusal(self, identity: Identity) -> Refusal | None:
        if identity.by_email and not EMAIL_RE.fullmatch(identity.value):
            return Refusal("invalid", identity)
        if not identity.by_email and not valid_user_id(identity.value):
            return Refusal("invalid", identity)
        if self.store.is_forgotten(identity):
            return Refusal("forgotten", identity)
        return None

    def _write_refusal(
        self, identity: Identity, *, is_event: bool, may_create: bool
    ) -> Refusal | None:
        """Why Iterable would refuse a user update or event about this identity."""
        refusal = self._identity_refusal(identity)
        if refusal is not None:
            return refusal
        if not is_event and identity.value in self.store.conflicts:
            return Refusal("conflict", identity)
        if is_event and identity.value in self.store.not_found:
            return Refusal("notFound", identity)
        if not may_create and self.store.find(identity) is None:
            return Refusal("notFound", identity)
        return None

    def _may_create(self, identity: Identity, prefer_user_id: bool = False) -> bool:
        """Whether a write about an unknown user creates the profile.

        In an email-based project a userId alone creates nobody, unless preferUserId says so.
        """
        return identity.by_email or self.store.project_type != "email" or prefer_user_id

    def _email_refusal(self, identity: Identity, new_email: Any) -> Refusal | None:
        """Why dataFields.email cannot become the email of the profile identity names."""
        if new_email is None:
            return None
        if not isinstance(new_email, str) or not EMAIL_RE.fullmatch(new_email):
            return Refusal("invalid", Identity("email", str(new_email)))
        if identity.by_email:
            # The email is the key here: moving a profile to another is users/updateEmail's job.
            return None if new_email == identity.value else Refusal("invalidData", identity)
        target = Identity("email", new_email)
        if self.store.is_forgotten(target):
            return Refusal("forgotten", target)
        owner = self.store.email_owner(new_email)
        if owner is not None and owner is not self.store.find(identity):
            return Refusal("taken", target)
        return None

    def _lookup_identity(self, identity: Identity) -> None:
        """Refuses a read or delete by an identifier Iterable would not accept."""
        if identity.by_email and self.store.project_type == "userId":
            raise bad_params({"email": NOT_BY_EMAIL})
        refusal = self._identity_refusal(identity)
        if refusal is not None and refusal.reason == "invalid":
            raise refusal.error()

    # --- user updates ---

    def _check_user(
        self,
        item: JsonObject,
        create_new: bool | None,
        pending: dict[str, str],
        mismatches: JsonObject,
        filtered: set[str],
        existing_only: bool = False,
    ) -> UserWrite | Refusal:
        """A user update checked against the store; types it would fix go to pending."""
        identity = Identity.of(item)
        may_create = not existing_only and self._may_create(
            identity, bool(item.get("preferUserId"))
        )
        refusal = self._write_refusal(identity, is_event=False, may_create=may_create)
        if refusal is not None:
            return refusal
        data = dict(item.get("dataFields") or {})
        new_email = data.pop("email", None)
        refusal = self._email_refusal(identity, new_email)
        if refusal is not None:
            return refusal
        data = filter_new_fields(data, self.store.user_types, create_new, filtered)
        check_field_types(self.store.user_types, pending, data, "user", mismatches)
        return UserWrite(identity, data, bool(item.get("mergeNestedObjects")), new_email)

    def _check_users(
        self, items: Iterable[JsonObject], create_new: bool | None, existing_only: bool = False
    ) -> UserBatch:
        """Checks every user of a bulk or list request; a type clash fails the whole request.

        Refused users go to the batch's failed lists; the types the others fix are fixed.
        """
        batch = UserBatch([], failure_lists(), {}, set())
        mismatches: JsonObject = {}
        for item in items:
            checked = self._check_user(
                item, create_new, batch.created, mismatches, batch.filtered, existing_only
            )
            if isinstance(checked, Refusal):
                batch.failed[checked.failure_list()].append(checked.identity.value)
            else:
                batch.writes.append(checked)
        if mismatches:
            raise types_mismatched(mismatches)
        self.store.fix_user_types(batch.created, (write.data for write in batch.writes))
        return batch

    def _write_user(self, write: UserWrite, counted: bool = True) -> Profile | Refusal:
        # Checked again: an earlier user of the same batch may have taken the email since.
        refusal = self._email_refusal(write.identity, write.new_email)
        if refusal is not None:
            return refusal
        profile = self.store.find_or_create(write.identity)
        if write.new_email is not None and profile.email != write.new_email:
            self.store.set_email(profile, write.new_email)
        merge_fields(profile.data, write.data, write.merge_nested)
        if counted:
            profile.writes += 1
        return profile

    def _write_users(
        self, writes: Iterable[UserWrite], failed: dict[str, list[str]], counted: bool = True
    ) -> list[Profile]:
        """Applies checked updates in order; the ones refused now are added to failed."""
        profiles: list[Profile] = []
        for write in writes:
            written = self._write_user(write, counted)
            if isinstance(written, Refusal):
                failed[written.failure_list()].append(written.identity.value)
            else:
                profiles.append(written)
        return profiles

    def _users_update(self, request: Request, match: RouteMatch) -> Response:
        item = parse_single(request.body, USER_UPDATE_SCHEMA, False, self.store.project_type)
        pending: dict[str, str] = {}
        mismatches: JsonObject = {}
        checked = self._check_user(item, item.get("createNewFields"), pending, mismatches, set())
        if isinstance(checked, Refusal):
            raise checked.error()
        if mismatches:
            raise types_mismatched(mismatches)
        self.store.fix_user_types(pending, [checked.data])
        written = self._write_user(checked)
        if isinstance(written, Refusal):
            raise written.error()
        return SUCCESS

    def _users_bulk_update(self, request: Request, match: RouteMatch) -> Response:
        self._check_body_size(request)
        obj, items = parse_batch(
            request.body,
            "users",
            BULK_USERS_SCHEMA,
            BULK_USER_SCHEMA,
            False,
            self.store.project_type,
        )
        self._check_item_count(len(items))
        batch = self._check_users(items, obj.get("createNewFields"))
        written = self._write_users(batch.writes, batch.failed)
        self.store.batch_sizes[USERS_BULK_UPDATE].append(len(items))
        result = bulk_result(len(written), batch.failed, batch.created, batch.filtered)
        return json_response(200, result)

    def _update_email(self, request: Request, match: RouteMatch) -> Response:
        """Moves a profile, with its data, events and lists, to a new email."""
        obj = parse_shape(request.body, UPDATE_EMAIL_SCHEMA)
        require(obj, "newEmail")
        if obj.get("currentEmail") is None and obj.get("currentUserId") is None:
            raise bad_params({"obj": "One of currentEmail or currentUserId must be given"})
        if self.store.project_type == "userId":
            raise bad_params({"obj": "In a userID-based project change an email with users/update"})
        # Iterable: with both given, currentEmail wins.
        current = (
            Identity("email", obj["currentEmail"])
            if obj.get("currentEmail") is not None
            else Identity("userId", obj["currentUserId"])
        )
        new_email: str = obj["newEmail"]
        refusal = self._identity_refusal(current) or self._identity_refusal(
            Identity("email", new_email)
        )
        if refusal is not None:
            raise refusal.error()
        profile = self.store.find(current)
        if profile is None:
            raise Refusal("notFound", current).error()
        owner = self.store.email_owner(new_email)
        if owner is not None and owner is not profile:
            raise ApiError(409, "EmailAlreadyExists", f"A user with email {new_email} exists")
        self.store.set_email(profile, new_email)
        return SUCCESS

    # --- events ---

    def _check_event(
        self,
        item: JsonObject,
        pending: dict[str, dict[str, str]],
        mismatches: JsonObject,
        filtered: set[str],
    ) -> EventWrite | Refusal:
        identity = Identity.of(item)
        refusal = self._write_refusal(
            identity, is_event=True, may_create=self._may_create(identity)
        )
        if refusal is not None:
            return refusal
        name = item["eventName"]
        known = self.store.event_types.get(name, {})
        data = filter_new_fields(
            item.get("dataFields") or {}, known, item.get("createNewFields"), filtered
        )
        check_field_types(known, pending.setdefault(name, {}), data, "event", mismatches)
        return EventWrite(identity, item, data)

    def _commit_event_types(self, pending: dict[str, dict[str, str]]) -> None:
        for name, types in pending.items():
            if types:
                self.store.event_types.setdefault(name, {}).update(types)

    def _write_event(self, write: EventWrite) -> str:
        """Stores an event under its id, replacing an earlier one with that id."""
        item = write.item
        event_id = item.get("id") or uuid.uuid4().hex
        fields: JsonObject = {"id": event_id, "eventName": item["eventName"]}
        for name in ("createdAt", "campaignId", "templateId"):
            if item.get(name) is not None:
                fields[name] = int(item[name])
        fields["dataFields"] = write.data
        profile = self.store.find_or_create(write.identity)
        # fields is new and its dataFields are this request's own: nothing else holds them.
        self.store.put_event(profile, event_id, fields)
        return event_id

    def _events_track(self, request: Request, match: RouteMatch) -> Response:
        item = parse_single(request.body, TRACK_SCHEMA, True, self.store.project_type)
        pending: dict[str, dict[str, str]] = {}
        mismatches: JsonObject = {}
        checked = self._check_event(item, pending, mismatches, set())
        if isinstance(checked, Refusal):
            raise checked.error()
        if mismatches:
            raise types_mismatched(mismatches)
        self._commit_event_types(pending)
        event_id = self._write_event(checked)
        return json_response(200, {"msg": "", "code": "Success", "params": {"id": event_id}})

    def _events_track_bulk(self, request: Request, match: RouteMatch) -> Response:
        self._check_body_size(request)
        _, items = parse_batch(
            request.body, "events", BULK_EVENTS_SCHEMA, TRACK_SCHEMA, True, self.store.project_type
        )
        self._check_item_count(len(items))
        failed = failure_lists(EVENT_FAILURE_LISTS)
        pending: dict[str, dict[str, str]] = {}
        mismatches: JsonObject = {}
        filtered: set[str] = set()
        writes: list[EventWrite] = []
        for item in items:
            checked = self._check_event(item, pending, mismatches, filtered)
            if isinstance(checked, Refusal):
                failed[checked.failure_list()].append(checked.identity.value)
            else:
                writes.append(checked)
        if mismatches:
            raise types_mismatched(mismatches)
        self._commit_event_types(pending)
        for write in writes:
            self._write_event(write)
        self.store.batch_sizes[EVENTS_TRACK_BULK].append(len(items))
        created = [name for types in pending.values() for name in types]
        result = bulk_result(len(writes), failed, created, filtered)
        result["disallowedEventNames"] = []
        return json_response(200, result)

    # --- reading and deleting users ---

    def _get_by_email(self, request: Request, match: RouteMatch) -> Response:
        email = parse_qs(request.query).get("email", [""])[0]
        if not email:
            raise bad_params({"email": "email is required"})
        return self._user_answer(Identity("email", email))

    def _get_user(self, request: Request, match: RouteMatch) -> Response:
        return self._user_answer(path_identity(match))

    def _user_answer(self, identity: Identity) -> Response:
        """{"user": ...} for a known user; {} for an unknown or forgotten one, as Iterable."""
        self._lookup_identity(identity)
        profile = self.store.find(identity)
        if profile is None:
            return json_response(200, {})
        return json_response(200, {"user": profile.api_user()})

    def _get_fields(self, request: Request, match: RouteMatch) -> Response:
        return json_response(200, {"fields": self.store.api_fields()})

    def _delete_user(self, request: Request, match: RouteMatch) -> Response:
        identity = path_identity(match)
        self._lookup_identity(identity)
        profile = self.store.find(identity)
        if profile is None:
            raise ApiError(400, "NotFound", f"No user exists with {identity.kind} {identity.value}")
        self.store.delete(profile)
        return SUCCESS

    def _forgotten(self, request: Request, match: RouteMatch) -> Response:
        if self.store.project_type == "userId":
            raise bad_params({"projectType": "Only email-based and hybrid projects have these"})
        hashes = sorted(email_hash(email) for email in self.store.forgotten_emails)
        return json_response(200, {"hashedEmails": hashes})

    def _forget(self, request: Request, match: RouteMatch) -> Response:
        item = parse_single(request.body, USER_SCHEMA, False, self.store.project_type)
        identity = Identity.of(item)
        refusal = self._identity_refusal(identity)
        if refusal is not None and refusal.reason == "invalid":
            raise refusal.error()
        self.store.forget(identity)
        return SUCCESS

    # --- lists ---

    def _get_lists(self, request: Request, match: RouteMatch) -> Response:
        lists = [static_list.details() for static_list in self.store.lists.values()]
        return json_response(200, {"lists": lists})

    def _create_list(self, request: Request, match: RouteMatch) -> Response:
        obj = parse_shape(request.body, CREATE_LIST_SCHEMA)
        require(obj, "name")
        if not obj["name"].strip():
            raise bad_params({"obj.name": "name must not be empty"})
        created_at = int(self._wall_clock() * 1000)
        static_list = self.store.create_list(obj["name"], obj.get("description"), created_at)
        return json_response(200, {"listId": static_list.id})

    def _list_request(
        self,
        request: Request,
        schema: Mapping[str, FieldKind],
        item_schema: Mapping[str, FieldKind],
    ) -> tuple[JsonObject, list[JsonObject], StaticList]:
        """The body of a subscribe or unsubscribe request, its subscribers and its list."""
        obj, items = parse_batch(
            request.body,
            "subscribers",
            schema,
            item_schema,
            False,
            self.store.project_type,
            required=("listId",),
        )
        list_id = int(obj["listId"])
        static_list = self.store.lists.get(list_id)
        if static_list is None:
            raise bad_params({"obj.listId": f"No list with id {list_id}"})
        return obj, items, static_list

    def _subscribe(self, request: Request, match: RouteMatch) -> Response:
        """Adds users to a static list, creating unknown ones unless updateExistingUsersOnly."""
        obj, items, static_list = self._list_request(request, SUBSCRIBE_SCHEMA, BULK_USER_SCHEMA)
        # Iterable respects updateExistingUsersOnly in userID-based and hybrid projects only.
        existing_only = bool(obj.get("updateExistingUsersOnly"))
        existing_only = existing_only and self.store.project_type != "email"
        batch = self._check_users(items, None, existing_only)
        profiles = self._write_users(batch.writes, batch.failed, counted=False)
        for profile in profiles:
            static_list.members[profile.key] = None
        result = bulk_result(len(profiles), batch.failed, batch.created, batch.filtered)
        return json_response(200, result)

    def _unsubscribe(self, request: Request, match: RouteMatch) -> Response:
        """Removes users from a static list; someone not on it counts as removed."""
        obj, items, static_list = self._list_request(request, UNSUBSCRIBE_SCHEMA, USER_SCHEMA)
        channel_unsubscribe = obj.get("channelUnsubscribe")
        self.store.channel_unsubscribes.append(channel_unsubscribe)
        failed = failure_lists()
        removed = 0
        for item in items:
            identity = Identity.of(item)
            refusal = self._identity_refusal(identity)
            profile = None if refusal else self.store.find(identity)
            if profile is None:
                refusal = refusal or Refusal("notFound", identity)
                failed[refusal.failure_list()].append(identity.value)
                continue
            static_list.members.pop(profile.key, None)
            # Iterable's default is disputed (false in the spec, true in practice): an
            # omitted value counts as the global unsubscribe it may well be.
            if channel_unsubscribe is not False:
                profile.unsubscribed_globally = True
            removed += 1
        return json_response(200, bulk_result(removed, failed))

    # --- oversized bulk requests ---

    def _check_body_size(self, request: Request) -> None:
        if len(request.body) > MAX_BULK_BODY_BYTES:
            raise self._batch_too_large(f"Request body is larger than {MAX_BULK_BODY_BYTES} bytes")

    def _check_item_count(self, count: int) -> None:
        limit = self.config.max_bulk_items
        if limit is not None and count > limit:
            raise self._batch_too_large(f"At most {limit} items a request, got {count}")

    def _batch_too_large(self, msg: str) -> ApiError:
        return ApiError(self.config.batch_too_large_status, "BatchTooLarge", msg)


def path_identity(match: RouteMatch) -> Identity:
    assert match.value is not None, "a route without a path parameter"
    if match.param == "email":
        return Identity("email", match.value)
    return Identity("userId", match.value)
