"""Iterable's request validation and error answers, as the sandbox's handlers apply them.

Request schemas are hand-written from Iterable's Swagger definitions; unknown properties are
ignored and null counts as absent, as Iterable does. A body is checked in Iterable's order:
JSON syntax and property types first (400 BadJsonBody), then missing or out-of-range
parameters (400 BadParams); field types fixed by earlier data come last
(400 RequestFieldsTypesMismatched).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sandbox.config import ProjectType
from sandbox.store import value_type
from sandbox.wire import JsonObject, Response, json_response

FieldKind = Literal["string", "integer", "boolean", "object", "array"]

MAX_BULK_BODY_BYTES = 4 * 1024 * 1024
MAX_EVENT_ID_BYTES = 512
EVENT_ID_RE = re.compile(r"[A-Za-z0-9-]+")

# From ApiUserUpdateRequest, OptionalApiUser, TrackRequest, BulkUpdateUsersRequest,
# BulkTrackRequest, UpdateEmailRequest, CreateListRequest, SubscribeRequest,
# UnsubscribeRequest, Unsubscriber and UserRequest.
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
UPDATE_EMAIL_SCHEMA: dict[str, FieldKind] = {
    "currentEmail": "string",
    "currentUserId": "string",
    "newEmail": "string",
}
CREATE_LIST_SCHEMA: dict[str, FieldKind] = {"name": "string", "description": "string"}
SUBSCRIBE_SCHEMA: dict[str, FieldKind] = {
    "listId": "integer",
    "subscribers": "array",
    "updateExistingUsersOnly": "boolean",
}
UNSUBSCRIBE_SCHEMA: dict[str, FieldKind] = {
    "listId": "integer",
    "subscribers": "array",
    "campaignId": "integer",
    "channelUnsubscribe": "boolean",
}
USER_SCHEMA: dict[str, FieldKind] = {"email": "string", "userId": "string"}

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

NOT_BY_EMAIL = "This project identifies users by userId, not by email"

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
    return None if isinstance(value, _KIND_TYPES[kind]) else EXPECTED_VALUE[kind]


_KIND_TYPES: dict[str, type] = {"string": str, "boolean": bool, "object": dict, "array": list}


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


def param_errors(
    item: Mapping[str, Any], path: str, is_event: bool, project_type: ProjectType
) -> dict[str, str]:
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
    elif item.get("email") is not None and project_type == "userId":
        errors[f"{path}.email"] = NOT_BY_EMAIL
    return errors


def valid_event_id(event_id: str) -> bool:
    return bool(EVENT_ID_RE.fullmatch(event_id)) and len(event_id.encode()) <= MAX_EVENT_ID_BYTES


def parse_shape(body: bytes, schema: Mapping[str, FieldKind]) -> JsonObject:
    """A JSON object whose properties have the types the schema says, or 400 BadJsonBody."""
    obj = parse_object(body)
    errors: dict[str, str] = {}
    check_shape(obj, schema, "obj", errors)
    if errors:
        raise bad_json(errors)
    return obj


def parse_single(
    body: bytes, schema: Mapping[str, FieldKind], is_event: bool, project_type: ProjectType
) -> JsonObject:
    """The body of a single-record request, or ApiError (BadJsonBody first, then BadParams)."""
    obj = parse_shape(body, schema)
    if problems := param_errors(obj, "obj", is_event, project_type):
        raise bad_params(problems)
    return obj


def parse_batch(
    body: bytes,
    list_name: str,
    schema: Mapping[str, FieldKind],
    item_schema: Mapping[str, FieldKind],
    is_event: bool,
    project_type: ProjectType,
    required: Sequence[str] = (),
) -> tuple[JsonObject, list[JsonObject]]:
    """The body of a bulk request and its items; one malformed item fails the whole request."""
    obj = parse_object(body)
    errors: dict[str, str] = {}
    check_shape(obj, schema, "obj", errors)
    raw_items = obj.get(list_name)
    items: list[JsonObject] = []
    if isinstance(raw_items, list):
        for index, item in enumerate(raw_items):
            if isinstance(item, dict):
                check_shape(item, item_schema, f"obj.{list_name}[{index}]", errors)
                items.append(item)
            else:
                errors[f"obj.{list_name}[{index}]"] = EXPECTED_VALUE["object"]
    if errors:
        raise bad_json(errors)
    require(obj, *required, list_name)
    problems: dict[str, str] = {}
    for index, item in enumerate(items):
        if found := param_errors(item, f"obj.{list_name}[{index}]", is_event, project_type):
            problems.update(found)
    if problems:
        raise bad_params(problems)
    return obj, items


def require(obj: Mapping[str, Any], *names: str) -> None:
    """400 BadParams naming every one of these properties that is missing (or null)."""
    missing = {f"obj.{name}": f"{name} is required" for name in names if obj.get(name) is None}
    if missing:
        raise bad_params(missing)


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


def failure_lists(names: Sequence[str] = USER_FAILURE_LISTS) -> dict[str, list[str]]:
    return {name: [] for name in names}


def bulk_result(
    success: int,
    failed: dict[str, list[str]],
    created: Iterable[str] = (),
    filtered: Iterable[str] = (),
) -> JsonObject:
    """A bulk answer: counts, and the failed items named by email or userId, not position."""
    return {
        "successCount": success,
        "failCount": sum(len(names) for names in failed.values()),
        # Deprecated top-level copies that Iterable still sends.
        "invalidEmails": failed["invalidEmails"],
        "invalidUserIds": failed["invalidUserIds"],
        "failedUpdates": failed,
        "createdFields": sorted(set(created)),
        "filteredOutFields": sorted(set(filtered)),
    }
