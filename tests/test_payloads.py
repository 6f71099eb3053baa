"""Payload building: row in, request bodies out; table-driven and property-based."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payloads import (
    INVALID_EMAIL,
    MAX_FIELD_CHARS,
    Payloads,
    SourceRow,
    Unsendable,
    build_payloads,
    encode_json,
    event_id,
    fingerprint,
)

# Iterable's rule for event ids: letters, digits and hyphens, at most 512 bytes.
EVENT_ID_RULE = re.compile(r"[A-Za-z0-9-]{1,512}")


def is_valid_event_id(value: str) -> bool:
    return bool(EVENT_ID_RULE.fullmatch(value)) and len(value.encode()) <= 512


VIEWED = datetime(2026, 11, 28, 9, 30, 15)  # naive, as DATETIME columns arrive; holds UTC


def row(**overrides: Any) -> SourceRow:
    values: dict[str, Any] = dict(
        customer_id=1,
        email="alice@example.com",
        first_name="Alice",
        last_name="Smith",
        plan_type="pro",
        page_view_id=42,
        page="/pricing",
        device="desktop",
        location="Berlin",
        viewed_at=VIEWED,
    )
    values.update(overrides)
    return SourceRow(**values)


def payloads(**overrides) -> Payloads:
    built = build_payloads(row(**overrides), candidate=overrides.pop("candidate", None))
    assert isinstance(built, Payloads), built
    return built


def test_user_update_body_has_exactly_the_documented_fields():
    built = build_payloads(row(), candidate="Jane Doe")
    assert isinstance(built, Payloads)
    assert built.user_update == {
        "email": "alice@example.com",
        "dataFields": {
            "first_name": "Alice",
            "last_name": "Smith",
            "plan_type": "pro",
            "recent_page_view": "/pricing",
            "candidate": "Jane Doe",
        },
    }


def test_event_body_has_exactly_the_documented_fields():
    built = build_payloads(row(), candidate="Jane Doe")
    assert isinstance(built, Payloads)
    assert built.event == {
        "email": "alice@example.com",
        "eventName": "page_view",
        "id": "page-view-42",
        "createdAt": int(datetime(2026, 11, 28, 9, 30, 15, tzinfo=UTC).timestamp()),
        "dataFields": {
            "page": "/pricing",
            "device": "desktop",
            "location": "Berlin",
            "timestamp": "2026-11-28 09:30:15 +00:00",
            "candidate": "Jane Doe",
        },
    }
    assert built.event["createdAt"] == 1795858215


def test_candidate_left_out_when_not_set():
    built = payloads()
    assert "candidate" not in built.user_update["dataFields"]
    assert "candidate" not in built.event["dataFields"]


@pytest.mark.parametrize(
    ("column", "user_field", "event_field"),
    [
        ("device", None, "device"),
        ("location", None, "location"),
        ("first_name", "first_name", None),
        ("last_name", "last_name", None),
        ("page", "recent_page_view", "page"),
    ],
)
def test_null_columns_are_left_out_not_sent_as_null(column, user_field, event_field):
    built = payloads(**{column: None})
    if user_field:
        assert user_field not in built.user_update["dataFields"]
    if event_field:
        assert event_field not in built.event["dataFields"]
    assert None not in built.user_update["dataFields"].values()
    assert None not in built.event["dataFields"].values()


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM ", "alice@example.com"),
        ("bob.smith+tag@mail.example.co.uk", "bob.smith+tag@mail.example.co.uk"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(raw, sent):
    built = payloads(email=raw)
    assert built.user_update["email"] == sent
    assert built.event["email"] == sent


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "   ",
        "not-an-email",
        "a@b",
        "a b@example.com",
        "@example.com",
        "a@@example.com",
        "alice@",
        "alice@example..com",
        "x" * 250 + "@example.com",
    ],
)
def test_missing_or_malformed_email_is_rejected_before_sending(bad):
    built = build_payloads(row(email=bad))
    assert isinstance(built, Unsendable)
    assert built.reason == INVALID_EMAIL


def test_timestamp_format_is_iterables_and_utc():
    naive = payloads(viewed_at=datetime(2026, 1, 2, 3, 4, 5, 999999)).event["dataFields"]
    assert naive["timestamp"] == "2026-01-02 03:04:05 +00:00"
    aware = datetime(2026, 1, 2, 5, 4, 5, tzinfo=UTC).astimezone()
    assert payloads(viewed_at=aware).event["dataFields"]["timestamp"] == (
        "2026-01-02 05:04:05 +00:00"
    )


def test_event_id_is_stable_and_derived_from_the_page_view_key():
    assert event_id(42) == "page-view-42"
    assert payloads().event["id"] == payloads(page="/other").event["id"]
    assert payloads(page_view_id=43).event["id"] != payloads().event["id"]


def test_over_long_values_are_cut_to_iterables_field_limit_with_a_warning():
    built = payloads(page="/p" + "x" * 40_000)
    assert len(built.event["dataFields"]["page"]) == MAX_FIELD_CHARS
    assert len(built.user_update["dataFields"]["recent_page_view"]) == MAX_FIELD_CHARS
    assert built.warnings == ("page cut from 40002 to 32000 characters",)


def test_non_ascii_values_pass_through_unchanged():
    built = payloads(first_name="José", last_name="王", page="/docs/入门")
    assert built.user_update["dataFields"]["first_name"] == "José"
    assert built.event["dataFields"]["page"] == "/docs/入门"


def test_bytes_that_are_not_utf8_are_replaced_not_crashed_on():
    source = SourceRow.from_mapping(
        {
            "customer_id": 1,
            "email": b"alice@example.com",
            "first_name": b"Jos\xe9",
            "page_view_id": 1,
            "page": "/",
            "viewed_at": VIEWED,
        }
    )
    built = build_payloads(source)
    assert isinstance(built, Payloads)
    assert built.user_update["dataFields"]["first_name"] == "Jos\ufffd"


def test_fingerprint_ignores_key_order_and_sees_every_change():
    a = {"email": "a@example.com", "dataFields": {"x": 1, "y": "2"}}
    b = {"dataFields": {"y": "2", "x": 1}, "email": "a@example.com"}
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint({**a, "dataFields": {"x": 1, "y": "3"}})


# -- properties over arbitrary row values -----------------------------------------------

optional_text = st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=50))
emails = st.one_of(st.none(), st.text(max_size=40), st.emails())
times = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)),
)


@settings(max_examples=300, deadline=None)
@given(
    email=emails,
    first=optional_text,
    last=optional_text,
    page=st.one_of(optional_text, st.integers(31_990, 32_010).map(lambda n: "/" + "p" * n)),
    device=optional_text,
    location=optional_text,
    viewed_at=times,
    page_view_id=st.integers(min_value=1, max_value=2**63 - 1),
    candidate=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
)
def test_any_row_gives_valid_payloads_or_a_stated_rejection(
    email, first, last, page, device, location, viewed_at, page_view_id, candidate
):
    source = SourceRow.from_mapping(
        {
            "customer_id": 7,
            "email": email,
            "first_name": first,
            "last_name": last,
            "plan_type": "pro",
            "page_view_id": page_view_id,
            "page": page,
            "device": device,
            "location": location,
            "viewed_at": viewed_at,
        }
    )
    built = build_payloads(source, candidate)
    if isinstance(built, Unsendable):
        assert built.reason in {"invalid_email", "missing_viewed_at"}
        return
    for body in (built.user_update, built.event):
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # always serialisable as UTF-8
        assert None not in body["dataFields"].values()
        assert all(
            len(v) <= MAX_FIELD_CHARS for v in body["dataFields"].values() if isinstance(v, str)
        )
        assert body["email"] == body["email"].strip().lower()
    event = built.event
    assert is_valid_event_id(event["id"]) and len(event["id"].encode()) <= 512
    assert isinstance(event["createdAt"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+00:00", event["dataFields"]["timestamp"])
    assert abs(event["createdAt"] - viewed_at.replace(tzinfo=UTC).timestamp()) < 1
    assert build_payloads(source, candidate) == built  # pure: same row, same payloads
    assert (candidate is None) == ("candidate" not in built.user_update["dataFields"])


@given(st.integers(min_value=0, max_value=10**100))
def test_event_ids_are_always_valid(page_view_id):
    assert is_valid_event_id(event_id(page_view_id))


def test_datetime_with_offset_is_converted_to_utc():
    tz = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    built = payloads(viewed_at=tz)
    assert built.event["dataFields"]["timestamp"] == "2026-01-01 12:00:00 +00:00"


@pytest.mark.parametrize("identify_by", ["email", "userId"])
def test_bodies_are_encoded_once_and_fingerprints_hash_those_bytes(identify_by):
    built = build_payloads(row(first_name="Zoë 🎉"), "Cand", identify_by)
    assert isinstance(built, Payloads)
    assert json.loads(built.user_bytes) == built.user_update
    assert json.loads(built.event_bytes) == built.event
    # The fingerprints the state already holds stay valid: same canonical form as before.
    assert built.user_fingerprint == fingerprint(built.user_update)
    assert built.row_fingerprint == fingerprint({"user": built.user_update, "event": built.event})
    if identify_by == "userId":
        assert built.user_update["userId"] == "1" and "email" not in built.user_update
        assert built.user_update["dataFields"]["email"] == built.email
        assert built.event["userId"] == "1" and built.identifier == "1"
    else:
        assert built.identifier == built.email == built.user_update["email"]


def standard_canonical_json(value: Any) -> bytes:
    """The canonical form earlier versions hashed, with the standard library's encoder."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(JSON_VALUES)
