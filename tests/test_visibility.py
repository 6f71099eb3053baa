"""Day thirty, seen from outside: every email move, leaver, deletion and list change shows
on the console, in the log (text and JSON), in the results file and in the dry run."""

from __future__ import annotations

import json
import re

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from tests.support.data import profile_in_iterable

MOVED, DOWNGRADED, INACTIVE, DELETED, FORGOTTEN, CONFLICTED, NEWCOMER = 1, 2, 3, 6, 5, 9, 50
NEW_EMAIL = "alice.moved@example.com"
TAKEN = "taken@example.com"
UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def a_month_of_change(mariadb, sandbox, db: str) -> None:
    """An email move, an email taken by another profile, a downgrade, an inactive customer,
    a deleted one and a newcomer."""
    profile_in_iterable(sandbox.base_url, TAKEN, first_name="Someone")
    statements = [
        ("UPDATE customers SET email = %s WHERE id = %s", (NEW_EMAIL, MOVED)),
        ("UPDATE customers SET email = %s WHERE id = %s", (TAKEN, CONFLICTED)),
        ("UPDATE customers SET plan_type = 'free' WHERE id = %s", (DOWNGRADED,)),
        (
            "UPDATE page_views SET viewed_at = viewed_at - INTERVAL 60 DAY WHERE customer_id = %s",
            (INACTIVE,),
        ),
        ("DELETE FROM page_views WHERE customer_id = %s", (DELETED,)),
        ("DELETE FROM customers WHERE id = %s", (DELETED,)),
        (
            "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
            "VALUES (%s, 'newcomer@example.com', 'New', 'Comer', 'pro', UTC_TIMESTAMP())",
            (NEWCOMER,),
        ),
        (
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            "VALUES (500, %s, '/welcome', 'desktop', 'Porto', UTC_TIMESTAMP())",
            (NEWCOMER,),
        ),
    ]
    for statement, args in statements:
        mariadb.execute(statement, args, database=db)


def test_day_thirty_shows_every_change(job, sandbox, mariadb, seeded_db):
    db = seeded_db.name
    list_id = sandbox.create_list("Active pro customers")
    env = {"ITERABLE_LIST_ID": str(list_id)}
    mariadb.execute(
        "UPDATE customers SET email = 'eight@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=db,
    )
    sandbox.forget("same.second@example.com")

    first = job.run(**env)
    assert first.code == 0, first.stdout + first.stderr
    assert f"  list {list_id}: +6 subscribed\n" in first.stdout
    assert "  forgotten in Iterable: 1\n" in first.stdout
    assert first.by_customer()[MOVED]["list"] == "subscribed"

    a_month_of_change(mariadb, sandbox, db)
    calls = sandbox.stats()["total_requests"]
    dry = job.run("--dry-run", "--allow-mass-leave", **env)
    assert dry.code == 0, dry.stdout + dry.stderr
    assert sandbox.stats()["total_requests"] == calls
    would = {cid: row.get("payloads") or {} for cid, row in dry.by_customer().items()}
    assert set(would[MOVED]) >= {"update_email", "user_update"}
    assert would[MOVED]["update_email"]["newEmail"] == NEW_EMAIL
    assert would[NEWCOMER]["list_subscribe"] == {
        "listId": list_id,
        "subscribers": [{"email": "newcomer@example.com"}],
    }
    assert would[DOWNGRADED]["user_update"]["dataFields"]["plan_type"] == "free"
    assert would[DOWNGRADED]["list_unsubscribe"]["listId"] == list_id
    assert "list_unsubscribe" in would[DELETED] and "list_unsubscribe" in would[INACTIVE]

    day_thirty = job.run("--allow-mass-leave", LOG_FORMAT="json", **env)
    assert day_thirty.code == 0, day_thirty.stdout + day_thirty.stderr
    changes = day_thirty.stdout.split("changes:\n", 1)[1].split("results:", 1)[0]
    assert changes.splitlines() == [
        "  emails moved: 1 (1 conflict, left alone)",
        "  left the segment: 3 (1 profile updated, 1 deleted, 1 unchanged)",
        "  forgotten in Iterable: 1",
        f"  list {list_id}: +2 subscribed, -3 unsubscribed",
    ]
    summary = day_thirty.results["summary"]
    assert summary["changes"] == {
        "emails_moved": 1,
        "email_conflicts": 1,
        "email_old_missing": 0,
        "email_old_forgotten": 0,
        "left": 3,
        "left_updated": 1,
        "left_unchanged": 1,
        "left_deleted": 1,
        "left_held_back": 0,
        "deleted_in_iterable": 0,
        "forgotten": 1,
        "list_subscribed": 2,
        "list_unsubscribed": 3,
    }
    # The dry run counted what the real run then did; only Iterable knew of the conflict.
    foreseen = {**summary["changes"], "emails_moved": 2, "email_conflicts": 0}
    assert dry.results["summary"]["changes"] == {**foreseen, "list_subscribed": 1}

    rows = day_thirty.by_customer()
    assert rows[NEWCOMER]["list"] == "subscribed" and rows[CONFLICTED]["list"] == "subscribed"
    assert rows[DOWNGRADED]["list"] == rows[INACTIVE]["list"] == "unsubscribed"
    assert rows[DELETED]["list"] == "unsubscribed"
    assert rows[DELETED]["detail"] == (
        f"no longer in the customers table; unsubscribed from list {list_id}, nothing else sent"
    )
    assert rows[MOVED]["list"] is None  # the membership moved with the profile

    records = [json.loads(line) for line in day_thirty.stderr.splitlines()]
    conflicts = [r for r in records if "email_change_conflict" in r["message"]]
    assert [r["level"] for r in conflicts] == ["WARNING"]
    assert "customer 9: email change from " in conflicts[0]["message"]
    assert "email_change_conflict" in job.log_file.read_text()
    last = records[-1]
    assert (last["level"], last["message"]) == ("INFO", "run finished: exit code 0")
    assert last["summary"]["exit_code"] == 0
    assert last["summary"]["changes"] == summary["changes"]
    assert (last["summary"]["total"], last["summary"]["outstanding"]) == (summary["total"], 0)
    for text in (day_thirty.stderr, job.log_file.read_text()):
        assert UNMASKED_EMAIL.findall(text) == []


def test_a_deleted_customer_keeps_its_delete_call_under_its_own_name(
    job, sandbox, mariadb, seeded_db
):
    list_id = sandbox.create_list("Active pro customers")
    job.run(ITERABLE_LIST_ID=str(list_id))
    mariadb.execute(
        "DELETE FROM page_views WHERE customer_id = %s", (DELETED,), database=seeded_db.name
    )
    mariadb.execute("DELETE FROM customers WHERE id = %s", (DELETED,), database=seeded_db.name)
    run = job.run(ON_DELETED_CUSTOMER="delete", ITERABLE_LIST_ID=str(list_id))
    row = run.by_customer()[DELETED]
    assert row["delete_user"]["http_status"] == 200 and row["user_update"] is None
    assert row["list"] == "unsubscribed"
    assert row["detail"] == (
        f"deleted in Iterable (ON_DELETED_CUSTOMER=delete); unsubscribed from list {list_id}"
    )
    assert "  deleted in Iterable: 1\n" in run.stdout
    assert run.results["summary"]["changes"]["deleted_in_iterable"] == 1
