"""Fault injection against the sandbox: whatever fails on the way, nothing is lost or doubled.

Every scenario runs the real job (`python main.py`) against MariaDB and the sandbox with
faults injected, then clean reruns until the job is done, and judges the outcome from the
sandbox's own store: every qualifying profile present with the expected fields, every
expected event id present once, no logical duplicate events, nothing extra; the sync state
claims nothing the sandbox does not hold; and one more run makes no call at all.

The module keeps a tally (scenarios, faults the sandbox applied, records lost, records
duplicated) and writes it to test-artifacts/fault_suite.json when the module ends.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.bulk_seed import (
    FIRST_CUSTOMER_ID,
    FIRST_PAGE_VIEW_ID,
    add_pro_customers,
    synthetic_email,
)
from devtools.seed import SEED_QUALIFYING
from sandbox import RATE_LIMIT_JSON, RATE_LIMIT_TEXT
from tests.support.job import BOTH_STORES
from tests.support.oracle import Expected, audit, expected_store, unbacked_state_claims
from tests.support.waiting import wait_until

pytestmark = BOTH_STORES

ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "fault_suite.json"

# 7 seed customers that can be sent plus these synthetic ones.
ROWS = 20
MODES: dict[str, tuple[str, ...]] = {
    "single": ("--mode", "single", "--concurrency", "8"),
    "bulk": ("--mode", "bulk"),
}
# Small batches so a bulk run makes enough calls for a storm to hit; the default bulk
# pacing (4 and 8 requests a second) would only make the test slow.
MODE_ENV: dict[str, dict[str, str]] = {
    "single": {},
    "bulk": {
        "BULK_BATCH_SIZE": "3",
        "EVENTS_BATCH_SIZE": "3",
        "RATE_LIMIT_USERS_BULK_UPDATE": "100",
        "RATE_LIMIT_EVENTS_TRACK_BULK": "100",
    },
}
# The job fixture's 2 s timeout made smaller, so a timed-out attempt costs little.
TIMEOUT = 0.5
# Faulty runs give up on a call after 3 attempts (0.5 s + 1 s of backoff) instead of 5
# (7.5 s): rows still failing are left to the clean rerun, which is part of the point.
FAULTY_RUN = {"MAX_ATTEMPTS": "3"}

TALLY: dict[str, Any] = {
    "scenarios": 0,
    "faults_injected": 0,
    "records_lost": 0,
    "records_duplicated": 0,
    "rewrites_absorbed": 0,
    "job_runs": 0,
    "kills": 0,
    "by_scenario": {},
}


@pytest.fixture(scope="module", autouse=True)
def fault_summary(request: pytest.FixtureRequest):
    """Writes the module's tally to test-artifacts/fault_suite.json and prints it."""
    yield
    if not TALLY["scenarios"]:
        return
    ARTIFACT.parent.mkdir(exist_ok=True)
    text = json.dumps(TALLY, indent=2, sort_keys=True)
    ARTIFACT.write_text(text + "\n", encoding="utf-8")
    line = (
        f"fault suite: {TALLY['scenarios']} scenarios, {TALLY['faults_injected']} faults "
        f"injected and {TALLY['kills']} kill -9s, {TALLY['records_lost']} records lost, "
        f"{TALLY['records_duplicated']} "
        f"records duplicated ({TALLY['rewrites_absorbed']} resends absorbed by id or merge, "
        f"{TALLY['job_runs']} job runs) -> {ARTIFACT}"
    )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print(line)


@pytest.fixture
def fleet(job, mariadb, seeded_db) -> Expected:
    """The seed plus ROWS synthetic pro customers, and the store a complete sync leaves."""
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    return expected_store(mariadb, seeded_db.name)


def run_job(job, mode: str, **env: str):
    run = job.run(*MODES[mode], **{**MODE_ENV[mode], **env})
    TALLY["job_runs"] += 1
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    return run


def settle(job, sandbox, mode: str, expected: Expected, scenario: str, max_runs: int = 3):
    """Clean reruns until one succeeds, then judge the store, the state, and a further run."""
    sandbox.clear_faults()
    for _ in range(max_runs):
        run = run_job(job, mode)
        if run.code == 0:
            break
    result = audit(sandbox, expected)
    faults = int(sandbox.stats()["faults_applied"])
    TALLY["scenarios"] += 1
    TALLY["faults_injected"] += faults
    TALLY["records_lost"] += len(result.lost)
    TALLY["records_duplicated"] += len(result.duplicated)
    TALLY["rewrites_absorbed"] += result.rewrites
    TALLY["by_scenario"][scenario] = {
        "faults_injected": faults,
        "lost": len(result.lost),
        "duplicated": len(result.duplicated),
        "rewrites_absorbed": result.rewrites,
    }
    assert run.code == 0, run.stdout + run.stderr[-2000:]
    assert result.lost == [], result.lost[:5]
    assert result.duplicated == [], result.duplicated[:5]
    assert unbacked_state_claims(job.state, sandbox) == []
    calls = sandbox.stats()["total_requests"]
    again = run_job(job, mode)
    assert again.code == 0
    assert sandbox.stats()["total_requests"] == calls, "a run after convergence made calls"
    assert again.results["summary"]["succeeded"] == 0
    return result


