"""The HTML run report: pure rendering, the `main.py report` command, and a real browser."""

from __future__ import annotations

import copy
import csv
import html
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from logger_config import mask_email
from report import (
    CSV_COLUMNS,
    OPEN_LIMIT,
    collect_rows,
    default_output,
    render_report,
    run_status,
)
from results import Summary
from tests.support.prerequisites import prerequisite_missing

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT = 60
# An address with at least two characters before the @ is a full one; masked ones have `x***@`.
FULL_EMAIL = re.compile(r"[\w.+-]{2,}@[\w-]+\.[\w.-]+")


def success_row(customer_id: int, email: str, attempts: int = 1) -> dict:
    step = {"http_status": 200, "code": "Success", "msg": "", "elapsed_seconds": 0.05}
    return {
        "customer_id": customer_id,
        "email": email,
        "segment": "in",
        "status": "success",
        "reason": None,
        "user_update": {**step, "attempts": attempts},
        "event_track": {**step, "attempts": 1},
    }


def malformed_row(customer_id: int, email: str) -> dict:
    """A row the job refused to send: its email is not an address."""
    return {
        "customer_id": customer_id,
        "email": email,
        "segment": "in",
        "status": "failed",
        "reason": "invalid_email",
        "user_update": None,
        "event_track": None,
        "detail": "missing or malformed email address",
    }


SAMPLE = {
    "run": {
        "started_at": "2026-11-29T12:00:00+00:00",
        "finished_at": "2026-11-29T12:00:03+00:00",
        "duration_seconds": 3.2,
        "dry_run": False,
        "mode": "single",
        "concurrency": 32,
        "full_refresh": False,
        "plan_type": "pro",
        "lookback_days": 7,
        "database": "127.0.0.1:3306/demo",
        "iterable_base_url": "https://api.iterable.com",
        "rows_read": 6,
        "aborted": None,
        "stopped_by_signal": False,
        "api": {
            "requests": {
                "users/update": {"200": 3, "400": 1, "503": 1},
                "events/track": {"200": 3},
            },
            "retries": {"users/update": 1},
            "seconds": {"users/update": 0.52, "events/track": 0.41},
        },
        "version": "0.1.0",
    },
    "summary": {
        "total": 6,
        "succeeded": 3,
        "failed": 2,
        "skipped": 1,
        "outstanding": 0,
        "left": 0,
        "by_reason": {
            "failed:InvalidEmailAddressError": 1,
            "failed:invalid_email": 1,
            "skipped:unchanged": 1,
        },
    },
    "results": [
        success_row(1, "alice@example.com", attempts=2),
        success_row(2, "dan@example.com"),
        success_row(4, "eve@example.com"),
        malformed_row(7, "not-an-email"),
        {
            "customer_id": 9,
            "email": "bob@example.com",
            "segment": "in",
            "status": "failed",
            "reason": "InvalidEmailAddressError",
            "user_update": {
                "http_status": 400,
                "code": "InvalidEmailAddressError",
                "msg": "Invalid email: bob@example.com",
                "attempts": 1,
                "elapsed_seconds": 0.01,
                "error": "HTTP 400 InvalidEmailAddressError",
            },
            "event_track": None,
        },
        {
            "customer_id": 3,
            "email": "carol@example.com",
            "segment": "in",
            "status": "skipped",
            "reason": "unchanged",
            "user_update": {"skipped": "unchanged"},
            "event_track": {"skipped": "unchanged"},
            "warnings": ["page cut from 40000 to 32000 characters"],
        },
    ],
}

ABORTED = {
    "run": {
        "started_at": "2026-11-29T12:00:00+00:00",
        "finished_at": None,
        "aborted": "database connection lost",
    },
    "summary": {"total": 0, "succeeded": 0, "failed": 0, "skipped": 0, "by_reason": {}},
    "results": [],
}


def sample() -> dict:
    return copy.deepcopy(SAMPLE)


def section(page: str, section_id: str) -> str:
    """The HTML of one <section id=...>, so assertions look in the right table."""
    match = re.search(rf'<section class="panel[^"]*" id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def table_rows(page: str, table_id: str) -> list[str]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, f"no table {table_id}"
    return re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)


