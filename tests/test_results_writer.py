"""The results file as ResultsWriter writes it: every row once, in order, whatever the spool's
block size, and totals counted by the results file's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

import results
from results import FAILED, LEFT_SEGMENT, SKIPPED, SUCCESS, ResultsWriter, RowResult, Summary


def mixed_results() -> list[RowResult]:
    rows = [
        RowResult(1, "ann@example.com", SUCCESS, user_update={"http_status": 200}),
        RowResult(2, "bob@example.com", FAILED, "invalid_email", detail="line\nbreak \u2028 x"),
        RowResult(3, None, FAILED, "bad_row", detail='quote " and \\ backslash'),
        RowResult(4, "zoë@example.com", SKIPPED, "unchanged", warnings=["😀 cut\r\n"]),
        RowResult(5, "lee@example.com", SUCCESS, segment=LEFT_SEGMENT),
        RowResult(
            6,
            "old@example.com",
            FAILED,
            "InvalidEmailAddressError",
            outstanding=True,
            failing_since="2026-11-20T08:00:00Z",
        ),
        RowResult(7, "kim@example.com", SUCCESS, "email_changed"),
    ]
    return rows + [RowResult(100 + n, f"u{n}@example.com", SUCCESS) for n in range(50)]


@pytest.mark.parametrize("block", [1, 2, 7, 64, 1 << 20])
def test_every_row_comes_out_once_in_order_whatever_the_block_size(tmp_path, monkeypatch, block):
    monkeypatch.setattr(results, "SPOOL_BLOCK", block)
    rows = mixed_results()
    writer = ResultsWriter(tmp_path)
    writer.add_many(rows[:3])
    for row in rows[3:]:
        writer.add(row)
    path = writer.finish({"mode": "bulk"}, datetime(2026, 12, 1, tzinfo=UTC))
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["results"] == [json.loads(json.dumps(row.to_dict())) for row in rows]
    assert written["results"][1]["detail"] == "line\nbreak \u2028 x"
    assert written["summary"]["total"] == len(rows)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_run_without_rows_has_an_empty_results_array(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "SPOOL_BLOCK", 3)
    path = ResultsWriter(tmp_path).finish({}, datetime(2026, 12, 1, tzinfo=UTC))
    assert json.loads(path.read_text(encoding="utf-8"))["results"] == []


def test_totals_count_each_row_by_the_results_file_rules():
    rows = mixed_results()
    counted = Summary()
    counted.add_many(rows)
    one_by_one = Summary()
    for row in rows:
        one_by_one.add_row(json.loads(json.dumps(row.to_dict())))
    assert counted.to_dict() == one_by_one.to_dict()
    assert (counted.succeeded, counted.failed, counted.skipped) == (53, 3, 1)
    assert (counted.outstanding, counted.left, counted.failing_since) == (
        1,
        1,
        "2026-11-20T08:00:00Z",
    )
