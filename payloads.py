"""Payloads: pure functions from one Query 2 row to Iterable request bodies. No I/O here."""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

EVENT_NAME = "page_view"
# Iterable accepts field values up to about 32k characters; longer ones are cut to this.
MAX_FIELD_CHARS = 32_000
MAX_EMAIL_CHARS = 254
# Event ids must be letters, digits and hyphens, unique across the project's custom
# events; the prefix keeps ours apart from ids other integrations choose.
EVENT_ID_PREFIX = "page-view-"
# The local part refuses whitespace, the RFC 5322 specials and control characters
# (C0, DEL and C1), which no address may hold unquoted and which could forge log lines.
_EMAIL = re.compile(
    r"^[^@\s\"(),:;<>\[\]\\\x00-\x1f\x7f-\x9f]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+$"
)

INVALID_EMAIL = "invalid_email"
MISSING_VIEW_TIME = "missing_viewed_at"
# How calls name the user: by email (email-based projects) or by the customer's id as a
# string (userID-based and hybrid projects), with the email in dataFields.email.
BY_EMAIL = "email"
BY_USER_ID = "userId"
# The profile fields a customer who leaves the segment must still have right in Iterable.
PROFILE_FIELDS = ("first_name", "last_name", "plan_type")
# The user field the page of the latest view goes to.
RECENT_PAGE_VIEW = "recent_page_view"
CANDIDATE = "candidate"


# Rows and payloads are read-only once built, but not frozen dataclasses: freezing costs a
# microsecond a field set, several per row.
@dataclass(slots=True)
class SourceRow:
    """One Query 2 row: a customer and their latest qualifying page view."""

    customer_id: int
    email: str | None
    first_name: str | None
    last_name: str | None
    plan_type: str | None
    page_view_id: int
    page: str | None
    device: str | None
    location: str | None
    viewed_at: datetime | None
    # Columns whose bytes were not UTF-8 (replaced with U+FFFD): noted in the results.
    not_utf8: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> SourceRow:
        """A row given as a mapping of column names (values as the connector converts them)."""
        try:
            texts: Sequence[Any] = _TEXT_VALUES(row)  # one call for the seven columns
        except KeyError:  # a query edited to leave a column out: it is NULL
            texts = [row.get(name) for name in TEXT_COLUMNS]
        not_utf8: tuple[str, ...] = ()
        if not set(map(type, texts)) <= _PLAIN_TEXT:  # bytes from a binary column
            texts, not_utf8 = decode_texts(texts)
        email, first_name, last_name, plan_type, page, device, location = texts
        return cls(
            int(row["customer_id"]),
            email,
            first_name,
            last_name,
            plan_type,
            int(row["page_view_id"]),
            page,
            device,
            location,
            row.get("viewed_at"),
            not_utf8,
        )


class UnreadableRow(NamedTuple):
    """A row that breaks one of ROW_ASSUMPTIONS; it fails alone, as bad_row, in its turn."""

    customer_id: int  # 0 when even that is unreadable
    error: Exception


# What a row with values the code does not expect (of the wrong type, out of range,
# missing) raises on its way to payloads; anything else is a bug or an outage and stops
# the run.
ROW_ASSUMPTIONS = (KeyError, TypeError, ValueError, AttributeError, OverflowError, UnicodeError)


def read_row(row: Mapping[str, Any]) -> SourceRow | UnreadableRow:
    """SourceRow.from_mapping, with a row it cannot read given back as an UnreadableRow."""
    try:
        return SourceRow.from_mapping(row)
    except ROW_ASSUMPTIONS as exc:
        return UnreadableRow(customer_id_of(row.get("customer_id")), exc)


