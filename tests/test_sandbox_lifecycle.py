"""Lifecycle endpoints over real HTTP: email changes, userIds, lists, deletes, GDPR."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

from sandbox import DEFAULT_API_KEY, SandboxServer

SUCCESS = {"msg": "", "code": "Success", "params": None}


class Api:
    """A keep-alive client for one sandbox that sends the API key."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Api-Key"] = DEFAULT_API_KEY

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.base_url + path, json=body, timeout=5)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=5)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.base_url + path, timeout=5)

    def update(self, **body: Any) -> requests.Response:
        return self.post("/api/users/update", body)

    def track(self, **event: Any) -> requests.Response:
        return self.post("/api/events/track", {"eventName": "login", **event})

    def update_email(self, **body: Any) -> requests.Response:
        return self.post("/api/users/updateEmail", body)

    def create_list(self, name: str) -> int:
        response = self.post("/api/lists", {"name": name})
        assert response.status_code == 200, response.text
        return int(response.json()["listId"])

    def subscribe(self, list_id: int, *subscribers: dict[str, Any], **extra: Any) -> Any:
        body = {"listId": list_id, "subscribers": list(subscribers), **extra}
        response = self.post("/api/lists/subscribe", body)
        assert response.status_code == 200, response.text
        return response.json()

    def unsubscribe(self, list_id: int, *subscribers: dict[str, Any], **extra: Any) -> Any:
        body = {"listId": list_id, "subscribers": list(subscribers), **extra}
        response = self.post("/api/lists/unsubscribe", body)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def api(sandbox: SandboxServer) -> Iterator[Api]:
    client = Api(sandbox.base_url)
    yield client
    client.session.close()


def profile_of(sandbox: SandboxServer, **identifiers: str) -> dict[str, Any]:
    """The one stored profile whose email/userId are as given."""
    found = [
        p
        for p in sandbox.profiles()
        if all(p[name] == value for name, value in identifiers.items())
    ]
    assert len(found) == 1, (identifiers, sandbox.profiles())
    return found[0]


def failures(body: dict[str, Any]) -> dict[str, list[str]]:
    """The non-empty failedUpdates lists of a bulk or list answer."""
    return {name: values for name, values in body["failedUpdates"].items() if values}


# --- users/updateEmail ---


def test_update_email_moves_profile_events_and_lists(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="old@example.com", dataFields={"plan": "pro"})
    api.track(email="old@example.com", id="e-1", createdAt=1)
    api.track(email="old@example.com", id="e-2", createdAt=2)
    list_id = api.create_list("customers")
    api.subscribe(list_id, {"email": "old@example.com"})

    response = api.update_email(currentEmail="old@example.com", newEmail="new@example.com")

    assert (response.status_code, response.json()) == (200, SUCCESS)
    assert sandbox.profiles() == [
        {
            "email": "new@example.com",
            "userId": None,
            "dataFields": {"plan": "pro"},
            "events": ["e-1", "e-2"],
            "lists": [list_id],
            "unsubscribed_globally": False,
        }
    ]
    assert {e["email"] for e in sandbox.events().values()} == {"new@example.com"}
    assert sandbox.list_members(list_id) == [{"email": "new@example.com", "userId": None}]
    assert api.get("/api/users/old@example.com").json() == {}
    assert api.get("/api/users/new@example.com").json()["user"]["dataFields"] == {"plan": "pro"}
    assert sandbox.request_count("users/updateEmail", 200) == 1


def test_update_email_by_current_user_id(api: Api, sandbox: SandboxServer) -> None:
    api.update(userId="u-1", dataFields={"email": "old@example.com", "plan": "pro"})

    response = api.update_email(currentUserId="u-1", newEmail="new@example.com")

    assert response.json() == SUCCESS
    assert profile_of(sandbox, userId="u-1")["email"] == "new@example.com"
    assert sandbox.users() == {"new@example.com": {"plan": "pro"}}


def test_update_email_to_an_existing_email_is_409(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="ann@example.com", dataFields={"name": "Ann"})
    api.update(email="bob@example.com", dataFields={"name": "Bob"})

    response = api.update_email(currentEmail="ann@example.com", newEmail="bob@example.com")

    assert response.status_code == 409
    assert response.json()["code"] == "EmailAlreadyExists"
    assert sandbox.users() == {
        "ann@example.com": {"name": "Ann"},
        "bob@example.com": {"name": "Bob"},
    }


