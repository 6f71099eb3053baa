"""The sync state under runs, failures and crashes: whatever happens, the next clean run
leaves Iterable holding exactly the current data, every event once, and a run after that
sends nothing.

The real Syncer, IterableClient, ResultsWriter and SyncState run in process against the
sandbox (real HTTP), fed Query 2 rows as dicts; a crash is a run whose state is abandoned
without committing, as when the process is killed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sync_state
from iterable_client import CircuitBreaker, IterableClient, RetryPolicy
from payloads import read_row
from results import ResultsWriter
from sandbox import DEFAULT_API_KEY
from sync import Syncer
from sync_state import SyncState
from tests.support.oracle import unbacked_state_claims
from tests.support.waiting import wait_until

BASE_TIME = datetime(2026, 1, 5, 12, 0, 0)
FAST_RETRY = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.02)


@dataclass
class Customer:
    customer_id: int
    first_name: str = "Ann"
    last_name: str = "Lee"
    page_view_id: int = 0
    page: str = "/a"

    @property
    def email(self) -> str:
        return f"c{self.customer_id}@example.com"

    def row(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "plan_type": "pro",
            "page_view_id": self.page_view_id,
            "page": self.page,
            "device": "desktop",
            "location": None,
            "viewed_at": BASE_TIME + timedelta(minutes=self.page_view_id),
        }

    def profile(self) -> dict[str, Any]:
        return {
            "first_name": self.first_name,
            "last_name": self.last_name,
            "plan_type": "pro",
            "recent_page_view": self.page,
        }


@dataclass
class World:
    """The source data, and the in-process job run against it."""

    sandbox: Any
    workdir: Path
    customers: dict[int, Customer] = field(default_factory=dict)
    next_view: int = 1
    events_ever: set[str] = field(default_factory=set)
    requests_sent: int = 0  # attempts the clients made, as their own stats count them

    def add(self, customer_id: int) -> Customer:
        customer = Customer(customer_id)
        self.customers[customer_id] = customer
        self.new_view(customer_id, "/a")
        return customer

    def new_view(self, customer_id: int, page: str) -> None:
        customer = self.customers[customer_id]
        customer.page_view_id, customer.page = self.next_view, page
        self.next_view += 1
        self.events_ever.add(f"page-view-{customer.page_view_id}")

    def rows(self) -> list[dict[str, Any]]:
        return [c.row() for c in sorted(self.customers.values(), key=lambda c: c.customer_id)]

    def run(
        self,
        mode: str = "single",
        crash: bool = False,
        commit_after: int | None = None,
        rows: list[dict[str, Any]] | None = None,
    ) -> int:
        """One run; crash abandons the state (commit_after: rows after which it was saved).

        Returns the requests the run made, once the sandbox has answered every one of them.
        """
        state = SyncState(self.workdir / "state.sqlite3")
        # Probes 20 ms apart: a run whose every request fails ends as fast as before.
        breaker = CircuitBreaker(self.sandbox.base_url, probe_gaps=(0.02,))
        client = IterableClient(
            DEFAULT_API_KEY, self.sandbox.base_url, timeout=0.3, retry=FAST_RETRY, breaker=breaker
        )
        writer = ResultsWriter(self.workdir)
        seen = [0]

        def on_rows(count: int) -> None:
            seen[0] += count
            if commit_after is not None and seen[0] - count < commit_after <= seen[0]:
                state.flush()

        syncer = Syncer(client=client, writer=writer, state=state, on_rows=on_rows)
        rows = self.rows() if rows is None else rows
        try:
            if mode == "bulk":
                syncer.run_bulk(map(read_row, rows), 3, 3)
            else:
                syncer.run_single(map(read_row, rows), 3)
        finally:
            syncer.close()
            client.close()
            writer.discard()
            if crash:
                state.abandon()
            else:
                state.close()
        made = client.stats.total_requests()
        self.requests_sent += made
        self.drain()
        return made

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until the sandbox has finished every request sent so far, so a slow answer
        the client gave up on is not counted against a later run."""
        wait_until(
            lambda: self.sandbox.stats()["total_requests"] >= self.requests_sent,
            timeout,
            "the sandbox to finish every request sent",
        )

    def problems(self) -> list[str]:
        """How the sandbox's store differs from the current data, delivered exactly once."""
        users, events = self.sandbox.users(), self.sandbox.events()
        found = []
        for customer in self.customers.values():
            if users.get(customer.email) != customer.profile():
                found.append(f"{customer.email}: {users.get(customer.email)} != current")
            event = events.get(f"page-view-{customer.page_view_id}")
            if event is None or event["dataFields"]["page"] != customer.page:
                found.append(f"{customer.email}: latest event page-view-{customer.page_view_id}")
        found += [
            f"extra user {e}" for e in set(users) - {c.email for c in self.customers.values()}
        ]
        found += [f"unknown event {e}" for e in set(events) - self.events_ever]
        found += [f"duplicate {d['ids']}" for d in self.sandbox.duplicate_events()]
        return found


@pytest.fixture
def world(sandbox, tmp_path) -> World:
    return World(sandbox, tmp_path)


