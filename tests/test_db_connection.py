"""DatabaseConnection against the real server: streaming, parameters, a slow reader."""

from __future__ import annotations

import time

import pytest

from db_connection import (
    ConnectionSettings,
    DatabaseConnection,
    ReadAhead,
    RowSource,
    load_query,
)


def settings_for(db) -> ConnectionSettings:
    return ConnectionSettings(db.host, db.port, db.user, db.password, db.name)


def test_query2_comes_from_the_sql_file():
    text = load_query("query2")
    assert "ROW_NUMBER() OVER" in text and "@plan_type" in text and "@lookback_days" in text
    assert not text.rstrip().endswith(";")


def test_parameters_are_bound_never_formatted(seeded_db):
    with DatabaseConnection(settings_for(seeded_db)) as db:
        hostile = RowSource(db, "pro' OR '1'='1", 7)
        assert list(hostile.rows()) == []
        source = RowSource(db, "pro", 7)
        assert source.count() == 7
        assert [row["customer_id"] for row in source.rows()] == [1, 2, 3, 5, 6, 8, 9]


def test_session_runs_in_utc(seeded_db):
    with DatabaseConnection(settings_for(seeded_db)) as db:
        assert db.scalar("SELECT @@session.time_zone") == "+00:00"


@pytest.fixture
def many_rows(mariadb, seeded_db):
    """20,000 pro customers with a 1 kB page each: more than socket buffers hold."""
    mariadb.execute(
        "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
        "SELECT 1000 + seq, CONCAT('bulk', seq, '@example.com'), 'Bulk', 'Row', 'pro', "
        "UTC_TIMESTAMP() FROM seq_1_to_20000",
        database=seeded_db.name,
    )
    mariadb.execute(
        "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
        "SELECT 1000 + seq, 1000 + seq, CONCAT('/p/', REPEAT('x', 1000)), 'web', NULL, "
        "UTC_TIMESTAMP() - INTERVAL 1 HOUR FROM seq_1_to_20000",
        database=seeded_db.name,
    )
    return seeded_db


def test_a_reader_that_pauses_longer_than_net_write_timeout_keeps_its_stream(mariadb, many_rows):
    # The server drops a client that stops reading for net_write_timeout seconds; make
    # that 1 s for new sessions, then pause for 3 s mid-stream as a slow API would.
    original = mariadb.execute("SELECT @@global.net_write_timeout")[0][0]
    mariadb.execute("SET GLOBAL net_write_timeout = 1")
    try:
        with DatabaseConnection(settings_for(many_rows)) as db:
            source = RowSource(db, "pro", 7)
            count = 0
            for count, _row in enumerate(source.rows(), start=1):
                if count == 100:
                    time.sleep(3)
            assert count == 20_007
    finally:
        mariadb.execute(f"SET GLOBAL net_write_timeout = {int(original)}")


def test_read_ahead_keeps_order_and_bounds_the_buffer(many_rows):
    with DatabaseConnection(settings_for(many_rows)) as db:
        rows = ReadAhead(RowSource(db, "pro", 7).rows(), size=500)
        ids = [row["customer_id"] for row in rows]
        rows.close()
    assert ids == sorted(ids) and len(ids) == 20_007
