"""The HTML run report: pure rendering, the `main.py report` command, and a real browser."""

from __future__ import annotations

import copy
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from report import (
    MAX_EXAMPLES,
    collect_rows,
    default_output,
    render_report,
    run_status,
)
from tests.support.prerequisites import prerequisite_missing

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT = 60
# An address with at least two characters before the @ is a full one; masked ones have `x***@`.
FULL_EMAIL = re.compile(r"[\w.+-]{2,}@[\w-]+\.[\w.-]+")

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
            "requests": {"users/update": {"200": 5, "503": 1}, "events/track": {"200": 5}},
            "retries": {"users/update": 1},
            "seconds": {"users/update": 0.52, "events/track": 0.41},
        },
        "version": "0.1.0",
    },
    "summary": {
        "total": 6,
        "succeeded": 4,
        "failed": 1,
        "skipped": 1,
        "by_reason": {"failed:invalid_email": 1, "skipped:unchanged": 1},
    },
    "results": [
        {
            "customer_id": 1,
            "email": "alice@example.com",
            "status": "success",
            "reason": None,
            "user_update": {
                "http_status": 200,
                "code": "Success",
                "msg": "",
                "attempts": 2,
                "elapsed_seconds": 0.61,
            },
            "event_track": {
                "http_status": 200,
                "code": "Success",
                "msg": "",
                "attempts": 1,
                "elapsed_seconds": 0.05,
            },
        },
        {
            "customer_id": 7,
            "email": "not-an-email",
            "status": "failed",
            "reason": "invalid_email",
            "user_update": None,
            "event_track": None,
            "detail": "missing or malformed email address",
        },
        {
            "customer_id": 9,
            "email": "bob@example.com",
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
    match = re.search(rf'<section class="panel" id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def table_rows(page: str, table_id: str) -> list[str]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, f"no table {table_id}"
    return re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)


def cells(row_html: str) -> list[list[str]]:
    """Each <td>'s words, tags stripped."""
    found = re.findall(r"<td.*?>(.*?)</td>", row_html, re.S)
    return [re.sub(r"<[^>]+>", " ", cell).replace("&times;", "x").split() for cell in found]


def failed_row(customer_id: int, reason: str, email: str, msg: str = "") -> dict:
    return {
        "customer_id": customer_id,
        "email": email,
        "status": "failed",
        "reason": reason,
        "user_update": {"http_status": 400, "code": reason, "msg": msg, "attempts": 1},
        "event_track": None,
    }


# --- rendering ---------------------------------------------------------------------------------


def test_summary_cards_and_split_bar():
    page = render_report(sample())
    for kind, value in [("total", 6), ("succeeded", 4), ("failed", 1), ("skipped", 1)]:
        assert f'id="count-{kind}">{value}<' in page
    assert 'class="seg seg-succeeded" style="width:66.67%"' in page
    assert 'class="seg seg-failed" style="width:16.67%"' in page
    assert 'class="seg seg-skipped" style="width:16.67%"' in page


def test_header_shows_status_and_run_settings():
    page = render_report(sample())
    assert 'class="badge badge-failed" id="run-status">rows failed<' in page
    assert "2026-11-29 12:00:00 UTC" in page
    assert "3.2 s" in page
    assert "127.0.0.1:3306/demo" in page
    assert "dry run</span>" not in page


@pytest.mark.parametrize(
    ("run", "failed", "expected"),
    [
        ({}, 0, "ok"),
        ({}, 3, "rows failed"),
        ({"aborted": "database connection lost"}, 0, "aborted"),
        ({"stopped_by_signal": True}, 3, "aborted"),
    ],
)
def test_run_status(run, failed, expected):
    assert run_status(run, failed)[1] == expected


def test_dry_run_gets_its_own_badge():
    results = sample()
    results["run"]["dry_run"] = True
    assert '<span class="badge badge-dry">dry run</span>' in render_report(results)


def test_failures_grouped_by_reason_with_masked_examples():
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
    results["results"][3]["warnings"].append("duplicate of erin@example.net")
    results["results"][1]["detail"] = "looks like frank@example.com"
    page = render_report(results)
    assert FULL_EMAIL.findall(page) == []
    for address in ("alice", "bob@", "carol", "dave@", "erin@", "frank@", "not-an-email"):
        assert address not in page


def test_examples_per_reason_are_bounded_and_counted():
    results = sample()
    results["results"] = [
        failed_row(i, "InvalidEmailAddressError", f"user{i}@example.com", f"Invalid user{i}@x.io")
        for i in range(1000)
    ]
    results["summary"] = {}
    page = render_report(results)
    (row,) = table_rows(page, "failures-table")
    assert cells(row)[1] == ["1,000"]
    assert row.count("<li>") == MAX_EXAMPLES
    assert "and 995 more" in row
    assert FULL_EMAIL.findall(page) == []
    assert 'id="count-total">1,000<' in page  # counted from rows when the summary is missing
    assert len(page) < 30_000


def test_reasons_sorted_by_count():
    results = sample()
    results["results"] = [failed_row(i, "Rare", f"r{i}@example.com") for i in range(2)] + [
        failed_row(i, "Common", f"c{i}@example.com") for i in range(5)
    ]
    rows = table_rows(render_report(results), "failures-table")
    assert ["Common" in rows[0], "Rare" in rows[1]] == [True, True]


def test_long_messages_are_cut_after_masking():
    results = sample()
    results["results"] = [failed_row(1, "Bad", "a@example.com", "x" * 150 + " gina@example.com")]
    page = render_report(results)
    assert "gina" not in page
    assert "\u2026" in page


def test_timing_per_endpoint():
    rows = table_rows(render_report(sample()), "timing-table")
    by_endpoint = {cells(row)[0][0]: cells(row) for row in rows}
    # requests by status, requests, total seconds, average ms per request
    assert by_endpoint["users/update"][1:] == [
        ["200", "x", "5", "503", "x", "1"],
        ["6"],
        ["0.52"],
        ["86.7"],
    ]
    assert by_endpoint["events/track"][1:] == [["200", "x", "5"], ["5"], ["0.41"], ["82.0"]]


def test_retries_per_endpoint_and_rows_with_several_attempts():
    page = render_report(sample())
    rows = {cells(row)[0][0]: cells(row)[1] for row in table_rows(page, "retries-table")}
    assert rows == {"users/update": ["1"], "events/track": ["0"]}
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
    assert "No failed rows." in page
    assert "No skipped rows." in page
    assert "No API calls recorded." in page
    assert '<strong id="retried-rows">0</strong>' in page


def test_reason_counts_fall_back_to_the_summary_without_rows():
    results = copy.deepcopy(ABORTED)
    results["summary"] = {
        "total": 3,
        "succeeded": 0,
        "failed": 2,
        "skipped": 1,
        "by_reason": {"failed:timeout": 2, "skipped:unchanged": 1},
    }
    page = render_report(results)
    (failed,) = table_rows(page, "failures-table")
    assert cells(failed)[:2] == [["timeout"], ["2"]]
    (skipped,) = table_rows(page, "skipped-table")
    assert cells(skipped)[:2] == [["unchanged"], ["1"]]


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
                "api": {"requests": {"users/update": None}, "seconds": {"x": "1"}},
            },
            "summary": {"total": -4, "failed": float("nan")},
            "results": [None, 7, "row", {"status": None}, {"status": "failed", "reason": 5}],
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
    assert dict(stats.counts) == {"success": 1, "failed": 2, "skipped": 1}
    assert stats.retried_rows == 1
    assert stats.warnings == 1


@pytest.mark.parametrize(
    ("name", "html_name"),
    [("r.json", "r.html"), ("r.JSON", "r.html"), ("r", "r.html"), ("r.html", "r.html.html")],
)
def test_default_output_never_overwrites_the_input(name, html_name):
    assert default_output(Path("/x") / name) == Path("/x") / html_name


# --- command line ------------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", "report", *map(str, args)],
        cwd=REPO,
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
    results = write_json(tmp_path / "run.json", SAMPLE)
    proc = run_cli(results)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "run.html"

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for kind, value in [("total", 6), ("succeeded", 4), ("failed", 1), ("skipped", 1)]:
        assert f'id="count-{kind}">{value}<' in dom.stdout
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