def customer_id_of(value: Any) -> int:
    """The customer id of a row that could not be read, for its result; 0 if unreadable."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def decode_texts(values: Sequence[Any]) -> tuple[list[str | None], tuple[str, ...]]:
    """TEXT_COLUMNS' values as text, and the names of those whose bytes were not UTF-8
    (decoded with replacement characters). Other values (numbers, dates) become their str."""
    not_utf8 = tuple(
        name
        for name, value in zip(TEXT_COLUMNS, values, strict=True)
        if isinstance(value, bytes | bytearray) and not _is_utf8(value)
    )
    return [_text(value) for value in values], not_utf8


# The text columns of a Query 2 row, in SourceRow's order.
TEXT_COLUMNS = ("email", "first_name", "last_name", "plan_type", "page", "device", "location")
_PLAIN_TEXT = frozenset({str, type(None)})
_TEXT_VALUES = operator.itemgetter(*TEXT_COLUMNS)


@dataclass(slots=True)
class Payloads:
    """What one row sends: the profile update, the event, and notes on values we changed."""

    email: str
    # How Iterable names this user in calls and in bulk answers: the email or the userId.
    identifier: str
    user_update: dict[str, Any]
    event: dict[str, Any]
    # The PROFILE_FIELDS as sent, to tell later whether Iterable still holds them.
    profile: dict[str, Any]
    warnings: tuple[str, ...] = ()
    # Each body encoded once: what goes on the wire, and what the fingerprints hash.
    user_bytes: bytes = field(init=False, repr=False)
    event_bytes: bytes = field(init=False, repr=False)
    user_fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_bytes = encode_json(self.user_update)
        self.event_bytes = encode_json(self.event)
        self.user_fingerprint = digest(self.user_bytes)

    @property
    def user_id(self) -> str | None:
        """The userId the calls name the user by; None when they name the user by email."""
        return None if self.identifier == self.email else self.identifier

    @property
    def event_fingerprint(self) -> str:
        return digest(self.event_bytes)

    @property
    def row_fingerprint(self) -> str:
        """fingerprint({"user": user_update, "event": event}), from the bytes at hand; only
        rejections need it, so it is worked out when asked for."""
        return digest(b'{"event":' + self.event_bytes + b',"user":' + self.user_bytes + b"}")


@dataclass(frozen=True)
class Customer:
    """A customer read back by id: someone who left the segment."""

    customer_id: int
    email: str | None
    first_name: str | None
    last_name: str | None
    plan_type: str | None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> Customer:
        return cls(
            customer_id=int(row["customer_id"]),
            email=_text(row.get("email")),
            first_name=_text(row.get("first_name")),
            last_name=_text(row.get("last_name")),
            plan_type=_text(row.get("plan_type")),
        )


@dataclass(frozen=True)
class Unsendable:
    """A row that cannot be sent; reason is a stable code for the results file."""

    reason: str
    detail: str
    email: str | None = None
    warnings: tuple[str, ...] = field(default=())


def _text(value: Any) -> str | None:
    """Database text as str; bytes that are not UTF-8 are decoded with replacement characters."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _is_utf8(value: bytes | bytearray) -> bool:
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def normalize_email(raw: str | None) -> str | None:
    """Trimmed and lower-cased, as Iterable matches addresses regardless of case."""
    if raw is None:
        return None
    email = raw.strip().lower()
    return email or None


def is_valid_email(email: str | None) -> bool:
    return bool(email) and len(email or "") <= MAX_EMAIL_CHARS and bool(_EMAIL.match(email or ""))


def event_id(page_view_id: int) -> str:
    """Derived from the page view's key, so a resend updates the same event in Iterable."""
    return f"{EVENT_ID_PREFIX}{int(page_view_id)}"


def event_times(value: datetime) -> tuple[str, int]:
    """The view time as an event carries it, at once: the timestamp field in Iterable's date
    format (YYYY-MM-DD HH:MM:SS +00:00, no fractional seconds) and createdAt (whole seconds
    since 1970, truncated)."""
    naive = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(" ", "seconds") + " +00:00", int((naive - _EPOCH).total_seconds())


_EPOCH = datetime.fromtimestamp(0, UTC).replace(tzinfo=None)


def _clip(name: str, value: str | None, warnings: list[str]) -> str | None:
    if value is not None and len(value) > MAX_FIELD_CHARS:
        warnings.append(f"{name} cut from {len(value)} to {MAX_FIELD_CHARS} characters")
        return value[:MAX_FIELD_CHARS]
    return value


def _fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """NULL columns are left out, not sent as null: null would blank the profile field."""
    return {k: v for k, v in values.items() if v is not None}