SCENARIOS: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {
    # Plain-text 429s, no Retry-After: the client backs off on its own.
    "429_storm_text": (
        [
            dict(
                kind="status",
                status=429,
                body=RATE_LIMIT_TEXT.decode(),
                probability=0.15,
                times=None,
                seed=11,
            )
        ],
        {},
    ),
    # JSON 429s with Retry-After: 1, which pauses the whole endpoint.
    "429_storm_json_retry_after": (
        [
            dict(
                kind="status",
                status=429,
                body=json.dumps(RATE_LIMIT_JSON),
                retry_after=1,
                probability=0.1,
                times=None,
                seed=12,
            )
        ],
        {},
    ),
    # The write is applied, then the gateway answers 500/502/503.
    "5xx_after_apply": (
        [
            dict(kind="status", status=status, apply_first=True, probability=0.1, times=None)
            | {"seed": 20 + i}
            for i, status in enumerate((500, 502, 503))
        ],
        {},
    ),
    # The write is applied, then the answer comes too late for the client.
    "timeout_after_apply": (
        [
            dict(
                kind="delay",
                delay=TIMEOUT * 2,
                apply_first=True,
                probability=0.15,
                times=None,
                seed=30,
            )
        ],
        {"REQUEST_TIMEOUT_SECONDS": str(TIMEOUT)},
    ),
    # The answer comes too late and the sandbox, finding the client gone, never writes.
    "timeout_before_apply": (
        [dict(kind="delay", delay=TIMEOUT * 2, probability=0.15, times=None, seed=31)],
        {"REQUEST_TIMEOUT_SECONDS": str(TIMEOUT)},
    ),
    # The connection closes before the write.
    "drop_before_apply": (
        [dict(kind="drop", probability=0.25, times=None, seed=40)],
        {},
    ),
    # The write is applied, then the connection closes without an answer.
    "drop_after_apply": (
        [dict(kind="drop", apply_first=True, probability=0.25, times=None, seed=41)],
        {},
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_faults_lose_and_double_nothing(job, sandbox, fleet, scenario, mode):
    rules, env = SCENARIOS[scenario]
    for rule in rules:
        options = dict(rule)
        sandbox.add_fault(options.pop("kind"), **options)
    first = run_job(job, mode, **FAULTY_RUN, **env)
    assert first.code in (0, 1), first.stderr[-2000:]
    applied = sandbox.stats()["faults_applied"]
    assert applied > 0, "the scenario injected no fault"
    if any(rule.get("apply_first") for rule in rules):
        # Iterable applied writes whose answers were lost, and the resends were absorbed.
        assert audit(sandbox, fleet).rewrites > 0
    # What the faulty run says it delivered is in the store already.
    assert unbacked_state_claims(job.state, sandbox) == []
    succeeded = {cid for cid, row in first.by_customer().items() if row["status"] == "success"}
    users = sandbox.users()
    assert all(fleet.emails[cid] in users for cid in succeeded)
    settle(job, sandbox, mode, fleet, f"{scenario}/{mode}")


@pytest.mark.parametrize("mode", list(MODES))
def test_profile_going_back_after_an_unanswered_update_is_sent_again(
    job, sandbox, fleet, mariadb, seeded_db, mode
):
    """Iterable applied an update whose answers were all 5xx; the customer then went back to
    the page of the profile the state had recorded. That profile must be sent again."""
    email = fleet.emails[1]
    assert run_job(job, mode).code == 1  # the seed's malformed email fails
    page = fleet.users[email]["recent_page_view"]

    def view(page_view_id: int, page: str, minutes_ago: int) -> None:
        mariadb.execute(
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            "VALUES (%s, 1, %s, 'desktop', 'Berlin, DE', UTC_TIMESTAMP() - INTERVAL %s MINUTE)",
            (page_view_id, page, minutes_ago),
            database=seeded_db.name,
        )

    view(900, "/somewhere-else", 2)
    endpoint = "users/bulkUpdate" if mode == "bulk" else "users/update"
    sandbox.add_fault(
        "status", endpoint=endpoint, email=email, status=503, apply_first=True, times=None
    )
    run_job(job, mode, **FAULTY_RUN)
    assert sandbox.users()[email]["recent_page_view"] == "/somewhere-else"
    view(901, page, 1)
    expected = expected_store(mariadb, seeded_db.name)
    first_event = f"page-view-{SEED_QUALIFYING[1]}"
    expected.events[first_event] = fleet.events[first_event]  # delivered by the first run
    assert "page-view-900" not in sandbox.events()  # no event after a failed update
    settle(job, sandbox, mode, expected, f"revert/{mode}")
    assert sandbox.users()[email]["recent_page_view"] == page


# -- kill -9 at a random point ----------------------------------------------------------------

KILL_ROWS = 400
KILL_LATENCY = 0.03
KILL_ENV: dict[str, dict[str, str]] = {
    "single": {},
    "bulk": {
        "BULK_BATCH_SIZE": "20",
        "EVENTS_BATCH_SIZE": "20",
        "RATE_LIMIT_USERS_BULK_UPDATE": "10",
        "RATE_LIMIT_EVENTS_TRACK_BULK": "10",
    },
}


def kill_9_once(process, condition, what: str, then_wait: float = 0.0) -> None:
    """kill -9 the running job once `condition` holds (and `then_wait` seconds later)."""
    try:
        wait_until(condition, 30, what)
        time.sleep(then_wait)  # the scenario: a kill at a random point, not a wait for something
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    TALLY["job_runs"] += 1
    TALLY["kills"] += 1


KILL_SEEDS = [("single", 1), ("single", 2), ("single", 3), ("bulk", 4), ("bulk", 5)]


@pytest.mark.parametrize(("mode", "seed"), KILL_SEEDS, ids=[f"{m}-{s}" for m, s in KILL_SEEDS])
def test_kill_9_mid_run_then_rerun_delivers_exactly_once(
    job, sandbox, mariadb, seeded_db, mode, seed
):
    add_pro_customers(mariadb, seeded_db.name, KILL_ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.set_latency(KILL_LATENCY)
    rng = random.Random(seed)
    process = job.start(*MODES[mode], **KILL_ENV[mode])
    kill_9_once(
        process,
        lambda: sandbox.stats()["total_requests"] > 0,
        "the first request",
        then_wait=rng.uniform(0.2, 1.8),
    )
    assert process.returncode == -signal.SIGKILL
    cut = audit(sandbox, expected)
    assert cut.lost, "the kill landed after the run had finished"
    assert cut.duplicated == []
    # The state a killed run leaves claims only what the sandbox holds.
    assert unbacked_state_claims(job.state, sandbox) == []
    sandbox.set_latency(0.0)
    settle(job, sandbox, mode, expected, f"kill_9/{mode}-{seed}")


# -- kill -9 while emails and list members move -------------------------------------------------

MOVE_ROWS = 200
DOWNGRADES = 40


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_kill_9_while_emails_and_list_members_move_then_rerun(
    job, sandbox, mariadb, seeded_db, mode
):
    db = seeded_db.name
    add_pro_customers(mariadb, db, MOVE_ROWS)
    mariadb.execute("UPDATE customers SET email = 'eight@example.com' WHERE id = 8", database=db)
    list_id = sandbox.create_list("segment")
    env = {**KILL_ENV[mode], "ITERABLE_LIST_ID": str(list_id)}
    assert run_job(job, mode, **env).code == 0
    synthetic = f"id >= {FIRST_CUSTOMER_ID}"
    mariadb.execute(
        f"UPDATE customers SET email = CONCAT('moved.', id, '@example.com') WHERE {synthetic}",
        database=db,
    )
    mariadb.execute(
        f"UPDATE customers SET plan_type = 'free' WHERE {synthetic} AND id < %s",
        (FIRST_CUSTOMER_ID + DOWNGRADES,),
        database=db,
    )
    expected = expected_store(mariadb, db)
    sandbox.set_latency(KILL_LATENCY)
    process = job.start(*MODES[mode], **env)
    kill_9_once(
        process,
        lambda: sandbox.request_count("users/updateEmail") >= 20,
        "the first email moves",
    )
    assert sandbox.request_count("users/updateEmail") < MOVE_ROWS, "killed too late"
    sandbox.set_latency(0.0)
    for _ in range(3):
        if run_job(job, mode, **env).code == 0:
            break

    profiles = sandbox.profiles()
    by_email = {p["email"]: p for p in profiles}
    assert len(by_email) == len(profiles), "two profiles with one email"
    for n in range(MOVE_ROWS):
        cid = FIRST_CUSTOMER_ID + n
        assert synthetic_email(n) not in by_email, f"customer {cid} kept a profile"
        moved = by_email[f"moved.{cid}@example.com"]
        assert moved["dataFields"]["plan_type"] == ("free" if n < DOWNGRADES else "pro")
        assert f"page-view-{FIRST_PAGE_VIEW_ID + n}" in moved["events"]
    assert sandbox.duplicate_events() == []
    assert {m["email"] for m in sandbox.list_members(list_id)} == set(expected.users)
    assert set(sandbox.channel_unsubscribes()) == {False}
    lost = [f"{eid}" for eid in expected.events if eid not in sandbox.events()]
    assert lost == []
    TALLY["scenarios"] += 1
    TALLY["by_scenario"][f"kill_9_moving/{mode}"] = {"lost": 0, "duplicated": 0}
    calls = sandbox.stats()["total_requests"]
    assert run_job(job, mode, **env).code == 0
    assert sandbox.stats()["total_requests"] == calls