def cells(row_html: str) -> list[list[str]]:
    """Each <td>'s words, tags stripped."""
    found = re.findall(r"<td.*?>(.*?)</td>", row_html, re.S)
    return [
        html.unescape(re.sub(r"<[^>]+>", " ", cell)).replace("\u00d7", "x").split()
        for cell in found
    ]


def card(page: str, kind: str) -> tuple[str, str]:
    """A headline card's number and its line underneath, as text."""
    match = re.search(rf'id="count-{kind}">([^<]*)</div><div class="sub">(.*?)</div>', page, re.S)
    assert match, f"no card {kind}"
    return match.group(1), html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))


def failed_row(customer_id: int, reason: str, email: str, msg: str = "") -> dict:
    return {
        "customer_id": customer_id,
        "email": email,
        "segment": "in",
        "status": "failed",
        "reason": reason,
        "user_update": {"http_status": 400, "code": reason, "msg": msg, "attempts": 1},
        "event_track": None,
    }


def outstanding_row(customer_id: int, email: str, since: str) -> dict:
    """A row that failed before with the same data: still failed, marked outstanding."""
    return {**malformed_row(customer_id, email), "outstanding": True, "failing_since": since}


def with_rows(rows: list[dict]) -> dict:
    """SAMPLE's run with these rows and the summary the job would write for them."""
    results = sample()
    summary = Summary()
    for row in rows:
        summary.add_row(row)
    results["results"] = rows
    results["summary"] = summary.to_dict()
    results["run"]["rows_read"] = len(rows)
    return results


# --- rendering ---------------------------------------------------------------------------------


def test_summary_cards_and_split_bar():
    page = render_report(sample())
    expected = {"total": 6, "succeeded": 3, "failed": 2, "outstanding": 0, "skipped": 1}
    for kind, value in expected.items():
        assert f'id="count-{kind}">{value}<' in page
    assert card(page, "failed") == ("2", "33.3 % of rows")
    assert card(page, "outstanding") == ("0", "0 % of rows")
    assert 'class="seg seg-succeeded" style="width:50.00%"' in page
    assert 'class="seg seg-failed" style="width:33.33%"' in page
    assert 'class="seg seg-skipped" style="width:16.67%"' in page
    assert "seg-outstanding" not in page.split('class="legend"')[0].split('class="bar"')[1]


def test_counts_follow_the_rows_by_the_results_file_rules():
    results = sample()
    results["results"] += [
        outstanding_row(11, "gail@example.com", "2026-11-20T08:00:00+00:00"),
        {**success_row(12, "hal@example.com"), "status": "weird"},  # neither: counts as skipped
        "not a row",
    ]
    results["summary"] = {"total": 999, "failed": 0}  # a stale or hand-edited summary
    expected = Summary()
    for row in results["results"]:
        if isinstance(row, dict):
            expected.add_row(row)
    page = render_report(results)
    assert card(page, "total")[0] == str(expected.total) == "8"
    assert card(page, "succeeded")[0] == str(expected.succeeded)
    assert card(page, "failed")[0] == str(expected.new_failures) == "2"
    assert card(page, "outstanding")[0] == str(expected.outstanding) == "1"
    assert card(page, "skipped")[0] == str(expected.skipped) == "2"


def test_header_shows_status_and_run_settings():
    page = render_report(sample())
    assert 'class="badge badge-failed" id="run-status">rows failed<' in page
    assert "2026-11-29 12:00:00 UTC" in page
    assert "3.2 s" in page
    assert "127.0.0.1:3306/demo" in page
    assert "dry run</span>" not in page


def summary_of(failed: int = 0, outstanding: int = 0) -> Summary:
    return Summary(total=failed + 1, succeeded=1, failed=failed, outstanding=outstanding)


@pytest.mark.parametrize(
    ("run", "summary", "expected"),
    [
        ({}, summary_of(), "ok"),
        ({}, summary_of(failed=3), "rows failed"),
        ({}, summary_of(failed=3, outstanding=3), "outstanding"),
        ({}, summary_of(failed=3, outstanding=1), "rows failed"),
        ({"aborted": "database connection lost"}, summary_of(), "aborted"),
        ({"stopped_by_signal": True}, summary_of(failed=3), "aborted"),
    ],
)
def test_run_status(run, summary, expected):
    assert run_status(run, summary).label == expected


