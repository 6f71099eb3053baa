"""RESULTS_KEEP_DAYS: old results files and their HTML reports go; nothing else is touched.

A file's age is the UTC start time in its name, not its mtime.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from results import remove_old_results

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def results_name(started: datetime, suffix: str = ".json", counter: str = "") -> str:
    return f"integration_results_{started:%Y%m%d_%H%M%S}{counter}{suffix}"


def make(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text("{}")


def test_files_older_than_the_limit_go_with_their_reports(tmp_path):
    old, recent = NOW - timedelta(days=30, seconds=1), NOW - timedelta(days=29, hours=23)
    gone = [
        results_name(old),
        results_name(old, ".html"),
        results_name(old, counter="_2"),
        results_name(datetime(2020, 1, 1, tzinfo=UTC)),
    ]
    kept = [
        results_name(recent),
        results_name(recent, ".html"),
        results_name(NOW),
        # not ours, or not a results file: never touched, however old
        "integration_results_20200101_000000.json.bak",
        "integration_results_20200101_000000.csv",
        "integration_results_20201301_000000.json",  # month 13: no date
        "integration_results_notes.txt",
        ".integration_results_20200101_000000.json.abc.tmp",
        "other_20200101_000000.json",
        "iterable_sync_state.sqlite3",
    ]
    make(tmp_path, *gone, *kept)
    (tmp_path / "integration_results_20200102_000000.json").mkdir()  # a directory: left alone
    # mtime says nothing: a fresh copy of an old file still goes, an old-looking new one stays
    os.utime(tmp_path / results_name(recent), (0, 0))

    removed = remove_old_results(tmp_path, 30, NOW)

    assert sorted(p.name for p in removed) == sorted(gone)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*kept, "integration_results_20200102_000000.json"])


def test_zero_keeps_everything(tmp_path):
    make(tmp_path, results_name(datetime(2000, 1, 1, tzinfo=UTC)))
    assert remove_old_results(tmp_path, 0, NOW) == []
    assert len(list(tmp_path.iterdir())) == 1


def test_a_run_removes_old_results_and_says_how_many(job):
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    recent = now - timedelta(days=2)
    make(job.results_dir, results_name(old), results_name(old, ".html"), results_name(recent))
    make(job.results_dir, "notes.txt")

    run = job.run(RESULTS_KEEP_DAYS="30")

    assert run.code == 1, run.stderr
    left = sorted(p.name for p in job.results_dir.iterdir())
    assert left == sorted([results_name(recent), run.results_path.name, "notes.txt"])
    assert "removed 2 results files older than 30 days" in run.stderr


def test_a_run_with_zero_keeps_every_results_file(job):
    old = results_name(datetime.now(UTC) - timedelta(days=400))
    make(job.results_dir, old)
    run = job.run(RESULTS_KEEP_DAYS="0")
    assert run.code == 1, run.stderr
    assert (job.results_dir / old).exists()
    assert "removed" not in run.stderr
