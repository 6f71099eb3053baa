"""DatabaseConnection against the real server: streaming, parameters, a slow reader."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from db_connection import (
    ConnectionSettings,
    DatabaseConnection,
    ReadAhead,
    RowDecoder,
    RowSource,
    load_query,
)
from payloads import SourceRow, UnreadableRow, read_row


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
        assert [row.customer_id for row in source.rows()] == [1, 2, 3, 5, 6, 8, 9]


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
        rows = ReadAhead(RowSource(db, "pro", 7).chunks(100), size=500, chunk_size=100)
        ids = [row.customer_id for row in rows]
        rows.close()
    assert ids == sorted(ids) and len(ids) == 20_007


# Awkward values in every column Query 2 returns; each row must decode as the connector's
# own conversion reads it.
AWKWARD_ROWS = """
SELECT CAST(18446744073709551615 AS UNSIGNED) AS customer_id, ' Ann@Example.com ' AS email,
       NULL AS first_name, _binary X'4A6F73E9' AS last_name,
       CONVERT('Zürich ½' USING latin1) AS plan_type, 7 AS page_view_id,
       '/p/🚀?q=✓' AS page, '' AS device, NULL AS location,
       CAST('2026-01-05 12:00:00.123456' AS DATETIME(6)) AS viewed_at
UNION ALL
SELECT 2, _binary X'6162C328', 'Zoë', 'a\\0b', 'pro', 8, NULL, 'web', 'Köln',
       CAST('0000-00-00 00:00:00' AS DATETIME)
UNION ALL
SELECT 3, NULL, _binary X'5A6FC3AB', 'x', NULL, 9, '/', NULL, NULL, NULL
"""


def test_raw_rows_decode_as_the_connector_converts_them(seeded_db):
    with DatabaseConnection(settings_for(seeded_db)) as db:
        db.execute("SET SESSION sql_mode = ''")  # zero dates, as older schemas hold them
        converted = [read_row(row) for row in db.stream(AWKWARD_ROWS)]
        decoded = [
            RowDecoder(description)(values)
            for description, chunk in db.raw_chunks(AWKWARD_ROWS)
            for values in chunk
        ]
    assert decoded == converted
    first, second, third = decoded
    assert isinstance(first, SourceRow) and isinstance(second, SourceRow)
    assert first.customer_id == 2**64 - 1 and first.plan_type == "Zürich ½"
    assert first.viewed_at == datetime(2026, 1, 5, 12, 0, 0, 123456)
    assert first.last_name == "Jos\ufffd" and first.not_utf8 == ("last_name",)
    assert second.email == "ab\ufffd(" and second.viewed_at is None  # a zero date
    assert isinstance(third, SourceRow) and third.first_name == "Zoë" and third.not_utf8 == ()


def test_a_query_without_an_id_column_gives_unreadable_rows(seeded_db):
    with DatabaseConnection(settings_for(seeded_db)) as db:
        chunks = list(db.raw_chunks("SELECT 5 AS customer_id, 'a@example.com' AS email"))
    [(description, [values])] = chunks
    row = RowDecoder(description)(values)
    assert isinstance(row, UnreadableRow)
    assert row.customer_id == 5 and repr(row.error) == "KeyError('page_view_id')"


def test_a_view_time_kept_as_text_stays_text(seeded_db):
    sql = "SELECT 1 AS customer_id, 2 AS page_view_id, '2026-01-05 12:00:00' AS viewed_at"
    with DatabaseConnection(settings_for(seeded_db)) as db:
        [(description, [values])] = list(db.raw_chunks(sql))
    row = RowDecoder(description)(values)
    assert isinstance(row, SourceRow) and row.viewed_at == "2026-01-05 12:00:00"
    assert row == read_row({"customer_id": 1, "page_view_id": 2, "viewed_at": row.viewed_at})