def test_dry_run_gets_its_own_badge():
    results = sample()
    results["run"]["dry_run"] = True
    assert '<span class="badge badge-dry">dry run</span>' in render_report(results)


def test_the_page_is_self_contained_with_the_style_inlined():
    page = render_report(sample())
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r"<style>\s*:root\{", page)
    assert ".badge-outstanding{" in page
    assert "<link" not in page and "<script" not in page
    assert "$" not in page  # every template placeholder was filled


def test_failures_grouped_by_reason_with_masked_rows():
    failures = table_rows(render_report(sample()), "failures-table")
    assert len(failures) == 2
    api_error, local_error = failures
    assert "InvalidEmailAddressError" in api_error
    assert cells(api_error)[1] == ["1"]
    assert "#9" in api_error
    assert "b***@example.com" in api_error
    assert "HTTP 400" in api_error
    assert "Invalid email: b***@example.com" in api_error
    assert "invalid_email" in local_error
    assert "#7" in local_error
    assert "n***" in local_error
    assert "missing or malformed email address" in local_error


def test_skipped_grouped_by_reason():
    skipped = table_rows(render_report(sample()), "skipped-table")
    assert [cells(row)[:2] for row in skipped] == [[["unchanged"], ["1"]]]


def test_no_full_email_anywhere_in_the_page():
    results = sample()
    results["run"]["aborted"] = "Iterable rejected dave@example.org"
    results["results"][5]["warnings"].append("duplicate of erin@example.net")
    results["results"][3]["detail"] = "looks like frank@example.com"
    results["results"].append(
        {
            **outstanding_row(11, "gail@example.com", "2026-11-20T08:00:00+00:00"),
            "previous_email": "gail.old@example.com",
            "detail": "rejected gail@example.com",
        }
    )
    page = render_report(results)
    assert FULL_EMAIL.findall(page) == []
    for address in ("alice", "bob@", "carol", "dave@", "erin@", "frank@", "gail", "not-an-email"):
        assert address not in page


def test_every_failed_row_is_listed_not_just_a_few():
    rows = [
        failed_row(i, "InvalidEmailAddressError", f"user{i}@example.com", f"Invalid user{i}@x.io")
        for i in range(200)
    ] + [failed_row(500, "ForgottenUserError", "zed@example.com")]
    page = render_report(with_rows(rows))
    big, small = table_rows(page, "failures-table")
    assert cells(big)[:2] == [["InvalidEmailAddressError"], ["200"]]
    assert big.count("<li>") == 200
    for i in range(200):
        assert f'<span class="cid">#{i}</span><span class="email">u***@example.com</span>' in big
    assert "more</li>" not in page
    # A long list starts folded, a short one open.
    assert "<details><summary>200 rows</summary>" in big
    assert "<details open><summary>1 row</summary>" in small
    assert OPEN_LIMIT < 200
    assert FULL_EMAIL.findall(page) == []


def test_reasons_sorted_by_count():
    results = sample()
    results["results"] = [failed_row(i, "Rare", f"r{i}@example.com") for i in range(2)] + [
        failed_row(i, "Common", f"c{i}@example.com") for i in range(5)
    ]
    rows = table_rows(render_report(results), "failures-table")
    assert ["Common" in rows[0], "Rare" in rows[1]] == [True, True]


def test_long_messages_are_cut_after_masking():
    results = sample()
    results["results"] = [
        failed_row(1, "Bad", "a@example.com", "x" * 150 + " gina@example.com"),
        failed_row(2, "Bad", "b@example.com", "y" * 150 + " hal@example.com"),
    ]
    page = render_report(results)
    assert "gina" not in page and "hal@" not in page
    assert page.count("\u2026") == 2


def test_a_cause_shared_by_a_group_of_failures_is_said_once_in_full():
    results = day_thirty()
    page = render_report(results)
    [group] = [row for row in table_rows(page, "failures-table") if "TypesMismatched" in row]
    assert group.count("already exists for type") == 1
    assert "has a data type of &#x27;string&#x27; but possible types &#x27;long&#x27;" in group
    assert "#41" in group and "#42" in group


# --- outstanding rows and leavers --------------------------------------------------------------


