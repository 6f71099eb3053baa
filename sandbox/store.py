"""What the sandbox stores: user profiles, events, field types and the users it refuses."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox.config import EVENTS_TRACK_BULK, USERS_BULK_UPDATE
from sandbox.wire import JsonObject

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


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


def merge_fields(target: JsonObject, incoming: Mapping[str, Any], merge_nested: bool) -> None:
    """Merges a dataFields update: fields not sent are kept, objects merged if asked to."""
    for name, value in incoming.items():
        current = target.get(name)
        if merge_nested and isinstance(value, dict) and isinstance(current, dict):
            merge_fields(current, value, merge_nested)
        else:
            target[name] = copy.deepcopy(value)


@dataclass
class Store:
    """Everything the sandbox holds about the project; guarded by the sandbox's lock."""

    users: dict[tuple[str, str], JsonObject] = field(default_factory=dict)
    user_writes: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: dict[str, JsonObject] = field(default_factory=dict)
    event_writes: Counter[str] = field(default_factory=Counter)
    user_types: dict[str, str] = field(default_factory=dict)
    event_types: dict[str, dict[str, str]] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    conflicts: set[str] = field(default_factory=set)
    not_found: set[str] = field(default_factory=set)
    batch_sizes: dict[str, list[int]] = field(
        default_factory=lambda: {USERS_BULK_UPDATE: [], EVENTS_TRACK_BULK: []}
    )
