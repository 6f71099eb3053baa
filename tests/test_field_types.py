"""A field whose type Iterable fixed otherwise: every profile update would be refused with
RequestFieldsTypesMismatched. `--check` finds it from GET /api/users/getFields before a run;
a run whose first 20 profile updates are all refused for it stops with exit 3 and one line
naming the field, instead of failing every row with a request each.
"""

from __future__ import annotations

import pytest

from devtools.bulk_seed import add_pro_customers
from tests.support.data import profile_in_iterable
from tests.support.oracle import expected_store

ROWS = 300
MODES = {"single": ("--mode", "single"), "bulk": ("--mode", "bulk")}
REFUSED = (
    "Iterable refused the first 20 profile updates (RequestFieldsTypesMismatched): "
    "plan_type is a number in Iterable; the job sends a string"
)


def fix_type(sandbox, **fields) -> None:
    """What an earlier integration did: the first values of these fields fixed their types."""
    profile_in_iterable(sandbox.base_url, "someone.else@example.com", **fields)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_field_of_another_type_in_iterable_stops_the_run_in_one_line(
    job, sandbox, mariadb, seeded_db, mode
):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    fix_type(sandbox, plan_type=5)
    run = job.run(*MODES[mode])
    assert run.code == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert errors == [f"error: {REFUSED}"], run.stderr[-2000:]
    assert run.results["run"]["aborted"] == REFUSED
    rows = run.by_customer()
    # No line a row: the rows refused are interrupted, and sent again by the next run.
    assert {row["reason"] for row in rows.values()} == {"interrupted", "invalid_email"}
    if mode == "single":
        assert len(rows) < len(expected.emails), "the run went on taking rows"
        # What was in flight when the 20th refusal came, at the default concurrency.
        assert sandbox.request_count("users/update", 400) <= 129
    else:
        assert sandbox.request_count("users/bulkUpdate", 400) == 1  # one batch of them all
    assert sandbox.request_count("events/track") + sandbox.request_count("events/trackBulk") == 0
    assert list(sandbox.users()) == ["someone.else@example.com"]


def test_the_check_names_a_field_iterable_holds_as_another_type(job, sandbox):
    fix_type(sandbox, plan_type=5)
    run = job.run("--check")
    assert run.code == 3, run.stdout + run.stderr
    fields = [line for line in run.stdout.splitlines() if line.startswith("fields:")]
    assert fields == ["fields: FAILED: plan_type is a long in Iterable; the job sends text"]
    assert run.stdout.splitlines()[-1] == "some checks failed"
    assert sandbox.request_count("users/getFields") == 1


def test_the_check_names_every_such_field_and_only_the_fields_the_job_sends(job, sandbox):
    fix_type(sandbox, first_name=True, candidate=1.5, recent_page_view={"path": "/"}, score=3)
    run = job.run("--check", CANDIDATE_NAME="Jane")
    fields = [line for line in run.stdout.splitlines() if line.startswith("fields:")]
    assert fields == [
        "fields: FAILED: first_name is a boolean, recent_page_view is an object and "
        "candidate is a double in Iterable; the job sends text"
    ]
    assert run.code == 3


def test_the_check_passes_when_the_fields_are_text_or_new(job, sandbox):
    fix_type(sandbox, first_name="Ann", score=3)
    run = job.run("--check", ITERABLE_IDENTIFY_BY="userId")
    assert run.code == 0, run.stdout + run.stderr
    fields = [line for line in run.stdout.splitlines() if line.startswith("fields:")]
    assert fields == [
        "fields: ok: the fields the job sends are text in Iterable or not there yet "
        "(email, first_name, last_name, plan_type, recent_page_view)"
    ]