def test_outstanding_rows_alone_are_amber_never_ok():
    results = with_rows(
        [
            success_row(1, "alice@example.com"),
            outstanding_row(7, "not-an-email", "2026-11-20T08:00:00+00:00"),
            outstanding_row(8, "bad@@example.com", "2026-11-02T09:30:00+00:00"),
        ]
    )
    page = render_report(results)
    assert 'class="badge badge-outstanding" id="run-status">outstanding<' in page
    assert 'class="badge badge-ok"' not in page and 'class="badge badge-failed"' not in page
    assert re.search(r'class="alert alert-outstanding" role="alert">No new failures', page)
    assert card(page, "failed")[0] == "0"
    assert card(page, "outstanding") == ("2", "66.7 % of rows")
    assert "No new failures." in section(page, "failures")
    assert 'class="seg seg-outstanding" style="width:66.67%"' in page

    panel = section(page, "outstanding")
    assert '<section class="panel panel-outstanding" id="outstanding">' in page
    assert '<strong id="outstanding-rows">2</strong> rows failed on an earlier run' in panel
    oldest, newer = table_rows(page, "outstanding-table")  # oldest first
    assert cells(oldest)[:4] == [
        ["#8"],
        ["b***@example.com"],
        ["invalid_email"],
        ["2026-11-02", "09:30:00", "UTC"],
    ]
    assert cells(newer)[:4] == [
        ["#7"],
        ["n***"],
        ["invalid_email"],
        ["2026-11-20", "08:00:00", "UTC"],
    ]
    assert "missing or malformed email address" in newer


def test_new_failures_and_outstanding_rows_are_kept_apart():
    results = with_rows(
        [
            failed_row(9, "InvalidEmailAddressError", "bob@example.com"),
            outstanding_row(7, "not-an-email", "2026-11-20T08:00:00+00:00"),
        ]
    )
    page = render_report(results)
    assert 'id="run-status">rows failed<' in page
    (new,) = table_rows(page, "failures-table")
    assert "#9" in new and "#7" not in new
    (old,) = table_rows(page, "outstanding-table")
    assert "#7" in old and "#9" not in old


def test_no_outstanding_panel_without_outstanding_rows():
    page = render_report(sample())
    assert 'id="outstanding"' not in page
    assert 'id="outstanding-table"' not in page


def test_every_outstanding_row_is_listed_folded_when_long():
    rows = [
        outstanding_row(i, f"user{i}@example", f"2026-11-{1 + i % 28:02d}T00:00:00+00:00")
        for i in range(150)
    ]
    page = render_report(with_rows(rows))
    listed = table_rows(page, "outstanding-table")
    assert len(listed) == 150
    assert {cells(row)[0][0] for row in listed} == {f"#{i}" for i in range(150)}
    assert "<details><summary>150 rows</summary>" in section(page, "outstanding")


def test_leavers_are_counted_and_labelled():
    leaver = {**failed_row(21, "ForgottenUserError", "lee@example.com"), "segment": "left"}
    moved = {**failed_row(22, "InvalidEmailAddressError", "new@example.com")}
    moved["previous_email"] = "old.address@example.com"
    results = with_rows(
        [
            success_row(1, "alice@example.com"),
            leaver,
            moved,
            {
                **success_row(23, "max@example.com"),
                "status": "skipped",
                "reason": "unchanged",
                "segment": "left",
            },
        ]
    )
    results["run"]["rows_read"] = 2
    page = render_report(results)
    assert card(page, "total") == ("4", "2 rows read · 2 left the segment")
    assert 'id="count-left">2<' in page
    forgotten = next(row for row in table_rows(page, "failures-table") if "#21" in row)
    assert '<span class="tag">left the segment</span>' in forgotten
    assert '<span class="tag">was o***@example.com</span>' in page
    assert "old.address" not in page


def test_no_leaver_count_without_leavers():
    page = render_report(sample())
    assert "count-left" not in page
    assert card(page, "total") == ("6", "6 rows read")


# --- shares and timing -------------------------------------------------------------------------


