"""The sync state file on its own: what goes in comes back, however many rows at once."""

from __future__ import annotations

import sqlite3

from sync_state import AcceptedUser, RowInsert, SyncState


def test_a_batch_bigger_than_one_statement_is_stored_whole_and_upserts_in_order(tmp_path):
    state = SyncState(tmp_path / "state.sqlite3")
    # 6 values a user: 166 fit in one statement, so 1,000 take several.
    state.users_accepted(
        [AcceptedUser(n, f"fp-{n}", f"u{n}@example.com", {"plan_type": "pro"}) for n in range(1000)]
    )
    state.events_accepted([(f"page-view-{n}", n) for n in range(1000)])
    # The same customer twice in one batch: the later profile is the one kept.
    state.users_accepted(
        [
            AcceptedUser(7, "old", "u7@example.com", {}),
            AcceptedUser(7, "new", "seven@example.com", {}),
        ]
    )
    state.close()

    state = SyncState(tmp_path / "state.sqlite3")
    keys = [(n, f"page-view-{n}") for n in range(1000)] + [(5000, "page-view-5000")]
    known = state.known_many(keys)
    assert len(known) == 1000 and 5000 not in known  # nobody stored under 5000
    assert known[999].user_fingerprint == "fp-999" and known[999].event_accepted
    assert (known[7].user_fingerprint, known[7].email) == ("new", "seven@example.com")
    state.close()


def test_customers_seen_in_a_run_are_not_taken_for_leavers(tmp_path):
    first_run = SyncState(tmp_path / "state.sqlite3")
    first_run.users_accepted([AcceptedUser(n, "fp", f"u{n}@example.com", {}) for n in range(3000)])
    first_run.close()
    state = SyncState(tmp_path / "state.sqlite3")
    state.seen_many(range(0, 3000, 2))  # more than a batch of seen rows, and one statement
    left = [member.customer_id for chunk in state.left_segment()[1] for member in chunk]
    assert sorted(left) == list(range(1, 3000, 2))
    state.close()


def test_a_first_run_looks_nothing_up_and_finds_no_leavers(tmp_path):
    # Nothing was held when the run began: the customers it sends are all of this run.
    state = SyncState(tmp_path / "state.sqlite3")
    state.users_accepted([AcceptedUser(n, "fp", f"u{n}@example.com", {}) for n in range(10)])
    state.events_accepted([(f"page-view-{n}", n) for n in range(10)])
    state.seen_many(range(5))
    assert state.known_many([(n, f"page-view-{n}") for n in range(10)]) == {}
    assert state.left_segment()[0] == 0 and state.list_members_not_seen() == []
    state.close()
    later = SyncState(tmp_path / "state.sqlite3")
    known = later.known_many([(3, "page-view-3")])
    assert known[3].user_fingerprint == "fp" and known[3].event_accepted
    later.seen_many(range(5))
    left = [member.customer_id for chunk in later.left_segment()[1] for member in chunk]
    assert left == [5, 6, 7, 8, 9]
    later.close()


def test_row_insert_cuts_rows_to_statements_sqlite_accepts():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c TEXT)")
    insert = RowInsert("INSERT INTO t (a, b, c) VALUES", 3)
    insert.run(db, [(n, str(n), "x") for n in range(2000)])  # 333 rows a statement
    insert.run(db, [])
    assert db.execute("SELECT COUNT(*), SUM(a) FROM t").fetchone() == (2000, sum(range(2000)))