def test_update_email_to_a_forgotten_email_is_409(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="ann@example.com", dataFields={"name": "Ann"})
    sandbox.forget("gone@example.com")

    response = api.update_email(currentEmail="ann@example.com", newEmail="gone@example.com")

    assert response.status_code == 409
    assert response.json()["code"] == "ForgottenUserError"
    assert list(sandbox.users()) == ["ann@example.com"]


@pytest.mark.parametrize(
    ("current", "code"),
    [
        ({"currentEmail": "nobody@example.com"}, "UnknownEmailError"),
        ({"currentUserId": "nobody"}, "UnknownUserIdError"),
    ],
)
def test_update_email_of_an_unknown_user_is_400(
    api: Api, sandbox: SandboxServer, current: dict[str, str], code: str
) -> None:
    response = api.update_email(**current, newEmail="new@example.com")

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert sandbox.profiles() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"currentEmail": "a@example.com"}, "BadParams"),
        ({"newEmail": "new@example.com"}, "BadParams"),
        ({"currentEmail": "a@example.com", "newEmail": 42}, "BadJsonBody"),
        ({"currentEmail": "a@example.com", "newEmail": "not an email"}, "InvalidEmailAddressError"),
    ],
)
def test_invalid_update_email_request_is_400(
    api: Api, sandbox: SandboxServer, body: dict[str, Any], code: str
) -> None:
    api.update(email="a@example.com", dataFields={})

    response = api.update_email(**body)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert list(sandbox.users()) == ["a@example.com"]


# --- identification by userId ---


def test_user_id_identifies_users_everywhere(api: Api, sandbox: SandboxServer) -> None:
    list_id = api.create_list("members")
    api.update(userId="u-1", dataFields={"plan": "pro"})
    api.track(userId="u-1", id="e-1")
    users = [{"userId": "u-1", "dataFields": {"seats": 3}}, {"userId": "u-2", "dataFields": {}}]
    bulk = api.post("/api/users/bulkUpdate", {"users": users}).json()
    events = [{"eventName": "login", "userId": "u-2", "id": "e-2"}]
    track_bulk = api.post("/api/events/trackBulk", {"events": events}).json()
    subscribed = api.subscribe(list_id, {"userId": "u-1"}, {"userId": "u-2"})

    assert (bulk["successCount"], track_bulk["successCount"]) == (2, 1)
    assert subscribed["successCount"] == 2
    assert sandbox.user_ids() == {"u-1": {"plan": "pro", "seats": 3}, "u-2": {}}
    assert profile_of(sandbox, userId="u-1")["events"] == ["e-1"]
    assert profile_of(sandbox, userId="u-2")["events"] == ["e-2"]
    assert sandbox.list_members(list_id) == [
        {"email": None, "userId": "u-1"},
        {"email": None, "userId": "u-2"},
    ]
    assert sandbox.users() == {}
    by_user_id = api.get("/api/users/byUserId/u-1").json()
    assert by_user_id == {"user": {"userId": "u-1", "dataFields": {"plan": "pro", "seats": 3}}}


def test_data_fields_email_sets_and_changes_a_users_email(api: Api, sandbox: SandboxServer) -> None:
    api.update(userId="u-1", dataFields={"plan": "pro"})
    api.track(userId="u-1", id="e-1")

    first = api.update(userId="u-1", dataFields={"email": "one@example.com"})
    second = api.update(userId="u-1", dataFields={"email": "two@example.com"})

    assert first.json() == second.json() == SUCCESS
    assert sandbox.users() == {"two@example.com": {"plan": "pro"}}  # email is no dataField
    assert sandbox.events()["e-1"]["email"] == "two@example.com"
    assert api.get("/api/users/getByEmail?email=two%40example.com").json()["user"] == {
        "email": "two@example.com",
        "userId": "u-1",
        "dataFields": {"plan": "pro"},
    }


def test_data_fields_email_of_another_user_is_409_in_hybrid_projects(
    api: Api, sandbox: SandboxServer
) -> None:
    api.update(email="taken@example.com", dataFields={"name": "Ann"})
    api.update(userId="u-1", dataFields={"name": "Bob"})

    response = api.update(userId="u-1", dataFields={"email": "taken@example.com"})

    assert response.status_code == 409
    assert response.json()["code"] == "EmailAlreadyExists"
    assert profile_of(sandbox, userId="u-1")["email"] is None