def test_a_tiny_share_reads_less_than_a_tenth_of_a_percent():
    rows = [success_row(i, f"u{i}@example.com") for i in range(1, 2000)]
    rows.append(failed_row(5000, "InvalidEmailAddressError", "x@example.com"))
    page = render_report(with_rows(rows))
    assert card(page, "failed") == ("1", "< 0.1 % of rows")
    assert card(page, "succeeded") == ("1,999", "> 99.9 % of rows")
    assert card(page, "skipped") == ("0", "0 % of rows")
    (failure,) = table_rows(page, "failures-table")
    assert cells(failure)[2] == ["<", "0.1", "%"]
    assert re.findall(r"(?<![\d.])0\.0 %", html.unescape(page)) == []
    assert 'class="seg seg-failed" style="width:0.05%"' in page  # still drawn as a sliver


def test_a_whole_share_reads_100_percent():
    page = render_report(with_rows([success_row(1, "a@example.com")]))
    assert card(page, "succeeded") == ("1", "100 % of rows")


def timing(page: str) -> dict[str, list[list[str]]]:
    return {cells(row)[0][0]: cells(row)[1:] for row in table_rows(page, "timing-table")}


def test_timing_is_labelled_summed_request_time_without_busy_seconds():
    page = render_report(sample())
    timing_panel = section(page, "timing")
    assert "Summed request time, s" in timing_panel
    assert "Busy (wall) time" not in timing_panel
    assert "it is not wall time" in timing_panel
    # requests by status, requests, summed seconds, average ms per request
    assert timing(page) == {
        "users/update": [
            ["200", "x", "3", "400", "x", "1", "503", "x", "1"],
            ["5"],
            ["0.52"],
            ["104.0"],
        ],
        "events/track": [["200", "x", "3"], ["3"], ["0.41"], ["136.7"]],
    }


def test_timing_shows_busy_wall_time_when_the_file_has_it():
    results = sample()
    results["run"]["api"]["busy_seconds"] = {"users/update": 0.2, "events/track": 0.15}
    page = render_report(results)
    head = re.search(r'<table id="timing-table"><thead>(.*?)</thead>', page, re.S)
    assert head
    headings = re.findall(r"<th[^>]*>(.*?)</th>", head.group(1))
    assert headings == [
        "Endpoint",
        "Requests by status",
        "Requests",
        "Busy (wall) time, s",
        "Summed request time, s",
        "Avg ms / request",
    ]
    rows = timing(page)
    assert rows["users/update"][2:] == [["0.20"], ["0.52"], ["104.0"]]
    assert rows["events/track"][2:] == [["0.15"], ["0.41"], ["136.7"]]
    assert "at least one request to the endpoint was in flight" in section(page, "timing")


def test_retries_per_endpoint_and_rows_with_several_attempts():
    page = render_report(sample())
    rows = {cells(row)[0][0]: cells(row)[1:] for row in table_rows(page, "retries-table")}
    assert rows == {"users/update": [["1"], ["20.0", "%"]], "events/track": [["0"], ["0", "%"]]}
    assert '<strong id="retried-rows">1</strong> of 6 rows' in page
    assert "user update: 1" in page


def test_warnings_count():
    page = render_report(sample())
    assert '<strong id="warning-count">1</strong> warning on 1 row' in section(page, "warnings")
    assert "page cut from 40000 to 32000 characters" in page


def test_aborted_file_without_rows_or_api():
    page = render_report(ABORTED)
    assert 'id="run-status">aborted<' in page
    assert "Run aborted: database connection lost" in page
    assert 'id="count-total">0<' in page
    assert "No new failures." in page
    assert "No skipped rows." in page
    assert "No API calls recorded." in page
    assert '<strong id="retried-rows">0</strong>' in page


@pytest.mark.parametrize(
    "results",
    [
        {},
        {"run": None, "summary": None, "results": None},
        {"run": [], "summary": "x", "results": {"a": 1}},
        {
            "run": {
                "duration_seconds": "soon",
                "started_at": "yesterday",
                "rows_read": "many",
                "api": {
                    "requests": {"users/update": None},
                    "seconds": {"x": "1"},
                    "busy_seconds": [1],
                },
            },
            "summary": {"total": -4, "failed": float("nan")},
            "results": [
                None,
                7,
                "row",
                {"status": None},
                {"status": "failed", "reason": 5},
                {"status": "failed", "outstanding": 1, "failing_since": 5, "segment": ["x"]},
                {"status": "failed", "outstanding": "yes", "failing_since": "2026-11-01"},
                {"status": "failed", "outstanding": True, "failing_since": None},
            ],
        },
    ],
)
def test_missing_and_malformed_fields_do_not_break_rendering(results):
    page = render_report(results)
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")


