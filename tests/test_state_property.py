"""The sync state under runs, failures and crashes: whatever happens, the next clean run
leaves Iterable holding exactly the current data, every event once, and a run after that
sends nothing.

The real Syncer, IterableClient, ResultsWriter and SyncState run in process against the
sandbox (real HTTP), fed Query 2 rows as dicts; a crash is a run whose state is abandoned
without committing, as when the process is killed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sync_state
from iterable_client import IterableClient, RetryPolicy
from iterable_sandbox import DEFAULT_API_KEY
from results import ResultsWriter
from sync import Syncer
from sync_state import SyncState

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
    ) -> None:
        """One run; crash abandons the state (commit_after: rows after which it was saved)."""
        state = SyncState(self.workdir / "state.sqlite3")
        client = IterableClient(
            DEFAULT_API_KEY, self.sandbox.base_url, timeout=0.3, retry=FAST_RETRY
        )
        writer = ResultsWriter(self.workdir)
        seen = [0]

        def on_row() -> None:
            seen[0] += 1
            if seen[0] == commit_after:
                state.flush()

        syncer = Syncer(client=client, writer=writer, state=state, on_row=on_row)
        try:
            if mode == "bulk":
                syncer.run_bulk(rows or self.rows(), 3, 3)
            else:
                syncer.run_single(rows or self.rows(), 3)
        finally:
            syncer.duplicates.close()
            client.close()
            writer.discard()
            if crash:
                state.abandon()
            else:
                state.close()

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
