"""What the sandbox stores: profiles with their events, static lists, field types, forgotten users.

The store is profile-centric: a profile has an optional email, an optional userId, its
dataFields and its events; a list holds profiles. Events name no user themselves, so after an
email change every event of the profile shows the new email. How profiles are found depends
on the project type (see the package docstring). The store is guarded by the sandbox's lock.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox.config import EVENTS_TRACK_BULK, USERS_BULK_UPDATE, ProjectType
from sandbox.wire import JsonObject

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is about: an email or a userId (validated to be exactly one)."""

    kind: Literal["email", "userId"]
    value: str

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> Identity:
        email = item.get("email")
        if email is not None:
            return cls("email", email)
        return cls("userId", item["userId"])

    @property
    def by_email(self) -> bool:
        return self.kind == "email"

    def failure_list(self, reason: str) -> str:
        """The failedUpdates list naming this identity, e.g. forgottenEmails."""
        return reason + ("Emails" if self.by_email else "UserIds")


@dataclass(slots=True)
class Profile:
    key: int
    email: str | None = None
    user_id: str | None = None
    data: JsonObject = field(default_factory=dict)
    # Event ids in the order they were first stored (a dict as an ordered set).
    events: dict[str, None] = field(default_factory=dict)
    unsubscribed_globally: bool = False
    writes: int = 0

    def identifiers(self) -> JsonObject:
        return {"email": self.email, "userId": self.user_id}

    def api_user(self) -> JsonObject:
        """The profile as GET /api/users/... answers it; a profile without email has no email."""
        user: JsonObject = {}
        if self.email is not None:
            user["email"] = self.email
        if self.user_id is not None:
            user["userId"] = self.user_id
        user["dataFields"] = json_copy(self.data)
        return user


@dataclass(slots=True)
class StoredEvent:
    profile: int
    fields: JsonObject  # id, eventName, createdAt, campaignId, templateId, dataFields


@dataclass(slots=True)
class StaticList:
    id: int
    name: str
    description: str | None
    created_at: int  # epoch milliseconds, as Iterable's ListDetails
    members: dict[int, None] = field(default_factory=dict)  # profile keys, an ordered set

    def details(self) -> JsonObject:
        """The list as GET /api/lists answers it (Iterable's ListDetails)."""
        details: JsonObject = {"id": self.id, "name": self.name}
        if self.description is not None:
            details["description"] = self.description
        details["createdAt"] = self.created_at
        details["listType"] = "Standard"
        return details


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