def test_text_from_the_file_is_escaped():
    results = sample()
    results["results"] = [failed_row(1, "<script>alert(1)</script>", "a@example.com")]
    page = render_report(results)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_rows_are_counted_once_per_pass():
    stats = collect_rows(SAMPLE["results"])
    counted = stats.summary.to_dict()
    expected = cast(dict[str, Any], SAMPLE["summary"])
    assert {key: counted[key] for key in expected} == expected
    assert [row.customer_id for row in stats.failed] == ["7", "9"]
    assert stats.retried_rows == 1
    assert stats.warnings == 1


@pytest.mark.parametrize(
    ("name", "html_name"),
    [("r.json", "r.html"), ("r.JSON", "r.html"), ("r", "r.html"), ("r.html", "r.html.html")],
)
def test_default_output_never_overwrites_the_input(name, html_name):
    assert default_output(Path("/x") / name) == Path("/x") / html_name


# --- command line ------------------------------------------------------------------------------


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), "report", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_cli_writes_a_private_html_file_next_to_the_results(tmp_path):
    results = write_json(tmp_path / "integration_results_20261129_120000.json", SAMPLE)
    proc = run_cli(results)
    assert proc.returncode == 0, proc.stderr
    output = tmp_path / "integration_results_20261129_120000.html"
    assert proc.stdout.strip() == str(output)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert 'id="count-total">6<' in output.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_cli_output_option_replaces_an_existing_file(tmp_path):
    results = write_json(tmp_path / "r.json", SAMPLE)
    output = tmp_path / "out.html"
    output.write_text("old", encoding="utf-8")
    output.chmod(0o644)
    proc = run_cli(results, "--output", output)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(output)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert output.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_finds_its_templates_from_any_working_directory(tmp_path):
    results = write_json(tmp_path / "r.json", SAMPLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(results, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.search(r"<style>\s*:root\{", page)
    assert "$" not in page  # every template placeholder was filled


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")


def test_cli_missing_file(tmp_path):
    proc = run_cli(tmp_path / "nope.json")
    assert_one_line_error(proc)
    assert "nope.json" in proc.stderr


@pytest.mark.parametrize("content", ["{not json", "", "\xff\xfe", "[1, 2]", "null"])
def test_cli_invalid_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content.encode("latin-1"))
    assert_one_line_error(run_cli(path))
    assert not (tmp_path / "bad.html").exists()


@pytest.mark.parametrize("args", [[], ["a.json", "b.json"], ["a.json", "--bogus"]])
def test_cli_bad_arguments(args):
    assert_one_line_error(run_cli(*args))


def test_cli_unwritable_output(tmp_path):
    results = write_json(tmp_path / "r.json", SAMPLE)
    assert_one_line_error(run_cli(results, "--output", tmp_path / "missing-dir" / "r.html"))


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_cli_csv_lists_failed_and_outstanding_rows_with_real_emails(tmp_path):
    results = sample()
    results["results"].append(outstanding_row(11, "gail@example", "2026-11-20T08:00:00+00:00"))
    source = write_json(tmp_path / "r.json", results)
    table = tmp_path / "failed.csv"
    proc = run_cli(source, "--csv", table)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "r.html"), str(table)]
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    header, rows = read_csv(table)
    assert header == list(CSV_COLUMNS)
    assert rows == [
        {
            "customer_id": "7",
            "email": "not-an-email",
            "reason": "invalid_email",
            "detail": "missing or malformed email address",
            "failing_since": "",
            "outstanding": "false",
        },
        {
            "customer_id": "9",
            "email": "bob@example.com",
            "reason": "InvalidEmailAddressError",
            "detail": "Invalid email: bob@example.com",
            "failing_since": "",
            "outstanding": "false",
        },
        {
            "customer_id": "11",
            "email": "gail@example",
            "reason": "invalid_email",
            "detail": "missing or malformed email address",
            "failing_since": "2026-11-20T08:00:00+00:00",
            "outstanding": "true",
        },
    ]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "bob@" not in page and "gail@" not in page  # the page stays masked
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_cli_csv_keeps_a_spreadsheet_from_running_a_cell(tmp_path):
    rows = [failed_row(1, "invalid_email", '=HYPERLINK("http://x.test","y")', "+1 bad")]
    source = write_json(tmp_path / "r.json", with_rows(rows))
    table = tmp_path / "failed.csv"
    assert run_cli(source, "--csv", table).returncode == 0
    (row,) = read_csv(table)[1]
    assert row["email"] == '\'=HYPERLINK("http://x.test","y")'
    assert row["detail"] == "'+1 bad"