def test_bulk_update_names_email_conflicts_inside_and_across_batches(
    api: Api, sandbox: SandboxServer
) -> None:
    api.update(email="taken@example.com", dataFields={})
    users = [
        {"userId": "u-1", "dataFields": {"email": "taken@example.com"}},
        {"userId": "u-2", "dataFields": {"email": "free@example.com"}},
        {"userId": "u-3", "dataFields": {"email": "free@example.com"}},
        {"userId": "u-4", "dataFields": {"email": "not-an-email"}},
    ]

    body = api.post("/api/users/bulkUpdate", {"users": users}).json()

    assert (body["successCount"], body["failCount"]) == (1, 3)
    assert failures(body) == {
        "conflictEmails": ["taken@example.com", "free@example.com"],
        "invalidEmails": ["not-an-email"],
    }
    assert profile_of(sandbox, userId="u-2")["email"] == "free@example.com"
    assert set(sandbox.user_ids()) == {"u-2"}


def test_different_data_fields_email_on_an_update_by_email_is_refused(
    api: Api, sandbox: SandboxServer
) -> None:
    response = api.update(email="a@example.com", dataFields={"email": "b@example.com"})
    same = api.update(email="c@example.com", dataFields={"email": "c@example.com", "x": 1})

    assert response.status_code == 400
    assert response.json()["code"] == "BadParams"
    assert same.json() == SUCCESS
    assert sandbox.users() == {"c@example.com": {"x": 1}}


# --- project types ---


def test_email_based_project_needs_existing_user_ids(api: Api, sandbox: SandboxServer) -> None:
    sandbox.configure({"project_type": "email"})

    unknown = api.update(userId="u-1", dataFields={"plan": "pro"})
    preferred = api.update(userId="u-2", dataFields={"plan": "pro"}, preferUserId=True)
    bulk = api.post("/api/users/bulkUpdate", {"users": [{"userId": "u-3"}]}).json()
    by_email = api.update(email="a@example.com", dataFields={})

    assert unknown.status_code == 400
    assert unknown.json()["code"] == "UnknownUserIdError"
    assert preferred.json() == by_email.json() == SUCCESS
    assert failures(bulk) == {"notFoundUserIds": ["u-3"]}
    assert set(sandbox.user_ids()) == {"u-2"}
    assert sandbox.config()["project_type"] == "email"


def test_user_id_based_project_refuses_emails_as_identifiers(
    api: Api, sandbox: SandboxServer
) -> None:
    sandbox.configure({"project_type": "userId"})
    api.update(userId="u-1", dataFields={"email": "shared@example.com"})
    api.update(userId="u-2", dataFields={"email": "shared@example.com"})

    by_email = api.update(email="shared@example.com", dataFields={})
    bulk = api.post("/api/users/bulkUpdate", {"users": [{"email": "a@example.com"}]})
    update_email = api.update_email(currentUserId="u-1", newEmail="new@example.com")
    forgotten = api.get("/api/users/forgotten")
    delete = api.delete("/api/users/shared@example.com")

    assert [p["email"] for p in sandbox.profiles()] == ["shared@example.com"] * 2
    for refused in (by_email, bulk, update_email, forgotten, delete):
        assert refused.status_code == 400, refused.request.url
        assert refused.json()["code"] == "BadParams"
    assert bulk.json()["params"] == {
        "obj.users[0].email": "This project identifies users by userId, not by email"
    }


def test_project_type_changes_only_while_empty(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="a@example.com", dataFields={})

    with pytest.raises(ValueError, match="empty"):
        sandbox.configure({"project_type": "userId"})
    with pytest.raises(ValueError, match="unknown project type"):
        sandbox.configure({"project_type": "mixed"})
    sandbox.reset()
    sandbox.configure({"project_type": "userId"})
    assert sandbox.config()["project_type"] == "userId"


# --- lists ---