@pytest.fixture
def no_timed_commits(monkeypatch):
    """Commits only at close (and when the code asks for one), so a crash loses every
    acknowledgement of the run whatever the machine's speed."""
    monkeypatch.setattr(sync_state, "COMMIT_EVERY_SECONDS", 3600.0)
    monkeypatch.setattr(sync_state, "COMMIT_EVERY_CHANGES", 10**9)


# -- regressions: a profile Iterable may hold must never be skipped as unchanged ------------


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_profile_reverted_after_an_update_failed_after_it_was_applied(world, sandbox, mode):
    customer = world.add(1)
    world.run(mode)
    world.new_view(1, "/b")
    endpoint = "users/bulkUpdate" if mode == "bulk" else "users/update"
    sandbox.add_fault("status", endpoint=endpoint, status=503, apply_first=True, times=None)
    world.run(mode)  # Iterable stored /b, the job saw only 503s
    assert sandbox.users()[customer.email]["recent_page_view"] == "/b"
    sandbox.clear_faults()
    world.new_view(1, "/a")  # back to the profile the state recorded first
    world.run(mode)
    assert world.problems() == []


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_profile_reverted_after_a_crash_lost_the_acknowledgement(
    world, sandbox, mode, no_timed_commits
):
    customer = world.add(1)
    world.run(mode)
    world.new_view(1, "/b")
    world.run(mode, crash=True)  # Iterable accepted /b; the state never saved that
    assert sandbox.users()[customer.email]["recent_page_view"] == "/b"
    world.new_view(1, "/a")
    world.run(mode)
    assert world.problems() == []


# -- the property: any history converges to exactly-once -----------------------------------

CUSTOMERS = (1, 2, 3, 4)
ENDPOINTS = ("*", "users/update", "events/track", "users/bulkUpdate", "events/trackBulk")

faults = st.one_of(
    st.none(),
    st.builds(
        lambda status, apply_first, p, endpoint, seed: dict(
            kind="status",
            status=status,
            apply_first=apply_first,
            probability=p,
            endpoint=endpoint,
            seed=seed,
            times=None,
        ),
        st.sampled_from([429, 500, 503]),
        st.booleans(),
        st.sampled_from([0.3, 0.6, 1.0]),
        st.sampled_from(ENDPOINTS),
        st.integers(0, 99),
    ),
    st.builds(
        lambda apply_first, p, endpoint, seed: dict(
            kind="drop",
            apply_first=apply_first,
            probability=p,
            endpoint=endpoint,
            seed=seed,
            times=None,
        ),
        st.booleans(),
        st.sampled_from([0.3, 0.6, 1.0]),
        st.sampled_from(ENDPOINTS),
        st.integers(0, 99),
    ),
    # An answer slower than the client's 0.3 s timeout, after the write; once per run, as
    # each costs a timeout's wait.
    st.builds(
        lambda endpoint: dict(kind="delay", delay=0.45, apply_first=True, endpoint=endpoint),
        st.sampled_from(ENDPOINTS),
    ),
)
steps = st.one_of(
    st.tuples(st.just("rename"), st.sampled_from(CUSTOMERS), st.sampled_from(["Ann", "Bob"])),
    st.tuples(st.just("view"), st.sampled_from(CUSTOMERS), st.sampled_from(["/a", "/b"])),
    st.tuples(
        st.just("run"),
        st.sampled_from(["single", "bulk"]),
        faults,
        st.booleans(),  # crash: the state is abandoned, not committed
        st.one_of(st.none(), st.integers(1, len(CUSTOMERS))),  # rows before a commit
        st.integers(0, len(CUSTOMERS)),  # rows the run got to read (crash only)
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=st.lists(steps, min_size=1, max_size=7), final_mode=st.sampled_from(["single", "bulk"])
)
# The history that lost a profile before fingerprints were forgotten ahead of a send.
@example(
    history=[
        ("run", "single", None, False, None, 0),
        ("view", 1, "/b"),
        ("run", "bulk", None, True, None, 4),
        ("view", 1, "/a"),
    ],
    final_mode="single",
)
def test_any_history_of_runs_failures_and_crashes_converges_to_exactly_once(
    sandbox, history, final_mode
):
    sandbox.reset()
    with tempfile.TemporaryDirectory() as tmp:
        world = World(sandbox, Path(tmp))
        for customer_id in CUSTOMERS:
            world.add(customer_id)
        state_path = world.workdir / "state.sqlite3"
        for step in history:
            if step[0] == "rename":
                world.customers[step[1]].first_name = step[2]
            elif step[0] == "view":
                world.new_view(step[1], step[2])
            else:
                _, mode, fault, crash, commit_after, read = step
                if fault is not None:
                    options = dict(fault)
                    sandbox.add_fault(options.pop("kind"), **options)
                world.run(
                    mode,
                    crash=crash,
                    commit_after=commit_after,
                    rows=world.rows()[:read] if crash else None,
                )
                sandbox.clear_faults()
                # Whatever happened, the state claims nothing Iterable does not hold.
                assert unbacked_state_claims(state_path, sandbox) == []
        world.run(final_mode)
        assert world.problems() == []
        assert unbacked_state_claims(state_path, sandbox) == []
        calls = sandbox.stats()["total_requests"]
        assert world.run(final_mode) == 0, "a converged run made calls"
        assert sandbox.stats()["total_requests"] == calls
