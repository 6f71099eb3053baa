"""The sandbox against Iterable's own Swagger spec: every route it serves, every answer's shape.

The spec subset lives outside the repository, beside it in shared/iterable/; without it these
tests skip. Each call is checked three ways: the body sent fits (or, where meant to be
malformed, does not fit) the operation's request schema; the status is one the spec documents
for that operation; the JSON answer fits the documented response schema (error answers, which
the spec gives no schema, fit IterableApiResponse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests

from sandbox import DEFAULT_API_KEY, ENDPOINTS, ROUTES, SandboxServer

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "iterable" / "iterable-api-subset.json"
ERROR_SCHEMA = {"$ref": "#/definitions/IterableApiResponse"}
# Documented statuses the sandbox has no way to answer: listing lists cannot go wrong.
UNREACHABLE = {("GET", "/api/lists"): {"400"}}
# Statuses the sandbox answers that the spec does not list for the operation: a forgotten
# user's event is refused with 409, like every other single write about that user.
UNDOCUMENTED = {("POST", "/api/events/track"): {"409"}}

Spec = dict[str, Any]

# Not in the spec subset: users/getFields, described by the shape of recorded answers
# (shared/iterable/NOTES.md), with the field types seen there.
GET_FIELDS = "/api/users/getFields"
RECORDED_OPERATIONS: Spec = {
    GET_FIELDS: {
        "get": {
            "parameters": [],
            "responses": {
                "200": {
                    "schema": {
                        "type": "object",
                        "required": ["fields"],
                        "properties": {
                            "fields": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "string",
                                    "enum": [
                                        "string",
                                        "long",
                                        "double",
                                        "boolean",
                                        "date",
                                        "object",
                                    ],
                                },
                            }
                        },
                    }
                },
                "401": {"description": "Invalid API key"},
            },
        }
    }
}


@pytest.fixture(scope="module")
def spec() -> Spec:
    if not SPEC_PATH.exists():
        pytest.skip(f"Iterable's spec subset is not at {SPEC_PATH}")
    spec = dict(json.loads(SPEC_PATH.read_text(encoding="utf-8")))
    spec["paths"] = {**spec["paths"], **RECORDED_OPERATIONS}
    return spec


# --- a Swagger 2.0 subset validator ----------------------------------------------------------


def resolve(spec: Spec, schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        schema = spec["definitions"][name]
    return schema


def schema_errors(value: Any, schema: dict[str, Any], spec: Spec, path: str = "$") -> list[str]:
    """Where value breaks the schema (type, required, properties, additionalProperties,
    items, enum, uniqueItems).

    An optional property may be null: Iterable answers "params": null where the spec says
    object. Formats (int32, int64) are not checked: Iterable's own epoch milliseconds
    overflow the int32 the spec gives ListDetails.createdAt.
    """
    schema = resolve(spec, schema)
    kind = schema.get("type", "object" if "properties" in schema else None)
    checks = {
        "object": lambda: isinstance(value, dict),
        "array": lambda: isinstance(value, list),
        "string": lambda: isinstance(value, str),
        "integer": lambda: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda: isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": lambda: isinstance(value, bool),
    }
    if kind is not None and not checks[kind]():
        return [f"{path}: {kind} expected, got {value!r}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not one of {schema['enum']}")
    if kind == "object":
        errors += [
            f"{path}.{name}: required" for name in schema.get("required", ()) if name not in value
        ]
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if value.get(name) is not None:
                errors += schema_errors(value[name], sub, spec, f"{path}.{name}")
        if "additionalProperties" in schema:
            for name in value.keys() - properties.keys():
                sub = schema["additionalProperties"]
                errors += schema_errors(value[name], sub, spec, f"{path}.{name}")
    if kind == "array":
        for index, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), spec, f"{path}[{index}]")
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) != len(value):
            errors.append(f"{path}: items are not unique")
    return errors


def test_the_validator_catches_what_it_should(spec: Spec) -> None:
    track = {"$ref": "#/definitions/TrackRequest"}
    answer = {"$ref": "#/definitions/UserBulkUpdateListResponse"}

    assert schema_errors({"eventName": "a", "createdAt": 1}, track, spec) == []
    assert schema_errors({"createdAt": "x"}, track, spec) == [
        "$.eventName: required",
        "$.createdAt: integer expected, got 'x'",
    ]
    assert schema_errors({"successCount": 1, "failCount": True}, answer, spec) == [
        "$.failCount: integer expected, got True"
    ]
    assert schema_errors({"code": "Fine", "msg": ""}, ERROR_SCHEMA, spec) == [
        "$.code: 'Fine' not one of "
        + str(resolve(spec, ERROR_SCHEMA)["properties"]["code"]["enum"])
    ]


# --- the calls ------------------------------------------------------------------------------


class Call(NamedTuple):
    method: str
    route: str  # the spec's path template
    path: str  # the path sent, query included
    body: Any = None
    status: int = 200
    fits_request_schema: bool = True
    project_type: str = "hybrid"


UPDATE = "/api/users/update"
TRACK = "/api/events/track"
BULK_UPDATE = "/api/users/bulkUpdate"
TRACK_BULK = "/api/events/trackBulk"
GET_BY_EMAIL = "/api/users/getByEmail"
BY_EMAIL = "/api/users/{email}"
BY_USER_ID = "/api/users/byUserId/{userId}"
UPDATE_EMAIL = "/api/users/updateEmail"
FORGOTTEN = "/api/users/forgotten"
FORGET = "/api/users/forget"
LISTS = "/api/lists"
SUBSCRIBE = "/api/lists/subscribe"
UNSUBSCRIBE = "/api/lists/unsubscribe"

EVENT = {"eventName": "login", "email": "ann@example.com", "id": "e-9", "createdAt": 1700000000}
SUBSCRIBERS = [{"email": "ann@example.com"}, {"email": "nobody@example.com"}, {"email": "bad"}]

CALLS = [
    Call("POST", UPDATE, UPDATE, {"email": "new@example.com", "dataFields": {"plan": "pro"}}),
    Call(
        "POST", UPDATE, UPDATE, {"userId": "u-ann", "dataFields": {"email": "bob@example.com"}}, 409
    ),
    Call("POST", UPDATE, UPDATE, {"email": "gone@example.com", "dataFields": {}}, 409),
    Call("POST", UPDATE, UPDATE, {"email": "ann@example.com", "dataFields": []}, 400, False),
    Call("POST", TRACK, TRACK, EVENT),
    Call("POST", TRACK, TRACK, {"email": "ann@example.com"}, 400, False),
    Call("POST", TRACK, TRACK, {**EVENT, "email": "gone@example.com"}, 409),
    Call(
        "POST",
        BULK_UPDATE,
        BULK_UPDATE,
        {"users": [{"email": "new@example.com"}, {"email": "gone@example.com"}, {"userId": "u-2"}]},
    ),
    Call("POST", BULK_UPDATE, BULK_UPDATE, {"createNewFields": True}, 400, False),
    Call("POST", TRACK_BULK, TRACK_BULK, {"events": [EVENT, {**EVENT, "email": "x"}]}),
    Call("POST", TRACK_BULK, TRACK_BULK, {"events": [{"email": "a@example.com"}]}, 400, False),
    Call("GET", GET_BY_EMAIL, GET_BY_EMAIL + "?email=ann%40example.com"),
    Call("GET", GET_BY_EMAIL, GET_BY_EMAIL + "?email=nobody%40example.com"),
    Call("GET", GET_BY_EMAIL, GET_BY_EMAIL + "?email=not-an-email", status=400),
    Call("GET", BY_EMAIL, "/api/users/ann%40example.com"),
    Call("GET", BY_EMAIL, "/api/users/not-an-email", status=400),
    Call("GET", BY_USER_ID, "/api/users/byUserId/u-ann"),
    Call("GET", BY_USER_ID, "/api/users/byUserId/" + "x" * 53, status=400),
    Call(
        "POST",
        UPDATE_EMAIL,
        UPDATE_EMAIL,
        {"currentEmail": "bob@example.com", "newEmail": "b@x.io"},
    ),
    Call(
        "POST",
        UPDATE_EMAIL,
        UPDATE_EMAIL,
        {"currentUserId": "u-ann", "newEmail": "bob@example.com"},
        409,
    ),
    Call(
        "POST",
        UPDATE_EMAIL,
        UPDATE_EMAIL,
        {"currentEmail": "nobody@example.com", "newEmail": "b@x.io"},
        400,
    ),
    Call("POST", UPDATE_EMAIL, UPDATE_EMAIL, {"currentEmail": "bob@example.com"}, 400, False),
    Call("DELETE", BY_EMAIL, "/api/users/bob@example.com"),
    Call("DELETE", BY_EMAIL, "/api/users/nobody@example.com", status=400),
    Call("DELETE", BY_USER_ID, "/api/users/byUserId/u-ann"),
    Call("DELETE", BY_USER_ID, "/api/users/byUserId/nobody", status=400),
    Call("GET", FORGOTTEN, FORGOTTEN),
    Call("GET", FORGOTTEN, FORGOTTEN, status=400, project_type="userId"),
    Call("POST", FORGET, FORGET, {"email": "bob@example.com"}),
    Call("POST", FORGET, FORGET, {"email": "bob@example.com", "userId": "u-ann"}, 400),
    Call("GET", GET_FIELDS, GET_FIELDS),
    Call("GET", LISTS, LISTS),
    Call("POST", LISTS, LISTS, {"name": "trial users", "description": "on a trial"}),
    Call("POST", LISTS, LISTS, {"description": "no name"}, 400, False),
    Call("POST", SUBSCRIBE, SUBSCRIBE, {"listId": 1, "subscribers": SUBSCRIBERS}),
    Call("POST", SUBSCRIBE, SUBSCRIBE, {"listId": 99, "subscribers": SUBSCRIBERS}, 400),
    Call("POST", SUBSCRIBE, SUBSCRIBE, {"listId": "1", "subscribers": []}, 400, False),
    Call(
        "POST",
        UNSUBSCRIBE,
        UNSUBSCRIBE,
        {"listId": 1, "subscribers": SUBSCRIBERS, "campaignId": 5, "channelUnsubscribe": False},
    ),
    Call("POST", UNSUBSCRIBE, UNSUBSCRIBE, {"listId": 99, "subscribers": []}, 400),
    Call("POST", UNSUBSCRIBE, UNSUBSCRIBE, {"subscribers": SUBSCRIBERS}, 400, False),
]


def seed(api: requests.Session, base_url: str) -> None:
    """ann (userId u-ann) with an event and on list 1, bob by email, forgotten users."""
    calls = [
        (UPDATE, {"userId": "u-ann", "dataFields": {"email": "ann@example.com", "plan": "pro"}}),
        (UPDATE, {"email": "bob@example.com", "dataFields": {"plan": "free"}}),
        (TRACK, {**EVENT, "id": "e-1"}),
        (LISTS, {"name": "customers"}),
        (SUBSCRIBE, {"listId": 1, "subscribers": [{"userId": "u-ann"}]}),
        (FORGET, {"email": "gone@example.com"}),
    ]
    for path, body in calls:
        response = api.post(base_url + path, json=body, timeout=5)
        assert response.status_code == 200, (path, response.text)


def request_schema(spec: Spec, call: Call) -> dict[str, Any]:
    operation = spec["paths"][call.route][call.method.lower()]
    (body,) = [p for p in operation["parameters"] if p["in"] == "body"]
    return dict(body["schema"])


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path} -> {c.status}")
def test_answers_fit_the_spec(spec: Spec, sandbox: SandboxServer, call: Call) -> None:
    api = requests.Session()
    api.headers["Api-Key"] = DEFAULT_API_KEY
    sandbox.configure({"project_type": call.project_type})
    if call.project_type == "hybrid":
        seed(api, sandbox.base_url)
    if call.body is not None:
        problems = schema_errors(call.body, request_schema(spec, call), spec)
        assert (problems == []) is call.fits_request_schema, problems

    response = api.request(call.method, sandbox.base_url + call.path, json=call.body, timeout=5)

    responses = spec["paths"][call.route][call.method.lower()]["responses"]
    assert response.status_code == call.status, response.text
    allowed = set(responses) | UNDOCUMENTED.get((call.method, call.route), set())
    assert str(call.status) in allowed, f"{call.status} is not documented for {call.route}"
    assert response.headers["Content-Type"] == "application/json"
    schema = responses.get(str(call.status), {}).get("schema", ERROR_SCHEMA)
    assert schema_errors(response.json(), schema, spec) == []
    api.close()


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_is_in_the_spec_and_served(
    spec: Spec, sandbox: SandboxServer, route: Any
) -> None:
    """Every route the sandbox claims is an operation of the spec and reaches its handler."""
    operation = spec["paths"].get(route.path, {}).get(route.method.lower())
    assert operation is not None, f"{route.method} {route.path} is not in Iterable's spec"
    assert route.endpoint in ENDPOINTS
    path = route.path.replace("{email}", "ann%40example.com").replace("{userId}", "u-ann")

    response = requests.request(
        route.method, sandbox.base_url + path, headers={"Api-Key": "wrong"}, timeout=5
    )

    assert response.status_code == 401  # answered by the API, not the unknown-route page
    assert "401" in operation["responses"]
    assert schema_errors(response.json(), ERROR_SCHEMA, spec) == []
    assert sandbox.request_count(route.endpoint, 401) == 1


def test_every_route_and_documented_status_is_exercised(spec: Spec) -> None:
    exercised: dict[tuple[str, str], set[str]] = {}
    for call in CALLS:
        exercised.setdefault((call.method, call.route), {"401"}).add(str(call.status))
    routes = {(route.method, route.path) for route in ROUTES}

    assert set(exercised) == routes
    for (method, path), statuses in exercised.items():
        documented = set(spec["paths"][path][method.lower()]["responses"])
        missing = documented - statuses - UNREACHABLE.get((method, path), set())
        assert not missing, f"{method} {path}: documented {sorted(missing)} never exercised"


def test_spec_operations_the_sandbox_does_not_serve(spec: Spec) -> None:
    served = {(route.method.lower(), route.path) for route in ROUTES}
    in_spec = {(method, path) for path, ops in spec["paths"].items() for method in ops}

    assert in_spec - served == set()
