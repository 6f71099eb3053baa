"""Data oddities end to end: each is handled by a stated rule and recorded, never a crash.

Every test adds customers on a plan of its own ("odd") to a freshly seeded database,
bends the schema where the oddity needs it (ALTER TABLE on the test database only), runs
`main.py --plan-type odd` and reads the outcome from the sandbox store and the results
file. The rules:

- NULL first_name, last_name, page, device or location: the field is left out of
  dataFields (null would blank the profile field in Iterable); the row is sent.
- Emails are trimmed and lower-cased before anything else; NULL, empty, blank or malformed
  ones (including control characters) fail with reason `invalid_email`, nothing is sent.
- The same email on several customers after normalisation: the lowest customer id is
  sent; every other fails with reason `duplicate_email`, naming the customer sent instead.
- Bytes that are not UTF-8 (a binary column) are decoded with U+FFFD replacement
  characters and the row carries a warning; an email that is not UTF-8 fails as
  `invalid_email` instead. Other character sets are converted by the server; emoji and
  control characters in names and pages are sent as they are (JSON-escaped on the wire).
- A value over 32,000 characters is cut to 32,000 and the row's results carry a warning.
- A page view without a time never qualifies: Query 2's window leaves it out.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from iterable_client import IterableClient
from payloads import read_row
from results import ResultsWriter
from sandbox import DEFAULT_API_KEY
from sync import Syncer

PLAN = "odd"
RECENT = "UTC_TIMESTAMP() - INTERVAL 1 HOUR"


class Rows:
    """Adds customers with one page view each to the test database, as the admin user."""

    def __init__(self, mariadb, database) -> None:
        self.mariadb = mariadb
        self.name = database.name

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self.mariadb.execute(statement, params or None, database=self.name)

    def add(
        self,
        customer_id: int,
        email: Any,
        *,
        first_name: Any = "First",
        last_name: Any = "Last",
        page: Any = "/page",
        device: Any = "desktop",
        location: Any = "Berlin, DE",
        viewed_at: str = RECENT,
        page_view_id: int | None = None,
    ) -> int:
        self.sql(
            "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
            "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP())",
            (customer_id, email, first_name, last_name, PLAN),
        )
        view_id = page_view_id or customer_id * 10
        self.view(customer_id, view_id, page, device, location, viewed_at)
        return view_id

    def view(
        self,
        customer_id: int,
        view_id: int,
        page: Any = "/page",
        device: Any = "desktop",
        location: Any = "Berlin, DE",
        viewed_at: str = RECENT,
    ) -> None:
        self.sql(
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            f"VALUES (%s, %s, %s, %s, %s, {viewed_at})",
            (view_id, customer_id, page, device, location),
        )


@pytest.fixture
def rows(mariadb, seeded_db) -> Rows:
    return Rows(mariadb, seeded_db)


def run_odd(job, *args: str, **env: str):
    run = job.run("--plan-type", PLAN, *args, **env)
    assert "Traceback" not in run.stderr + run.stdout
    assert run.results_path is not None, run.stderr
    return run


def outcome(row: dict[str, Any]) -> tuple[str, str | None]:
    return row["status"], row["reason"]


# -- NULLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_nulls_in_every_nullable_column_are_left_out(job, sandbox, rows, mode):
    rows.sql("ALTER TABLE page_views MODIFY page VARCHAR(2048) NULL")
    rows.add(
        100, "all.null@example.com", first_name=None, last_name=None, device=None, location=None
    )
    rows.add(101, "null.page@example.com", page=None)
    run = run_odd(job, "--mode", mode)
    assert run.code == 0, run.stdout + run.stderr
    assert {cid: outcome(r) for cid, r in run.by_customer().items()} == {
        100: ("success", None),
        101: ("success", None),
    }
    users, events = sandbox.users(), sandbox.events()
    assert users["all.null@example.com"] == {"plan_type": PLAN, "recent_page_view": "/page"}
    assert set(events["page-view-1000"]["dataFields"]) == {"page", "timestamp"}
    assert users["null.page@example.com"] == {
        "first_name": "First",
        "last_name": "Last",
        "plan_type": PLAN,
    }
    assert set(events["page-view-1010"]["dataFields"]) == {"device", "location", "timestamp"}
    for fields in [*users.values(), *(e["dataFields"] for e in events.values())]:
        assert None not in fields.values()


def test_null_empty_and_blank_emails_fail_as_invalid(job, sandbox, rows):
    rows.sql("ALTER TABLE customers MODIFY email VARCHAR(255) NULL")
    rows.sql("ALTER TABLE customers DROP INDEX uq_customers_email")
    rows.add(100, None)
    rows.add(101, "")
    rows.add(102, "   ")
    rows.add(103, "fine@example.com")
    run = run_odd(job)
    assert run.code == 1
    by_customer = run.by_customer()
    for cid in (100, 101, 102):
        row = by_customer[cid]
        assert outcome(row) == ("failed", "invalid_email")
        assert row["user_update"] is None and row["event_track"] is None
    assert by_customer[100]["email"] is None
    assert outcome(by_customer[103]) == ("success", None)
    assert list(sandbox.users()) == ["fine@example.com"]
    assert sandbox.request_count() == 2  # one update and one event, for customer 103 only
    assert "failed:invalid_email: 3" in run.stdout


# -- emails ---------------------------------------------------------------------------------


def test_spaces_and_mixed_case_are_normalised_before_sending(job, sandbox, rows):
    rows.add(100, "  Mixed.Case@Example.COM  ")
    rows.add(101, "\tTAB.AND.NEWLINE@EXAMPLE.ORG\n")
    run = run_odd(job)
    assert run.code == 0, run.stdout
    by_customer = run.by_customer()
    assert by_customer[100]["email"] == "mixed.case@example.com"
    assert by_customer[101]["email"] == "tab.and.newline@example.org"
    assert set(sandbox.users()) == {"mixed.case@example.com", "tab.and.newline@example.org"}
    assert sandbox.events()["page-view-1000"]["email"] == "mixed.case@example.com"


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("x" * 243 + "@example.com", "255 characters, over the 254 limit"),
        ("two words@example.com", "inner space"),
        ("no-at-sign.example.com", "no @"),
        ("a@b@example.com", "two @"),
        ("user@localhost", "no dot in the domain"),
        ("josé@exämple.com", "non-ASCII domain"),
        ("bell\x07@example.com", "control character"),
        ("nul\x00@example.com", "NUL byte"),
        ("forged@example.com\n2026-01-01 ERROR x", "newline inside"),
    ],
)
def test_malformed_emails_fail_as_invalid_and_send_nothing(job, sandbox, rows, raw, label):
    rows.add(100, raw)
    run = run_odd(job)
    assert run.code == 1, label
    assert outcome(run.by_customer()[100]) == ("failed", "invalid_email"), label
    assert sandbox.request_count() == 0, label


def test_an_email_never_forges_a_log_line(job, sandbox, rows):
    rows.add(100, "forged@example.com\n2026-01-01T00:00:00.000Z ERROR   iterable_sync: pwned")
    run_odd(job, "--log-level", "DEBUG")
    log_lines = job.log_file.read_text().splitlines()
    assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in log_lines)
    timestamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert all(timestamp.match(line) for line in log_lines), log_lines


def test_a_non_ascii_local_part_is_sent(job, sandbox, rows):
    rows.add(100, "José@Example.com")
    run = run_odd(job)
    assert outcome(run.by_customer()[100]) == ("success", None)
    assert list(sandbox.users()) == ["josé@example.com"]


# -- duplicates -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_duplicate_emails_send_the_lowest_customer_id(job, sandbox, rows, mode):
    rows.sql("ALTER TABLE customers DROP INDEX uq_customers_email")
    # Inserted out of order: the rule is the customer id, not the insertion order.
    rows.add(112, "DUP@example.com ", first_name="Third")
    rows.add(110, "Dup@Example.com", first_name="First")
    rows.add(111, " dup@example.com", first_name="Second")
    rows.add(120, "same@example.com", first_name="Same A")
    rows.add(121, "same@example.com", first_name="Same B")
    run = run_odd(job, "--mode", mode)
    assert run.code == 1
    by_customer = run.by_customer()
    assert outcome(by_customer[110]) == ("success", None)
    assert outcome(by_customer[120]) == ("success", None)
    for cid, first in ((111, 110), (112, 110), (121, 120)):
        row = by_customer[cid]
        assert outcome(row) == ("failed", "duplicate_email")
        assert row["detail"] == f"customer {first} has the same email and was sent instead"
        assert row["user_update"] is None and row["event_track"] is None
    assert sandbox.users()["dup@example.com"]["first_name"] == "First"
    assert sandbox.users()["same@example.com"]["first_name"] == "Same A"
    assert set(sandbox.events()) == {"page-view-1100", "page-view-1200"}
    assert sandbox.user_writes() == {"dup@example.com": 1, "same@example.com": 1}

    calls = sandbox.stats()["total_requests"]
    again = run_odd(job, "--mode", mode).by_customer()
    assert outcome(again[110]) == ("skipped", "unchanged")
    assert outcome(again[111]) == ("failed", "duplicate_email")
    assert sandbox.stats()["total_requests"] == calls


def test_a_rejected_first_customer_does_not_claim_the_email(job, sandbox, rows):
    """Only a row that can be sent claims its email: the next customer is sent instead."""
    rows.sql("ALTER TABLE customers DROP INDEX uq_customers_email")
    rows.add(100, "claimed@example.com\x07")  # invalid: a control character survives trimming
    rows.add(101, "Claimed@example.com")
    by_customer = run_odd(job).by_customer()
    assert outcome(by_customer[100]) == ("failed", "invalid_email")
    assert outcome(by_customer[101]) == ("success", None)


# -- bytes and characters -------------------------------------------------------------------


def test_odd_bytes_and_characters(job, sandbox, rows):
    rows.sql("ALTER TABLE customers MODIFY first_name VARBINARY(100) NULL")
    rows.sql("ALTER TABLE page_views MODIFY device VARCHAR(64) CHARACTER SET latin1 NULL")
    rows.add(100, "latin1.bytes@example.com", first_name=b"Jos\xe9")  # latin-1, not UTF-8
    rows.add(101, "broken.utf8@example.com", first_name=b"ab\xc3\x28cd")
    rows.add(102, "good.bytes@example.com", first_name="Zoë".encode())
    rows.add(103, "latin1.column@example.com", device="Zürich-Tablet ½")
    rows.add(104, "emoji@example.com", last_name="Smile 😀🇩🇪", page="/p/🚀?q=✓")
    control = "a\x00b\x07c\x1b[31md\x7f"
    rows.add(105, "control@example.com", last_name=control, page="/p\nq\tr\r\n")
    run = run_odd(job)
    assert run.code == 0, run.stdout + run.stderr
    assert {outcome(r) for r in run.by_customer().values()} == {("success", None)}
    users, events = sandbox.users(), sandbox.events()
    assert users["latin1.bytes@example.com"]["first_name"] == "Jos\ufffd"
    assert users["broken.utf8@example.com"]["first_name"] == "ab\ufffd(cd"
    assert users["good.bytes@example.com"]["first_name"] == "Zoë"
    by_customer = run.by_customer()
    replaced = ["first_name was not valid UTF-8; the bad bytes were replaced with U+FFFD"]
    assert by_customer[100]["warnings"] == replaced
    assert by_customer[101]["warnings"] == replaced
    assert "warnings" not in by_customer[102]  # binary, but valid UTF-8
    assert events["page-view-1030"]["dataFields"]["device"] == "Zürich-Tablet ½"
    assert users["emoji@example.com"]["last_name"] == "Smile 😀🇩🇪"
    assert events["page-view-1040"]["dataFields"]["page"] == "/p/🚀?q=✓"
    assert users["control@example.com"]["last_name"] == control
    assert events["page-view-1050"]["dataFields"]["page"] == "/p\nq\tr\r\n"


def test_an_email_that_is_not_utf8_is_invalid_not_replaced(job, sandbox, rows):
    rows.sql("ALTER TABLE customers MODIFY email VARBINARY(255) NOT NULL")
    rows.add(100, b"jos\xe9@example.com")  # latin-1 bytes: replaced, it would be another address
    rows.add(101, "josé@example.com".encode())
    by_customer = run_odd(job).by_customer()
    assert outcome(by_customer[100]) == ("failed", "invalid_email")
    assert by_customer[100]["detail"] == "the email address is not valid UTF-8"
    assert outcome(by_customer[101]) == ("success", None)
    assert list(sandbox.users()) == ["josé@example.com"]


# -- long values ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_values_over_32000_characters_are_cut_with_a_warning(job, sandbox, rows, mode):
    rows.sql("ALTER TABLE page_views MODIFY page MEDIUMTEXT NOT NULL")
    rows.sql("ALTER TABLE customers MODIFY first_name MEDIUMTEXT NULL")
    rows.sql("ALTER TABLE page_views MODIFY location MEDIUMTEXT NULL")
    rows.add(100, "long.page@example.com", page="/" + "p" * 39_999)
    rows.add(101, "long.name@example.com", first_name="é" * 40_000, location="😀" * 32_001)
    rows.add(102, "exactly@example.com", page="/" + "x" * 31_999)
    run = run_odd(job, "--mode", mode)
    assert run.code == 0, run.stdout
    by_customer = run.by_customer()
    assert by_customer[100]["warnings"] == ["page cut from 40000 to 32000 characters"]
    assert by_customer[101]["warnings"] == [
        "first_name cut from 40000 to 32000 characters",
        "location cut from 32001 to 32000 characters",
    ]
    assert "warnings" not in by_customer[102]  # exactly 32,000 is kept whole
    users, events = sandbox.users(), sandbox.events()
    assert users["long.page@example.com"]["recent_page_view"] == "/" + "p" * 31_999
    assert events["page-view-1000"]["dataFields"]["page"] == "/" + "p" * 31_999
    assert users["long.name@example.com"]["first_name"] == "é" * 32_000
    assert events["page-view-1010"]["dataFields"]["location"] == "😀" * 32_000
    assert len(users["exactly@example.com"]["recent_page_view"]) == 32_000


# -- page view times ------------------------------------------------------------------------


def test_a_page_view_without_a_time_never_qualifies(job, sandbox, rows):
    rows.sql("ALTER TABLE page_views MODIFY viewed_at DATETIME NULL")
    rows.add(100, "only.null.time@example.com", viewed_at="NULL")
    rows.add(101, "null.and.recent@example.com", page="/recent", page_view_id=1010)
    rows.view(101, 1011, page="/no-time", viewed_at="NULL")
    run = run_odd(job)
    assert run.code == 0
    by_customer = run.by_customer()
    assert set(by_customer) == {101}  # customer 100 is not even read
    assert set(sandbox.events()) == {"page-view-1010"}
    assert sandbox.users()["null.and.recent@example.com"]["recent_page_view"] == "/recent"


def test_a_page_view_in_the_future_is_sent_with_its_own_time(job, sandbox, rows):
    rows.add(100, "clock.skew@example.com", viewed_at="UTC_TIMESTAMP() + INTERVAL 1 DAY")
    run = run_odd(job)
    assert outcome(run.by_customer()[100]) == ("success", None)
    event = sandbox.events()["page-view-1000"]
    assert event["createdAt"] > time.time() + 20 * 3600  # sent unchanged, not clamped


# -- ids past 2^63, and rows that break an assumption --------------------------------------

BIG_ID = 2**64 - 1  # the largest BIGINT UNSIGNED


def widen_ids_to_bigint_unsigned(rows: Rows) -> None:
    rows.sql("ALTER TABLE page_views DROP FOREIGN KEY fk_page_views_customer")
    rows.sql("ALTER TABLE customers MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT")
    rows.sql(
        "ALTER TABLE page_views MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, "
        "MODIFY customer_id BIGINT UNSIGNED NOT NULL"
    )


@pytest.mark.parametrize("identify_by", ["email", "userId"])
@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_ids_up_to_two_to_the_64_work_end_to_end(job, sandbox, rows, mode, identify_by):
    widen_ids_to_bigint_unsigned(rows)
    rows.add(BIG_ID, "biggest@example.com", page_view_id=BIG_ID)
    rows.add(2**63, "past-signed@example.com", page_view_id=2**63)
    env = {"ITERABLE_IDENTIFY_BY": identify_by}
    first = run_odd(job, "--mode", mode, **env)
    assert first.code == 0, first.stdout + first.stderr
    results = first.by_customer()
    assert outcome(results[BIG_ID]) == ("success", None)
    assert outcome(results[2**63]) == ("success", None)
    assert {f"page-view-{BIG_ID}", f"page-view-{2**63}"} <= set(sandbox.events())
    if identify_by == "userId":
        assert str(BIG_ID) in sandbox.user_ids()
    # The state kept them: the second run sends nothing.
    calls = sandbox.stats()["total_requests"]
    second = run_odd(job, "--mode", mode, **env)
    assert outcome(second.by_customer()[BIG_ID]) == ("skipped", "unchanged")
    assert sandbox.stats()["total_requests"] == calls


def test_a_row_that_breaks_an_assumption_fails_alone_and_the_run_goes_on(job, sandbox, rows):
    # A view time kept as text: the driver hands over strings, not datetimes.
    rows.sql("ALTER TABLE page_views MODIFY viewed_at VARCHAR(40) NOT NULL")
    rows.add(9001, "text-time@example.com")
    run = run_odd(job)
    assert run.code == 1
    row = run.by_customer()[9001]
    assert outcome(row) == ("failed", "bad_row")
    assert row["detail"].startswith("AttributeError: ") and "\n" not in row["detail"]
    assert run.results["run"]["aborted"] is None
    assert sandbox.stats()["total_requests"] == 0


def test_a_plan_type_no_customer_has_is_named_with_the_ones_that_exist(job, sandbox):
    run = job.run("--plan-type", "premium")
    assert run.code == 0  # no rows is not a failure of the run ...
    warnings = [line for line in run.stderr.splitlines() if "PLAN_TYPE" in line]
    assert len(warnings) == 1  # ... but it says so, in one line
    assert "PLAN_TYPE 'premium' matches no customer; the plan types there are: " in warnings[0]
    assert "free" in warnings[0] and "pro" in warnings[0]
    check = job.run("--check", "--plan-type", "premium")
    assert check.code == 3
    assert "database: FAILED: PLAN_TYPE 'premium' matches no customer" in check.stdout


def test_the_other_rows_of_a_run_are_sent_around_a_bad_one(sandbox, tmp_path):
    good = {
        "customer_id": 1,
        "email": "good@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "plan_type": "pro",
        "page_view_id": 10,
        "page": "/a",
        "device": None,
        "location": None,
        "viewed_at": datetime(2026, 1, 5, 12, 0),
    }
    bad = {**good, "customer_id": 2, "email": "bad@example.com", "viewed_at": "yesterday"}
    later = {**good, "customer_id": 3, "email": "later@example.com", "page_view_id": 30}
    writer = ResultsWriter(tmp_path)
    with IterableClient(DEFAULT_API_KEY, sandbox.base_url) as client:
        Syncer(client=client, writer=writer).run_single(
            map(read_row, [good, bad, later]), concurrency=2
        )
    results = json.loads(writer.finish({}, datetime.now(UTC)).read_text())
    by_id = {row["customer_id"]: row for row in results["results"]}
    assert outcome(by_id[2]) == ("failed", "bad_row")
    assert outcome(by_id[1]) == outcome(by_id[3]) == ("success", None)
    assert set(sandbox.users()) == {"good@example.com", "later@example.com"}


def test_duplicates_are_found_across_the_chunks_rows_are_planned_in(sandbox, tmp_path):
    # 1,000 rows, planned 400 at a time; every email comes back once in a later chunk and
    # once twice in the same chunk.
    def row(customer_id: int, email: str) -> dict[str, Any]:
        return {
            "customer_id": customer_id,
            "email": email,
            "first_name": None,
            "last_name": None,
            "plan_type": "pro",
            "page_view_id": customer_id * 10,
            "page": "/p",
            "device": None,
            "location": None,
            "viewed_at": datetime(2026, 1, 5, 12, 0),
        }

    firsts = [row(n, f"user{n}@example.com") for n in range(1, 501)]
    again = [row(1000 + n, f"user{n}@example.com") for n in range(1, 500)]
    twice_in_a_chunk = [row(2000, "late@example.com"), row(2001, "late@example.com")]
    writer = ResultsWriter(tmp_path)
    with IterableClient(DEFAULT_API_KEY, sandbox.base_url) as client:
        Syncer(client=client, writer=writer).run_bulk(
            map(read_row, firsts + again + twice_in_a_chunk),
            batch_size=1000,
            events_batch_size=1000,
        )
    results = json.loads(writer.finish({}, datetime.now(UTC)).read_text())
    by_id = {r["customer_id"]: r for r in results["results"]}
    assert len(by_id) == 1001
    assert all(outcome(by_id[n]) == ("success", None) for n in [*range(1, 501), 2000])
    assert all(outcome(by_id[1000 + n]) == ("failed", "duplicate_email") for n in range(1, 500))
    assert by_id[1499]["detail"] == "customer 499 has the same email and was sent instead"
    assert outcome(by_id[2001]) == ("failed", "duplicate_email")
    assert by_id[2001]["detail"] == "customer 2000 has the same email and was sent instead"
    assert len(sandbox.users()) == 501 and len(sandbox.events()) == 501