def test_lists_are_created_and_listed(api: Api, sandbox: SandboxServer) -> None:
    first = api.create_list("customers")
    second = api.create_list("trial users")

    lists = api.get("/api/lists").json()["lists"]

    assert [(item["id"], item["name"], item["listType"]) for item in lists] == [
        (first, "customers", "Standard"),
        (second, "trial users", "Standard"),
    ]
    assert all(isinstance(item["createdAt"], int) for item in lists)
    assert sandbox.lists() == lists
    assert sandbox.request_count("lists", 200) == 1
    assert sandbox.request_count("lists/create", 200) == 2
    empty_name = api.post("/api/lists", {"name": " "})
    assert (empty_name.status_code, empty_name.json()["code"]) == (400, "BadParams")


def test_subscribe_creates_users_and_names_the_ones_it_could_not_add(
    api: Api, sandbox: SandboxServer
) -> None:
    list_id = api.create_list("customers")
    api.update(email="known@example.com", dataFields={"plan": "pro"})
    sandbox.forget("gone@example.com")

    body = api.subscribe(
        list_id,
        {"email": "known@example.com"},
        {"email": "new@example.com", "dataFields": {"plan": "free"}},
        {"email": "bad email"},
        {"email": "gone@example.com"},
    )

    assert (body["successCount"], body["failCount"]) == (2, 2)
    assert failures(body) == {
        "invalidEmails": ["bad email"],
        "forgottenEmails": ["gone@example.com"],
    }
    assert sandbox.list_members(list_id) == [
        {"email": "known@example.com", "userId": None},
        {"email": "new@example.com", "userId": None},
    ]
    assert sandbox.users()["new@example.com"] == {"plan": "free"}


def test_subscribe_existing_users_only_names_unknown_ones(api: Api, sandbox: SandboxServer) -> None:
    list_id = api.create_list("customers")
    api.update(userId="u-1", dataFields={})

    body = api.subscribe(
        list_id,
        {"userId": "u-1"},
        {"userId": "u-2"},
        {"email": "nobody@example.com"},
        updateExistingUsersOnly=True,
    )

    assert failures(body) == {
        "notFoundEmails": ["nobody@example.com"],
        "notFoundUserIds": ["u-2"],
    }
    assert sandbox.list_members(list_id) == [{"email": None, "userId": "u-1"}]
    assert len(sandbox.profiles()) == 1


def test_unsubscribe_removes_members_and_names_unknown_users(
    api: Api, sandbox: SandboxServer
) -> None:
    list_id = api.create_list("customers")
    other_list = api.create_list("others")
    api.subscribe(list_id, {"email": "ann@example.com"}, {"email": "bob@example.com"})
    api.subscribe(other_list, {"email": "ann@example.com"}, {"email": "cid@example.com"})

    body = api.unsubscribe(
        list_id,
        {"email": "ann@example.com"},
        {"email": "cid@example.com"},  # known, but not on this list: counts as removed
        {"email": "nobody@example.com"},
        {"userId": "u-9"},
        channelUnsubscribe=False,
    )

    assert (body["successCount"], body["failCount"]) == (2, 2)
    assert failures(body) == {
        "notFoundEmails": ["nobody@example.com"],
        "notFoundUserIds": ["u-9"],
    }
    assert sandbox.list_members(list_id) == [{"email": "bob@example.com", "userId": None}]
    assert len(sandbox.list_members(other_list)) == 2
    assert profile_of(sandbox, email="ann@example.com")["lists"] == [other_list]
    assert not any(p["unsubscribed_globally"] for p in sandbox.profiles())
    assert sandbox.request_count("lists/unsubscribe", 200) == 1


def test_unsubscribe_records_channel_unsubscribe_and_global_unsubscribes(
    api: Api, sandbox: SandboxServer
) -> None:
    list_id = api.create_list("customers")
    emails = ["kept@example.com", "omitted@example.com", "global@example.com"]
    api.subscribe(list_id, *({"email": email} for email in emails))

    api.unsubscribe(list_id, {"email": "kept@example.com"}, channelUnsubscribe=False)
    api.unsubscribe(list_id, {"email": "omitted@example.com"})
    api.unsubscribe(list_id, {"email": "global@example.com"}, channelUnsubscribe=True)

    assert sandbox.channel_unsubscribes() == [False, None, True]
    assert {p["email"]: p["unsubscribed_globally"] for p in sandbox.profiles()} == {
        "kept@example.com": False,
        "omitted@example.com": True,
        "global@example.com": True,
    }
    assert sandbox.list_members(list_id) == []


