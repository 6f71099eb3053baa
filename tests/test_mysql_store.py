"""The MySQL store (STATE_STORE=mysql): runs from an empty directory each time, one lock for
every host, run history, moving a SQLite state in, a least-privilege account, and a state
that does not grow with time (on both stores)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from devtools.bulk_seed import FIRST_CUSTOMER_ID, add_pro_customers
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from state_mysql import lock_name
from tests.support.data import change_email, change_plan, shift_views
from tests.support.job import BOTH_STORES, Job, job_environment, state_rows
from tests.support.waiting import wait_until

MYSQL = pytest.mark.parametrize("state_store", ["mysql"], indirect=True)
MOVED, DOWNGRADED, INACTIVE = 1, 2, 3
NEW_EMAIL = "moved.one@example.com"


def in_a_fresh_directory(job: Job, tmp_path: Path, name: str) -> Job:
    """The job as a container runs it: the same settings, an empty disk."""
    workdir = tmp_path / name
    workdir.mkdir()
    env = {**job.env}
    fresh = job_environment_paths(env, workdir)
    return Job(workdir, fresh)


def job_environment_paths(env: dict[str, str], workdir: Path) -> dict[str, str]:
    return {
        **env,
        "RESULTS_DIR": str(workdir / "results"),
        "LOG_FILE": str(workdir / "sync.log"),
        "LOCK_FILE": str(workdir / "sync.lock"),
        "SYNC_STATE_PATH": str(workdir / "state.sqlite3"),
    }


def calls(sandbox) -> int:
    return int(sandbox.stats()["total_requests"])


@MYSQL
def test_three_runs_each_from_an_empty_directory(job, sandbox, mariadb, seeded_db, tmp_path):
    db = seeded_db.name
    mariadb.execute(
        "UPDATE customers SET email = 'eight@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=db,
    )
    first = in_a_fresh_directory(job, tmp_path, "first").run()
    assert first.code == 0, first.stderr
    old_email = first.by_customer()[MOVED]["email"]
    inactive_email = first.by_customer()[INACTIVE]["email"]
    change_email(mariadb, seeded_db, MOVED, NEW_EMAIL)
    change_plan(mariadb, seeded_db, DOWNGRADED, "free")
    shift_views(mariadb, seeded_db, INACTIVE, -60)

    second = in_a_fresh_directory(job, tmp_path, "second").run("--allow-mass-leave")
    assert second.code == 0, second.stderr
    users = sandbox.users()
    assert NEW_EMAIL in users and old_email not in users  # moved, not created anew
    downgraded = second.by_customer()[DOWNGRADED]
    assert users[downgraded["email"]]["plan_type"] == "free"
    assert second.by_customer()[INACTIVE]["segment"] != "in"  # left the segment
    assert inactive_email in users

    before = calls(sandbox)
    third = in_a_fresh_directory(job, tmp_path, "third").run()
    assert third.code == 0, third.stderr
    assert calls(sandbox) == before


@MYSQL
def test_two_hosts_with_one_store_do_not_run_at_once(job, sandbox, mariadb, seeded_db, tmp_path):
    add_pro_customers(mariadb, seeded_db.name, 200)
    sandbox.set_latency(0.05)
    host_a = in_a_fresh_directory(job, tmp_path, "host_a")
    host_b = in_a_fresh_directory(job, tmp_path, "host_b")
    running = host_a.start("--concurrency", "2")
    try:
        wait_until(lambda: calls(sandbox) > 0, 30, "the first host's first request")
        before = calls(sandbox)
        second = host_b.run()
        assert second.code == 4, second.stderr
        assert "another run holds the lock" in second.stderr
        assert second.results_path is None
    finally:
        sandbox.set_latency(0.0)
        running.communicate(timeout=120)
    assert running.returncode in (0, 1)
    assert calls(sandbox) >= before


@MYSQL
def test_a_run_that_loses_its_lock_stops_sending_and_exits_3(job, sandbox, mariadb, seeded_db):
    add_pro_customers(mariadb, seeded_db.name, 400)
    sandbox.set_latency(0.05)
    running = job.start("--concurrency", "1")
    try:
        wait_until(lambda: calls(sandbox) > 0, 30, "the first request")
        holder = mariadb.execute("SELECT IS_USED_LOCK(%s)", (lock_name(job.state_database.name),))
        mariadb.execute(f"KILL CONNECTION {int(holder[0][0])}")
        _, stderr = running.communicate(timeout=60)
    finally:
        sandbox.set_latency(0.0)
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert running.returncode == 3, stderr
    assert "lost the lock" in stderr.splitlines()[-1]
    assert len(sandbox.users()) < 400


@BOTH_STORES
def test_run_history_matches_the_results_file_row_for_row(job, sandbox):
    run = job.run()
    assert run.code == 1  # the seed's malformed email
    rows = job.state_rows(
        "SELECT customer_id, email, segment, status, reason, outstanding, user_update_status, "
        "event_track_status FROM sync_results ORDER BY result_index"
    )
    expected = [
        (
            str(row["customer_id"]),
            row["email"],
            row["segment"],
            row["status"],
            row["reason"],
            int(bool(row.get("outstanding"))),
            (row["user_update"] or {}).get("http_status"),
            (row["event_track"] or {}).get("http_status"),
        )
        for row in run.results["results"]
    ]
    assert rows == expected
    summary = run.results["summary"]
    [history] = job.state_rows(
        "SELECT run_id, exit_code, mode, dry_run, total, succeeded, failed, skipped FROM sync_runs"
    )
    assert history == (
        run.results["run"]["run_id"],
        1,
        "single",
        0,
        summary["total"],
        summary["succeeded"],
        summary["failed"],
        summary["skipped"],
    )


@BOTH_STORES
def test_results_keep_days_removes_old_history(job, sandbox):
    job.run()
    old = job.state_rows("SELECT run_id FROM sync_runs")[0][0]
    statement = (
        "UPDATE sync_runs SET started_at = '2000-01-01 00:00:00' WHERE run_id = '" + old + "'"
    )
    if job.state_database is None:
        with sqlite3.connect(job.state_file) as db:
            db.execute(statement)
    else:
        state_rows(job.state_database, statement)
    job.run()
    assert old not in {row[0] for row in job.state_rows("SELECT run_id FROM sync_runs")}
    assert job.state_rows(f"SELECT COUNT(*) FROM sync_results WHERE run_id = '{old}'") == [(0,)]


def test_a_copied_state_makes_the_next_run_send_nothing(job, sandbox, mariadb):
    assert job.run().code == 1
    name = f"state_copy_{int(time.time() * 1000)}"
    state = mariadb.create_database(name)
    user = job.env["MYSQL_USER"]
    mariadb.execute(f"GRANT ALL ON `{name}`.* TO '{user}'@'%'")
    try:
        to_mysql = {"STATE_STORE": "mysql", "STATE_MYSQL_DATABASE": name}
        copy = job.run("state", "copy", str(job.state_file), **to_mysql)
        assert copy.code == 0, copy.stderr
        assert "copied" in copy.stdout
        before = calls(sandbox)
        run = job.run(**to_mysql)
        assert run.code == 0, run.stderr
        assert calls(sandbox) == before
        again = job.run("state", "copy", str(job.state_file), **to_mysql)
        assert again.code == 2
        assert again.stderr.strip().splitlines()[-1].endswith("add --force to replace it")
        assert job.run("state", "copy", str(job.state_file), "--force", **to_mysql).code == 0
        assert state_rows(state, "SELECT COUNT(*) FROM sync_runs") == [(1,)]  # the file's
    finally:
        mariadb.drop_database(name)


def test_a_least_privilege_account_runs_on_tables_a_dba_created(
    mariadb, seeded_db, app_user, sandbox, tmp_path
):
    name = f"state_lp_{int(time.time() * 1000)}"
    state = mariadb.create_database(name)
    try:
        user = app_user(seeded_db)  # SELECT on customers and page_views only
        mariadb.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{name}`.* TO '{user.user}'@'%'")
        env = job_environment(user, sandbox.base_url, tmp_path)
        job = Job(tmp_path, env)
        job.use_mysql_state(state)
        missing = job.run()
        assert missing.code == 2
        assert "sql/state_schema.sql" in missing.stderr.strip().splitlines()[-1]
        checked = job.run("--check")
        assert "state: FAILED" in checked.stdout
        mariadb.load_sql_file(Path(__file__).resolve().parent.parent / "sql/state_schema.sql", name)
        assert "state: ok: can write" in job.run("--check").stdout
        assert job.run().code == 1  # the seed's malformed email
        before = calls(sandbox)
        assert job.run().code == 0
        assert calls(sandbox) == before
    finally:
        mariadb.drop_database(name)


CUSTOMERS = 300


def state_size(job: Job, mariadb, tmp_path: Path) -> int:
    """Bytes the state tables take (the run history is kept RESULTS_KEEP_DAYS apart)."""
    tables = ("users", "events", "rejections", "forgotten", "unsure_moves", "list_members")
    if job.state_database is None:
        copy = tmp_path / f"measured-{time.monotonic_ns()}.sqlite3"
        source = sqlite3.connect(f"file:{job.state_file}?mode=ro", uri=True)
        source.execute("VACUUM INTO ?", (str(copy),))
        source.close()
        db = sqlite3.connect(copy, isolation_level=None)
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("DROP TABLE sync_results")
        db.execute("DROP TABLE sync_runs")
        db.execute("VACUUM")
        db.close()
        return copy.stat().st_size
    name = job.state_database.name
    for table in tables:
        mariadb.execute(f"ANALYZE TABLE `{name}`.`{table}`")
    [(size,)] = mariadb.execute(
        "SELECT SUM(data_length + index_length) FROM information_schema.tables "
        f"WHERE table_schema = %s AND table_name IN ({', '.join(['%s'] * len(tables))})",
        (name, *tables),
    )
    return int(size)


@BOTH_STORES
def test_twelve_daily_runs_do_not_grow_the_state(job, sandbox, mariadb, seeded_db, tmp_path):
    db = seeded_db.name
    add_pro_customers(mariadb, db, CUSTOMERS)
    sizes = []
    for day in range(1, 13):
        mariadb.execute(
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            "SELECT 5000000 + %s * 10000 + id - %s, id, CONCAT('/day/', %s), 'desktop', "
            "'Testville', UTC_TIMESTAMP() FROM customers WHERE id >= %s",
            (day, FIRST_CUSTOMER_ID, day, FIRST_CUSTOMER_ID),
            database=db,
        )
        run = job.run("--mode", "bulk")
        assert run.code in (0, 1), run.stderr
        assert run.results["summary"]["succeeded"] >= CUSTOMERS
        sizes.append(state_size(job, mariadb, tmp_path))
    assert sizes[11] <= 1.5 * sizes[1], sizes