def test_cli_csv_with_no_failed_rows_has_the_header_only(tmp_path):
    source = write_json(tmp_path / "r.json", with_rows([success_row(1, "a@example.com")]))
    table = tmp_path / "failed.csv"
    assert run_cli(source, "--csv", table).returncode == 0
    assert read_csv(table) == (list(CSV_COLUMNS), [])


@pytest.mark.parametrize(
    ("option", "target"), [("--csv", "r.json"), ("--csv", "r.html"), ("--output", "r.json")]
)
def test_cli_never_overwrites_the_results_or_the_page(tmp_path, option, target):
    source = write_json(tmp_path / "r.json", SAMPLE)
    before = source.read_bytes()
    proc = run_cli(source, option, tmp_path / target)
    assert_one_line_error(proc)
    assert "would overwrite" in proc.stderr
    assert source.read_bytes() == before
    assert not (tmp_path / "r.html").exists()


def test_cli_unwritable_csv(tmp_path):
    source = write_json(tmp_path / "r.json", SAMPLE)
    proc = run_cli(source, "--csv", tmp_path / "missing-dir" / "f.csv")
    assert_one_line_error(proc)
    assert "missing-dir" in proc.stderr


# --- a results file from a real run ------------------------------------------------------------


def test_report_of_a_real_run(job, tmp_path):
    run = job.run()
    assert run.code == 1, run.stderr  # the seed's malformed email fails
    summary = run.results["summary"]
    table = tmp_path / "failed.csv"
    proc = run_cli(run.results_path, "--csv", table, cwd=job.workdir)
    assert proc.returncode == 0, proc.stderr
    page_path = run.results_path.with_suffix(".html")
    assert proc.stdout.splitlines() == [str(page_path), str(table)]
    page = page_path.read_text(encoding="utf-8")

    assert card(page, "total")[0] == str(summary["total"])
    assert card(page, "succeeded")[0] == str(summary["succeeded"])
    assert card(page, "failed")[0] == str(summary["failed"] - summary["outstanding"])
    assert card(page, "outstanding")[0] == str(summary["outstanding"])
    assert card(page, "skipped")[0] == str(summary["skipped"])
    assert 'id="run-status">rows failed<' in page

    bad = run.by_customer()[SEED_MALFORMED_EMAIL_CUSTOMER]
    (failure,) = table_rows(page, "failures-table")
    assert cells(failure)[:2] == [["invalid_email"], ["1"]]
    assert f'<span class="cid">#{SEED_MALFORMED_EMAIL_CUSTOMER}</span>' in failure
    assert f'<span class="email">{mask_email(bad["email"])}</span>' in failure
    assert FULL_EMAIL.findall(page) == []
    for row in run.results["results"]:
        assert row["email"] not in page

    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    assert read_csv(table)[1] == [
        {
            "customer_id": str(SEED_MALFORMED_EMAIL_CUSTOMER),
            "email": bad["email"],
            "reason": "invalid_email",
            "detail": bad["detail"],
            "failing_since": "",
            "outstanding": "false",
        }
    ]


# --- real browser ------------------------------------------------------------------------------