@pytest.mark.parametrize("path", ["/api/lists/subscribe", "/api/lists/unsubscribe"])
def test_list_requests_for_an_unknown_list_or_malformed_body_are_400(
    api: Api, sandbox: SandboxServer, path: str
) -> None:
    unknown = api.post(path, {"listId": 999, "subscribers": [{"email": "a@example.com"}]})
    no_list = api.post(path, {"subscribers": []})
    both = api.post(path, {"listId": 1, "subscribers": [{"email": "a@x.io", "userId": "u"}]})
    wrong_type = api.post(path, {"listId": "one", "subscribers": []})

    assert (unknown.status_code, unknown.json()["code"]) == (400, "BadParams")
    assert unknown.json()["params"] == {"obj.listId": "No list with id 999"}
    assert no_list.json()["params"] == {"obj.listId": "listId is required"}
    assert both.json()["code"] == "BadParams"
    assert wrong_type.json() == {
        "msg": "Invalid JSON body",
        "code": "BadJsonBody",
        "params": {"obj.listId": "Number value expected"},
    }
    assert sandbox.profiles() == [] and sandbox.channel_unsubscribes() == []


def test_subscribe_data_fields_are_type_checked(api: Api, sandbox: SandboxServer) -> None:
    list_id = api.create_list("customers")
    api.update(email="a@example.com", dataFields={"seats": 3})

    response = api.post(
        "/api/lists/subscribe",
        {
            "listId": list_id,
            "subscribers": [{"email": "b@example.com", "dataFields": {"seats": "3"}}],
        },
    )

    assert response.status_code == 400
    assert response.json()["code"] == "RequestFieldsTypesMismatched"
    assert sandbox.list_members(list_id) == []


# --- deleting and reading users ---


def test_delete_by_email_and_by_user_id(api: Api, sandbox: SandboxServer) -> None:
    list_id = api.create_list("customers")
    api.update(email="ann@example.com", dataFields={"plan": "pro"})
    api.track(email="ann@example.com", id="e-1")
    api.update(userId="u-1", dataFields={"email": "bob@example.com"})
    api.track(userId="u-1", id="e-2")
    api.update(email="cid@example.com", dataFields={})
    api.subscribe(list_id, {"email": "ann@example.com"}, {"userId": "u-1"})

    by_email = api.delete("/api/users/ann@example.com")
    by_user_id = api.delete("/api/users/byUserId/u-1")

    assert by_email.json() == by_user_id.json() == SUCCESS
    assert list(sandbox.users()) == ["cid@example.com"]
    assert sandbox.events() == {}
    assert sandbox.list_members(list_id) == []
    assert sandbox.deleted() == [
        {"email": "ann@example.com", "userId": None},
        {"email": "bob@example.com", "userId": "u-1"},
    ]
    assert sandbox.request_count("users/delete", 200) == 2
    # Deleting does not stop later data from creating the user again.
    assert api.update(email="ann@example.com", dataFields={"plan": "free"}).json() == SUCCESS
    assert sandbox.users()["ann@example.com"] == {"plan": "free"}


@pytest.mark.parametrize("path", ["/api/users/nobody@example.com", "/api/users/byUserId/nobody"])
def test_deleting_an_unknown_user_is_400_not_found(
    api: Api, sandbox: SandboxServer, path: str
) -> None:
    response = api.delete(path)

    assert response.status_code == 400
    assert response.json()["code"] == "NotFound"
    assert sandbox.deleted() == []


def test_get_user_by_path_decodes_the_email(api: Api, sandbox: SandboxServer) -> None:
    email = "a/b+c@example.com"
    api.update(email=email, dataFields={"x": 1})

    found = api.get("/api/users/" + quote(email, safe=""))
    unknown = api.get("/api/users/zed@example.com")
    invalid = api.get("/api/users/not-an-email")
    wrong_method = api.session.put(api.base_url + "/api/users/a@example.com", timeout=5)

    assert found.json() == {"user": {"email": email, "dataFields": {"x": 1}}}
    assert (unknown.status_code, unknown.json()) == (200, {})
    assert invalid.json()["code"] == "InvalidEmailAddressError"
    assert wrong_method.status_code == 404
    assert sandbox.request_count("users/get") == 3