def test_bodies_are_byte_for_byte_the_canonical_json_state_files_already_hash(value):
    # Any text (control characters, quotes, U+2028, emoji, C1) and any key order.
    assert encode_json({"value": value}) == standard_canonical_json({"value": value})


def test_a_fingerprint_from_an_earlier_state_file_still_matches_its_row():
    built = payloads(first_name='Zoë "Z" \\ 🎉', location="tab\there\u2028")
    old_form = standard_canonical_json(built.user_update)
    assert built.user_bytes == old_form
    assert built.user_fingerprint == hashlib.sha256(old_form).hexdigest()
    whole = standard_canonical_json({"user": built.user_update, "event": built.event})
    assert built.row_fingerprint == hashlib.sha256(whole).hexdigest()


def test_bodies_waiting_in_a_batch_take_their_size_not_the_encoders_buffer():
    # A batch of 20,000 holds 40,000 bodies: 4 KB each would be 160 MB.
    tracemalloc.start()
    try:
        bodies = [encode_json({"customer": n}) for n in range(1000)]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(bodies) == 1000 and held < 1000 * 200


@given(
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30)),
    st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
def test_event_times_are_the_rows_time_in_utc_whatever_its_zone(when, zone):
    value = when if zone is None else when.replace(tzinfo=zone)
    utc = value.replace(tzinfo=UTC) if zone is None else value.astimezone(UTC)
    event = payloads(viewed_at=value).event
    assert event["createdAt"] == int(utc.timestamp())
    assert event["dataFields"]["timestamp"] == utc.strftime("%Y-%m-%d %H:%M:%S +00:00")