def build_payloads(
    row: SourceRow, candidate: str | None = None, identify_by: str = BY_EMAIL
) -> Payloads | Unsendable:
    """The users/update and events/track bodies for one row, or why it cannot be sent.

    Written out field by field: this runs once a row, and each helper call or throwaway
    dict cost a measurable share of bulk mode's CPU.
    """
    email = normalize_email(row.email)
    if row.not_utf8 and "email" in row.not_utf8:
        # A replacement character would make it some other address.
        return Unsendable(INVALID_EMAIL, "the email address is not valid UTF-8", email)
    if not is_valid_email(email):
        return Unsendable(INVALID_EMAIL, "missing or malformed email address", email)
    assert email is not None
    viewed_at = row.viewed_at
    if viewed_at is None:
        return Unsendable(MISSING_VIEW_TIME, "the page view has no time", email)
    warnings = [
        f"{name} was not valid UTF-8; the bad bytes were replaced with U+FFFD"
        for name in row.not_utf8
    ]
    first_name, last_name, page, device, location = texts = (
        row.first_name,
        row.last_name,
        row.page,
        row.device,
        row.location,
    )
    if len("".join(filter(None, texts))) > MAX_FIELD_CHARS:  # rare: cut the long ones
        first_name, last_name, page, device, location = _clipped(texts, warnings)
    # NULL columns are left out, not sent as null: null would blank the profile field.
    profile: dict[str, Any] = {}
    if first_name is not None:
        profile["first_name"] = first_name
    if last_name is not None:
        profile["last_name"] = last_name
    if row.plan_type is not None:
        profile["plan_type"] = row.plan_type
    user_fields = profile.copy()
    event_fields: dict[str, Any] = {}
    if page is not None:
        user_fields[RECENT_PAGE_VIEW] = event_fields["page"] = page
    if device is not None:
        event_fields["device"] = device
    if location is not None:
        event_fields["location"] = location
    if candidate is not None:
        user_fields[CANDIDATE] = event_fields[CANDIDATE] = candidate
    event_fields["timestamp"], created_at = event_times(viewed_at)
    # user_identity's rule, written out: this runs once a row.
    if identify_by == BY_USER_ID:
        identifier = str(row.customer_id)
        # By userId, the email travels in dataFields: that is how Iterable applies a change.
        user_fields["email"] = email
        user_update: dict[str, Any] = {"userId": identifier, "dataFields": user_fields}
        event: dict[str, Any] = {"userId": identifier}
    else:
        identifier = email
        user_update = {"email": email, "dataFields": user_fields}
        event = {"email": email}
    event["eventName"] = EVENT_NAME
    event["id"] = event_id(row.page_view_id)
    event["createdAt"] = created_at
    event["dataFields"] = event_fields
    return Payloads(email, identifier, user_update, event, profile, tuple(warnings))


CLIPPED_COLUMNS = ("first_name", "last_name", "page", "device", "location")


def _clipped(values: Sequence[str | None], warnings: list[str]) -> tuple[str | None, ...]:
    """The CLIPPED_COLUMNS, cut to Iterable's field limit (with a warning) where longer."""
    return tuple(
        _clip(name, value, warnings) for name, value in zip(CLIPPED_COLUMNS, values, strict=True)
    )


def user_fields_sent(candidate: str | None, identify_by: str) -> tuple[str, ...]:
    """Every user field build_payloads may send (each as a string), email first when it
    travels in dataFields."""
    names = (*PROFILE_FIELDS, RECENT_PAGE_VIEW, *((CANDIDATE,) if candidate is not None else ()))
    return ("email", *names) if identify_by == BY_USER_ID else names


def user_identity(customer_id: int, email: str, identify_by: str) -> dict[str, str]:
    """The part of a request that names the user: {"email": ...} or {"userId": "42"}."""
    return named(str(customer_id) if identify_by == BY_USER_ID else email, identify_by)


def named(identifier: str, identify_by: str) -> dict[str, str]:
    """The part of a request that names the user by an identifier already worked out
    (Payloads.identifier, a list member's)."""
    return {"userId": identifier} if identify_by == BY_USER_ID else {"email": identifier}


def _with_email(fields: dict[str, Any], email: str, identify_by: str) -> dict[str, Any]:
    """By userId, the email travels in dataFields: that is how Iterable applies a change."""
    return {**fields, "email": email} if identify_by == BY_USER_ID else fields


def profile_of(fields: Mapping[str, Any]) -> dict[str, Any]:
    return _fields({name: fields.get(name) for name in PROFILE_FIELDS})


def leaver_update(
    customer: Customer, email: str, identify_by: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The users/update body that brings a leaver's profile fields up to date, and those fields.

    `email` is the one Iterable holds for the customer (identify-by-email) or the current one.
    """
    warnings: list[str] = []
    fields = {
        "first_name": _clip("first_name", customer.first_name, warnings),
        "last_name": _clip("last_name", customer.last_name, warnings),
        "plan_type": customer.plan_type,
    }
    profile = profile_of(fields)
    data = _with_email(profile, email, identify_by)
    return {**user_identity(customer.customer_id, email, identify_by), "dataFields": data}, profile


_SORTED = orjson.OPT_SORT_KEYS


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON with sorted keys, in UTF-8: a request body, and the form fingerprints hash.

    Byte for byte what json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    gives, so fingerprints in existing state files stay valid, at a sixth of its CPU.
    orjson hands back its 4 KB working buffer; bodies wait in batches, so they are copied
    to size (b"%b" is the cheapest copy).
    """
    return b"%b" % orjson.dumps(payload, option=_SORTED)


def canonical_json(payload: Mapping[str, Any]) -> str:
    """encode_json as text."""
    return orjson.dumps(payload, option=_SORTED).decode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable digest of a payload: equal payloads, equal fingerprints, whatever the key order."""
    return digest(encode_json(payload))