# --- GDPR ---


def test_forgetting_removes_the_profile(api: Api, sandbox: SandboxServer) -> None:
    list_id = api.create_list("customers")
    api.update(userId="u-1", dataFields={"email": "ann@example.com", "plan": "pro"})
    api.track(userId="u-1", id="e-1")
    api.subscribe(list_id, {"userId": "u-1"})

    sandbox.forget("ann@example.com")

    assert sandbox.profiles() == [] and sandbox.events() == {}
    assert sandbox.list_members(list_id) == []
    assert sandbox.forgotten() == {"emails": ["ann@example.com"], "userIds": ["u-1"]}
    assert api.get("/api/users/byUserId/u-1").json() == {}


def test_forgotten_users_are_refused_in_single_calls(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="ann@example.com", dataFields={})
    api.update(userId="u-1", dataFields={})
    sandbox.forget("gone@example.com")
    sandbox.forget("u-1")

    answers = [
        api.update(email="gone@example.com", dataFields={"plan": "pro"}),
        api.update(userId="u-1", dataFields={"plan": "pro"}),
        api.track(email="gone@example.com"),
        api.track(userId="u-1"),
        api.update_email(currentEmail="ann@example.com", newEmail="gone@example.com"),
        api.update_email(currentEmail="gone@example.com", newEmail="new@example.com"),
        api.update(userId="u-2", dataFields={"email": "gone@example.com"}),
    ]

    assert [a.status_code for a in answers] == [409] * len(answers)
    assert {a.json()["code"] for a in answers} == {"ForgottenUserError"}
    assert list(sandbox.users()) == ["ann@example.com"]
    assert sandbox.user_ids() == {} and sandbox.events() == {}


def test_forgotten_users_are_named_in_bulk_and_list_answers(
    api: Api, sandbox: SandboxServer
) -> None:
    list_id = api.create_list("customers")
    sandbox.forget("gone@example.com")
    sandbox.forget("u-gone")
    forgotten = {"forgottenEmails": ["gone@example.com"], "forgottenUserIds": ["u-gone"]}
    users = [{"email": "gone@example.com"}, {"userId": "u-gone"}, {"email": "ok@example.com"}]
    events = [{"eventName": "login", **user} for user in users]

    bulk = api.post("/api/users/bulkUpdate", {"users": users}).json()
    track_bulk = api.post("/api/events/trackBulk", {"events": events}).json()
    subscribed = api.subscribe(list_id, *users)
    unsubscribed = api.unsubscribe(list_id, *users, channelUnsubscribe=False)

    for body in (bulk, track_bulk, subscribed, unsubscribed):
        assert failures(body) == forgotten
        assert (body["successCount"], body["failCount"]) == (1, 2)
    assert list(sandbox.users()) == ["ok@example.com"]


def test_forgotten_endpoint_lists_hashes_of_normalised_emails(
    api: Api, sandbox: SandboxServer
) -> None:
    api.update(email="Ann@Example.com", dataFields={})
    sandbox.forget("Ann@Example.com")
    sandbox.forget(" bob@example.com ")
    sandbox.forget("u-1")  # a userId has no email to hash

    response = api.get("/api/users/forgotten")

    expected = sorted(
        hashlib.sha256(email.encode()).hexdigest()
        for email in ("ann@example.com", "bob@example.com")
    )
    assert response.json() == {"hashedEmails": expected}
    assert sandbox.request_count("users/forgotten", 200) == 1
    assert api.update(email="ANN@example.com", dataFields={}).status_code == 409


def test_users_forget_endpoint_forgets(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="ann@example.com", dataFields={})

    response = api.post("/api/users/forget", {"email": "ann@example.com"})

    assert response.json() == SUCCESS
    assert sandbox.profiles() == []
    assert sandbox.forgotten()["emails"] == ["ann@example.com"]
    assert sandbox.request_count("users/forget", 200) == 1


# --- oversized bulk requests ---