def api_field_type(value: Any) -> str:
    """How GET /api/users/getFields names the type a value fixes: string, long, double,
    boolean, object; an array by its first item (string when it has none)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        first = next((item for item in value if item is not None), None)
        return "string" if first is None else api_field_type(first)
    return "string"


def merge_fields(target: JsonObject, incoming: Mapping[str, Any], merge_nested: bool) -> None:
    """Merges a dataFields update: fields not sent are kept, objects merged if asked to."""
    for name, value in incoming.items():
        current = target.get(name)
        if merge_nested and isinstance(value, dict) and isinstance(current, dict):
            merge_fields(current, value, merge_nested)
        else:
            target[name] = json_copy(value)


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data (objects, arrays, scalars): copy.deepcopy's result at a
    fraction of its cost, which bulk bodies of thousands of items made the sandbox's largest."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    return value


def normalise_email(email: str) -> str:
    return email.strip().lower()


def email_hash(email: str) -> str:
    """How GET /api/users/forgotten names a forgotten email: SHA-256 of it lowercased, trimmed."""
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()


class Store:
    """Everything the sandbox holds about one Iterable project."""

    def __init__(self, project_type: ProjectType = "hybrid") -> None:
        self.project_type: ProjectType = project_type
        self.profiles: dict[int, Profile] = {}
        # In userID-based projects emails are not unique, so only userIds are indexed there.
        self.by_email: dict[str, int] = {}
        self.by_user_id: dict[str, int] = {}
        self.events: dict[str, StoredEvent] = {}
        self.event_writes: Counter[str] = Counter()
        self.user_types: dict[str, str] = {}
        self.user_field_types: dict[str, str] = {}  # as getFields names them
        self.event_types: dict[str, dict[str, str]] = {}
        self.lists: dict[int, StaticList] = {}
        self.forgotten_emails: set[str] = set()  # normalised
        self.forgotten_user_ids: set[str] = set()
        self.conflicts: set[str] = set()
        self.not_found: set[str] = set()
        self.deleted: list[JsonObject] = []
        self.channel_unsubscribes: list[bool | None] = []
        self.batch_sizes: dict[str, list[int]] = {USERS_BULK_UPDATE: [], EVENTS_TRACK_BULK: []}
        self._next_profile = 1
        self._next_list = 1

    @property
    def emails_unique(self) -> bool:
        return self.project_type != "userId"

    def is_empty(self) -> bool:
        return not (self.profiles or self.events or self.lists)

    # --- profiles ---

    def find(self, identity: Identity) -> Profile | None:
        index = self.by_email if identity.by_email else self.by_user_id
        key = index.get(identity.value)
        return None if key is None else self.profiles[key]

    def create(self, identity: Identity) -> Profile:
        profile = Profile(self._next_profile)
        self._next_profile += 1
        self.profiles[profile.key] = profile
        if identity.by_email:
            self.set_email(profile, identity.value)
        else:
            profile.user_id = identity.value
            self.by_user_id[identity.value] = profile.key
        return profile

    def find_or_create(self, identity: Identity) -> Profile:
        return self.find(identity) or self.create(identity)

    def email_owner(self, email: str) -> Profile | None:
        """The profile an email identifies; None in userID-based projects, where none does."""
        return self.find(Identity("email", email)) if self.emails_unique else None

    def set_email(self, profile: Profile, email: str) -> None:
        """Gives the profile this email (the caller has checked no other profile owns it)."""
        if self.emails_unique:
            if profile.email is not None:
                self.by_email.pop(profile.email, None)
            self.by_email[email] = profile.key
        profile.email = email

    def with_email(self, email: str) -> Iterator[Profile]:
        """Every profile that has this email (several in a userID-based project)."""
        if self.emails_unique:
            owner = self.email_owner(email)
            if owner is not None:
                yield owner
            return
        yield from (p for p in list(self.profiles.values()) if p.email == email)

    def remove(self, profile: Profile) -> None:
        """Removes a profile with its events and list memberships."""
        del self.profiles[profile.key]
        if profile.email is not None and self.by_email.get(profile.email) == profile.key:
            del self.by_email[profile.email]
        if profile.user_id is not None:
            self.by_user_id.pop(profile.user_id, None)
        for event_id in profile.events:
            self.events.pop(event_id, None)
            self.event_writes.pop(event_id, None)
        for static_list in self.lists.values():
            static_list.members.pop(profile.key, None)

    def delete(self, profile: Profile) -> None:
        """What DELETE /api/users/... does: the profile goes, and is remembered as deleted."""
        self.remove(profile)
        self.deleted.append(profile.identifiers())

    def lists_of(self, profile: Profile) -> list[int]:
        return [lst.id for lst in self.lists.values() if profile.key in lst.members]

    # --- field types ---

    def fix_user_types(self, types: Mapping[str, str], data: Iterable[Mapping[str, Any]]) -> None:
        """Fixes the types a request brought (`types`, from its checked `data`) for good."""
        new = {name for name in types if name not in self.user_types}
        self.user_types.update(types)
        for fields in data:
            for name in [name for name in new if fields.get(name) is not None]:
                self.user_field_types[name] = api_field_type(fields[name])
                new.discard(name)
            if not new:
                return

    def api_fields(self) -> dict[str, str]:
        """Every user field with its type, as GET /api/users/getFields answers."""
        return {"email": "string", "userId": "string", **self.user_field_types}

    # --- GDPR ---

    def is_forgotten(self, identity: Identity) -> bool:
        if identity.by_email:
            return normalise_email(identity.value) in self.forgotten_emails
        return identity.value in self.forgotten_user_ids

    def identity_of(self, identifier: str) -> Identity:
        """An email or userId given without saying which: a known userId, else an email if @."""
        if identifier in self.by_user_id or "@" not in identifier:
            return Identity("userId", identifier)
        return Identity("email", identifier)

    def forget(self, identity: Identity) -> None:
        """Forgets the profiles an email or userId names: their data goes, they stay refused."""
        if identity.by_email:
            profiles = list(self.with_email(identity.value))
            self.forgotten_emails.add(normalise_email(identity.value))
        else:
            profile = self.find(identity)
            profiles = [] if profile is None else [profile]
            self.forgotten_user_ids.add(identity.value)
        for profile in profiles:
            if profile.email is not None:
                self.forgotten_emails.add(normalise_email(profile.email))
            if profile.user_id is not None:
                self.forgotten_user_ids.add(profile.user_id)
            self.remove(profile)

    # --- events ---

    def put_event(self, profile: Profile, event_id: str, fields: JsonObject) -> None:
        """Stores an event under its id, replacing an earlier one with that id (of any profile)."""
        earlier = self.events.get(event_id)
        if earlier is not None and earlier.profile != profile.key:
            self.profiles[earlier.profile].events.pop(event_id, None)
        self.events[event_id] = StoredEvent(profile.key, fields)
        profile.events[event_id] = None
        self.event_writes[event_id] += 1

    def event_view(self, event_id: str) -> JsonObject:
        """An event as stored, naming its profile's current email and userId."""
        event = self.events[event_id]
        profile = self.profiles[event.profile]
        view: JsonObject = {"id": event_id}
        if profile.email is not None:
            view["email"] = profile.email
        if profile.user_id is not None:
            view["userId"] = profile.user_id
        view.update(json_copy({k: v for k, v in event.fields.items() if k != "id"}))
        return view

    # --- lists ---

    def create_list(self, name: str, description: str | None, created_at: int) -> StaticList:
        static_list = StaticList(self._next_list, name, description, created_at)
        self._next_list += 1
        self.lists[static_list.id] = static_list
        return static_list

    def members(self, list_id: int) -> list[Profile]:
        return [self.profiles[key] for key in self.lists[list_id].members]