def documented_bodies(source: SourceRow, candidate: str | None, identify_by: str) -> tuple:
    """The two bodies as the README describes them, built the plain way: every field that
    is not NULL, the userId form carrying the email in dataFields."""

    def present(fields: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in fields.items() if value is not None}

    assert source.email is not None and source.viewed_at is not None
    email = source.email.strip().lower()
    identity = {"userId": str(source.customer_id)} if identify_by == "userId" else {"email": email}
    profile = {
        "first_name": source.first_name,
        "last_name": source.last_name,
        "plan_type": source.plan_type,
    }
    user_fields = present({**profile, "recent_page_view": source.page, "candidate": candidate})
    if identify_by == "userId":
        user_fields["email"] = email
    event_fields = present(
        {
            "page": source.page,
            "device": source.device,
            "location": source.location,
            "candidate": candidate,
            "timestamp": source.viewed_at.strftime("%Y-%m-%d %H:%M:%S +00:00"),
        }
    )
    event = {
        **identity,
        "eventName": "page_view",
        "id": f"page-view-{source.page_view_id}",
        "createdAt": int(source.viewed_at.replace(tzinfo=UTC).timestamp()),
        "dataFields": event_fields,
    }
    return {**identity, "dataFields": user_fields}, event, present(profile)


@settings(max_examples=200, deadline=None)
@given(
    first=st.one_of(st.none(), st.text(max_size=8)),
    last=st.one_of(st.none(), st.text(max_size=8)),
    plan=st.one_of(st.none(), st.sampled_from(["pro", "free"])),
    page=st.one_of(st.none(), st.text(max_size=8)),
    device=st.one_of(st.none(), st.text(max_size=8)),
    location=st.one_of(st.none(), st.text(max_size=8)),
    candidate=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    identify_by=st.sampled_from(["email", "userId"]),
)
def test_bodies_hold_every_present_field_and_nothing_else(
    first, last, plan, page, device, location, candidate, identify_by
):
    # The fingerprints in state files hash these bodies: a field more or less, or one
    # renamed, would make the next run resend every customer.
    source = row(
        first_name=first,
        last_name=last,
        plan_type=plan,
        page=page,
        device=device,
        location=location,
    )
    built = build_payloads(source, candidate, identify_by)
    assert isinstance(built, Payloads)
    user_update, event, profile = documented_bodies(source, candidate, identify_by)
    assert built.user_update == user_update
    assert built.event == event
    assert built.profile == profile
    assert built.user_fingerprint == fingerprint(user_update)


def test_a_column_left_out_of_an_edited_query_counts_as_null():
    full = {
        "customer_id": 5,
        "email": "e@example.com",
        "first_name": "E",
        "last_name": None,
        "plan_type": "pro",
        "page_view_id": 9,
        "page": "/p",
        "device": "mobile",
        "location": "Oslo",
        "viewed_at": VIEWED,
    }
    without_device = {name: value for name, value in full.items() if name != "device"}
    built = build_payloads(SourceRow.from_mapping(without_device))
    assert isinstance(built, Payloads)
    assert "device" not in built.event["dataFields"]
    assert built.event["dataFields"]["location"] == "Oslo"
    assert SourceRow.from_mapping(full).device == "mobile"