@pytest.mark.parametrize("status", [400, 413])
@pytest.mark.parametrize(
    ("path", "name", "item"),
    [
        ("/api/users/bulkUpdate", "users", {}),
        ("/api/events/trackBulk", "events", {"eventName": "login"}),
    ],
)
def test_more_bulk_items_than_allowed_is_batch_too_large(
    api: Api, sandbox: SandboxServer, status: int, path: str, name: str, item: dict[str, Any]
) -> None:
    sandbox.configure({"max_bulk_items": 2, "batch_too_large_status": status})
    items = [{**item, "email": f"u{i}@example.com"} for i in range(3)]

    too_many = api.post(path, {name: items})
    enough = api.post(path, {name: items[:2]})

    assert too_many.status_code == status
    assert too_many.json()["code"] == "BatchTooLarge"
    assert enough.status_code == 200
    assert len(sandbox.profiles()) == 2


def test_body_over_4_mb_answers_the_configured_status(api: Api, sandbox: SandboxServer) -> None:
    sandbox.configure({"batch_too_large_status": 413})
    padding = "x" * (4 * 1024 * 1024)
    body = json.dumps({"users": [{"email": "a@example.com", "dataFields": {"pad": padding}}]})

    response = api.session.post(api.base_url + "/api/users/bulkUpdate", data=body, timeout=10)

    assert response.status_code == 413
    assert response.json()["code"] == "BatchTooLarge"
    assert sandbox.profiles() == []


# --- rate limits and the control API ---


def frozen_clock() -> float:
    """A rate-limit clock at which no time passes, so no spent token comes back."""
    return 0.0


def test_iterable_limits_cover_the_lifecycle_endpoints() -> None:
    with SandboxServer(rate_limits="iterable", clock=frozen_clock) as server:
        api = Api(server.base_url)
        forgotten = [api.get("/api/users/forgotten").status_code for _ in range(4)]
        lists = [api.get("/api/lists").status_code for _ in range(101)]
        deletes = [api.delete("/api/users/byUserId/u-1").status_code for _ in range(101)]
        api.session.close()

    assert forgotten == [200, 200, 200, 429]
    assert lists == [200] * 100 + [429]
    assert deletes == [400] * 100 + [429]


def test_control_api_shows_profiles_lists_and_gdpr_state(api: Api, sandbox: SandboxServer) -> None:
    control = requests.Session()  # no API key needed
    base = sandbox.base_url + "/_sandbox"
    list_id = control.post(base + "/lists", json={"name": "customers"}, timeout=5).json()["listId"]
    api.subscribe(list_id, {"email": "ann@example.com"}, {"email": "bob@example.com"})
    api.unsubscribe(list_id, {"email": "bob@example.com"}, channelUnsubscribe=False)
    api.delete("/api/users/bob@example.com")
    control.post(base + "/forget", json={"identifier": "u-9"}, timeout=5)

    def read(route: str) -> Any:
        return control.get(f"{base}/{route}", timeout=5).json()

    assert [p["email"] for p in read("profiles")["profiles"]] == ["ann@example.com"]
    assert read("lists")["lists"][0]["name"] == "customers"
    assert read(f"lists/{list_id}/members") == {
        "members": [{"email": "ann@example.com", "userId": None}]
    }
    assert read("deleted") == {"deleted": [{"email": "bob@example.com", "userId": None}]}
    assert read("forgotten") == {"emails": [], "userIds": ["u-9"]}
    assert read("channel_unsubscribes") == {"channelUnsubscribes": [False]}
    assert control.get(base + "/lists/77/members", timeout=5).status_code == 400
    assert control.post(base + "/lists", json={}, timeout=5).json() == {
        "error": "'name' is required"
    }
    config = control.post(base + "/config", json={"max_bulk_items": 5}, timeout=5).json()
    assert config["max_bulk_items"] == 5 and config["project_type"] == "hybrid"
    control.close()


def test_fault_narrowed_to_an_email_hits_lifecycle_calls(api: Api, sandbox: SandboxServer) -> None:
    api.update(email="ann@example.com", dataFields={})
    sandbox.add_fault("status", email="ann@example.com", status=503, times=None)

    assert api.delete("/api/users/ann@example.com").status_code == 503
    assert (
        api.update_email(currentEmail="ann@example.com", newEmail="x@example.com").status_code
        == 503
    )
    list_id = sandbox.create_list("customers")
    assert (
        api.post(
            "/api/lists/subscribe",
            {"listId": list_id, "subscribers": [{"email": "ann@example.com"}]},
        ).status_code
        == 503
    )
    assert list(sandbox.users()) == ["ann@example.com"]