def chromium(html_file: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *mode,
            html_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_report_renders_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        prerequisite_missing(
            f"Chromium not installed at {CHROMIUM}; devtools/ensure_chromium.sh installs it"
        )
    data = sample()
    data["results"].append(outstanding_row(11, "gail@example.com", "2026-11-20T08:00:00+00:00"))
    results = write_json(tmp_path / "run.json", data)
    proc = run_cli(results)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "run.html"

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    counts = {"total": 7, "succeeded": 3, "failed": 2, "outstanding": 1, "skipped": 1}
    for kind, value in counts.items():
        assert f'id="count-{kind}">{value}<' in dom.stdout
    assert 'id="outstanding-table"' in dom.stdout
    for reason in ("InvalidEmailAddressError", "invalid_email", "unchanged"):
        assert reason in dom.stdout
    assert FULL_EMAIL.findall(dom.stdout) == []

    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "report.png"
    png.unlink(missing_ok=True)
    shot = chromium(
        page, tmp_path / "profile-shot", f"--screenshot={png}", "--window-size=1200,1600"
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


DAY_THIRTY = REPO / "tests" / "support" / "day_thirty_results.json"


def day_thirty() -> dict:
    """A real day-thirty results file (an email move and a conflict, a downgrade, an inactive
    and a deleted customer, a newcomer, a forgotten one, a list), with a stale page_views
    warning and two rows that clash with a field's type."""
    return json.loads(DAY_THIRTY.read_text(encoding="utf-8"))


def framed(page: Path, width: int, height: int) -> Path:
    """A page that shows `page` in a frame `width` pixels wide (headless Chromium lays out
    no window narrower than 500) and writes down whether it had to scroll sideways."""
    host = page.with_name(f"framed-{width}.html")
    measure = (
        "var d = this.contentDocument.documentElement;"
        "document.body.dataset.overflow = d.scrollWidth > d.clientWidth;"
    )
    host.write_text(
        f'<!DOCTYPE html><html><body style="margin:0"><iframe src="{page.name}" '
        f'style="width:{width}px;height:{height}px;border:0" onload="{measure}"></iframe>'
        "</body></html>",
        encoding="utf-8",
    )
    return host


def test_day_thirty_report_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        prerequisite_missing(
            f"Chromium not installed at {CHROMIUM}; devtools/ensure_chromium.sh installs it"
        )
    proc = run_cli(write_json(tmp_path / "day30.json", day_thirty()))
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "day30.html"
    ARTIFACTS.mkdir(exist_ok=True)
    # At a laptop's width and at a phone's, the page never scrolls sideways.
    for width, height, name in ((1300, 2600, "1300"), (390, 4200, "phone")):
        host = framed(page, width, height)
        files = "--allow-file-access-from-files"
        size = f"--window-size={max(width, 500)},{height}"
        dom = chromium(host, tmp_path / f"dom-{name}", files, size, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'data-overflow="false"' in dom.stdout, name
        png = ARTIFACTS / f"report_day_thirty_{name}.png"
        png.unlink(missing_ok=True)
        shot = chromium(host, tmp_path / f"shot-{name}", files, size, f"--screenshot={png}")
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = chromium(page, tmp_path / "dom", "--dump-dom")
    text = dom.stdout
    assert FULL_EMAIL.findall(text) == []
    assert "<dt>List</dt><dd>4242</dd>" in text and "<dt>Identify by</dt><dd>email</dd>" in text
    assert "is the pipeline that loads page_views stopped?" in section(text, "run-warnings")
    moves = section(text, "email-moves")
    assert "a***@example.com</span> → <span" in moves and "moved, with its history" in moves
    assert "both left as they are" in moves
    leavers = section(text, "leavers")
    assert "#2" in leavers and "profile updated" in leavers
    assert "nothing to send" in leavers and "kept in Iterable" in leavers
    assert "gone from the database" in section(text, "deletions")
    listed = section(text, "list-changes")
    assert 'id="list-subscribed">+2<' in listed and 'id="list-unsubscribed">-3<' in listed


def test_a_failed_email_move_shows_its_step_code_and_message():
    results = copy.deepcopy(SAMPLE)
    cast(list, results["results"]).append(
        {
            "customer_id": 12,
            "email": "new.carl@example.com",
            "previous_email": "carl@example.com",
            "segment": "in",
            "status": "failed",
            "reason": "BadParams",
            "update_email": {
                "http_status": 400,
                "code": "BadParams",
                "msg": "newEmail is not valid here",
                "attempts": 1,
                "elapsed_seconds": 0.01,
                "error": "HTTP 400 BadParams",
            },
            "user_update": None,
            "event_track": None,
        }
    )
    [row] = [r for r in table_rows(render_report(results), "failures-table") if "#12" in r]
    assert "email move" in row
    assert "HTTP 400" in row and "BadParams" in row
    assert "newEmail is not valid here" in row
