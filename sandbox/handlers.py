"""Iterable's API as the sandbox answers it: request validation and one handler per endpoint.

Handlers run with the sandbox's lock held, after authentication and rate limiting; they read
and change the Store and answer a Response, or raise ApiError for an Iterable error answer.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qs

from sandbox.config import (
    EVENTS_TRACK,
    EVENTS_TRACK_BULK,
    USERS_BULK_UPDATE,
    USERS_GET_BY_EMAIL,
    USERS_UPDATE,
)
from sandbox.store import EMAIL_RE, Identity, Store, merge_fields, value_type
from sandbox.wire import SUCCESS, JsonObject, Request, Response, json_response

FieldKind = Literal["string", "integer", "boolean", "object", "array"]

MAX_BULK_BODY_BYTES = 4 * 1024 * 1024
MAX_EVENT_ID_BYTES = 512

API_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/users/update"): USERS_UPDATE,
    ("POST", "/api/events/track"): EVENTS_TRACK,
    ("POST", "/api/users/bulkUpdate"): USERS_BULK_UPDATE,
    ("POST", "/api/events/trackBulk"): EVENTS_TRACK_BULK,
    ("GET", "/api/users/getByEmail"): USERS_GET_BY_EMAIL,
}

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


# --- Field types ----------------------------------------------------------------------------


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


# --- Handlers -------------------------------------------------------------------------------


class Handlers:
    """One handler per endpoint, reading and writing one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def handle(self, endpoint: str, request: Request) -> Response:
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
        if identity.value in self.store.forgotten:
            return "forgotten"
        if not is_event and identity.value in self.store.conflicts:
            return "conflict"
        if is_event and identity.value in self.store.not_found:
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
            item.get("dataFields") or {}, self.store.user_types, item.get("createNewFields"), set()
        )
        check_field_types(self.store.user_types, pending, data, "user", mismatches)
        if mismatches:
            raise types_mismatched(mismatches)
        self.store.user_types.update(pending)
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
                item.get("dataFields") or {},
                self.store.user_types,
                obj.get("createNewFields"),
                filtered,
            )
            check_field_types(self.store.user_types, pending, data, "user", mismatches)
            accepted.append((identity, data, bool(item.get("mergeNestedObjects"))))
        if mismatches:
            raise types_mismatched(mismatches)
        self.store.user_types.update(pending)
        for identity, data, merge_nested in accepted:
            self._write_user(identity, data, merge_nested)
        self.store.batch_sizes[USERS_BULK_UPDATE].append(len(items))
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
        self.store.batch_sizes[EVENTS_TRACK_BULK].append(len(items))
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
        profile = self.store.users.get(("email", email))
        if profile is None or email in self.store.forgotten:
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
        known = self.store.event_types.get(name, {})
        data = filter_new_fields(item.get("dataFields") or {}, known, create_new, filtered)
        check_field_types(known, pending.setdefault(name, {}), data, "event", mismatches)
        return data

    def _commit_event_types(self, pending: Mapping[str, Mapping[str, str]]) -> None:
        for name, types in pending.items():
            if types:
                self.store.event_types.setdefault(name, {}).update(types)

    def _write_user(self, identity: Identity, data: JsonObject, merge_nested: bool) -> None:
        key = (identity.kind, identity.value)
        merge_fields(self.store.users.setdefault(key, {}), data, merge_nested)
        self.store.user_writes[key] += 1

    def _write_event(self, identity: Identity, item: JsonObject, data: JsonObject) -> str:
        """Stores an event under its id, replacing an earlier one with that id."""
        event_id = item.get("id") or uuid.uuid4().hex
        event: JsonObject = {"id": event_id, identity.kind: identity.value}
        event["eventName"] = item["eventName"]
        for name in ("createdAt", "campaignId", "templateId"):
            if item.get(name) is not None:
                event[name] = int(item[name])
        event["dataFields"] = copy.deepcopy(data)
        self.store.events[event_id] = event
        self.store.event_writes[event_id] += 1
        return event_id

    # --- /_sandbox/ control API ---
