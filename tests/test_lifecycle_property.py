"""The lifecycle under any history: customers change email, plan and activity, are deleted
and come back, Iterable forgets some, runs fail, crash or refresh everything. After every
clean run the sandbox holds exactly what the database says:

- one profile per customer Iterable may hold, under the customer's current email, never one
  under an email they had before;
- the fields of every customer synced in the segment are the database's, leavers included;
- the list equals the segment (less forgotten users);
- a deleted customer has no profile when deletes are asked for;
- a forgotten email is never written again.

The real Syncer, IterableClient, ListMirror and SyncState run in process against the sandbox
(real HTTP), fed Query 2 rows as dicts; Query 2 and the leavers' read-back are worked out
from the model, apart from the code under test.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iterable_client import IterableClient, RetryPolicy
from payloads import Customer as CustomerRecord
from payloads import read_row
from results import ResultsWriter
from sandbox import DEFAULT_API_KEY
from segment import ListMirror, check_list_exists
from sync import Syncer
from sync_state import SyncState
from tests.support.waiting import wait_until

BASE_TIME = datetime(2026, 1, 5, 12, 0, 0)
FAST_RETRY = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.02)
CUSTOMERS = (1, 2, 3, 4)


@dataclass
class Customer:
    customer_id: int
    email_version: int = 0
    first_name: str = "Ann"
    plan_type: str = "pro"
    active: bool = True
    exists: bool = True
    page_view_id: int = 0
    page: str = "/a"
    past_emails: set[str] = field(default_factory=set)

    @property
    def email(self) -> str:
        return f"c{self.customer_id}.v{self.email_version}@example.com"

    @property
    def in_segment(self) -> bool:
        return self.exists and self.active and self.plan_type == "pro"

    def row(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": "Lee",
            "plan_type": self.plan_type,
            "page_view_id": self.page_view_id,
            "page": self.page,
            "device": "desktop",
            "location": None,
            "viewed_at": BASE_TIME + timedelta(minutes=self.page_view_id),
        }

    def record(self) -> CustomerRecord:
        return CustomerRecord(self.customer_id, self.email, self.first_name, "Lee", self.plan_type)


@dataclass
class World:
    sandbox: Any
    workdir: Path
    list_id: int
    delete_deleted: bool
    customers: dict[int, Customer] = field(default_factory=dict)
    next_view: int = 1
    requests_sent: int = 0
    forgotten: set[str] = field(default_factory=set)

    def add(self, customer_id: int) -> None:
        self.customers[customer_id] = Customer(customer_id)
        self.new_view(customer_id, "/a")

    def new_view(self, customer_id: int, page: str) -> None:
        customer = self.customers[customer_id]
        customer.page_view_id, customer.page = self.next_view, page
        self.next_view += 1

    def change(self, step: tuple[Any, ...]) -> None:
        kind, customer_id = step[0], step[1]
        customer = self.customers[customer_id]
        if kind == "view":
            self.new_view(customer_id, step[2])
        elif kind == "email":
            customer.past_emails.add(customer.email)
            customer.email_version += 1
        elif kind == "plan":
            customer.plan_type = step[2]
        elif kind == "active":
            customer.active = step[2]
        elif kind == "exists":
            customer.exists = step[2]
        elif kind == "forget" and customer.email not in self.forgotten:
            self.sandbox.forget(customer.email)
            self.forgotten.add(customer.email)

    def rows(self) -> list[dict[str, Any]]:
        segment = [c for c in self.customers.values() if c.in_segment]
        return [c.row() for c in sorted(segment, key=lambda c: c.customer_id)]

    def read_customers(self, ids: list[int]) -> dict[int, CustomerRecord]:
        return {
            cid: self.customers[cid].record()
            for cid in ids
            if cid in self.customers and self.customers[cid].exists
        }

    def run(self, mode: str, crash: bool = False, full_refresh: bool = False) -> int:
        state = SyncState(self.workdir / "state.sqlite3", self.list_id)
        client = IterableClient(
            DEFAULT_API_KEY, self.sandbox.base_url, timeout=0.3, retry=FAST_RETRY
        )
        list_id = self.list_id
        client.set_gate(lambda: check_list_exists(client, list_id))
        lists = ListMirror(client, state, self.list_id, "email")
        writer = ResultsWriter(self.workdir)
        syncer = Syncer(
            client=client,
            writer=writer,
            state=state,
            full_refresh=full_refresh,
            lists=lists,
            delete_deleted=self.delete_deleted,
        )
        rows = self.rows()
        try:
            if mode == "bulk":
                syncer.run_bulk(map(read_row, rows), 3, 3)
            else:
                syncer.run_single(map(read_row, rows), 3)
            if not crash:
                syncer.finish_segment(self.read_customers, 3)
        finally:
            syncer.close()
            lists.close()
            client.close()
            writer.discard()
            if crash:
                state.abandon()
            else:
                state.close()
        made = client.stats.total_requests()
        self.requests_sent += made
        wait_until(
            lambda: self.sandbox.stats()["total_requests"] >= self.requests_sent,
            5.0,
            "the sandbox to finish every request sent",
        )
        return made

    def segment(self) -> set[int]:
        return {c.customer_id for c in self.customers.values() if c.in_segment}

    def problems(self, left: set[int]) -> list[str]:
        """How the sandbox differs from what the database says it should hold, after a
        clean run in which the customers in `left` left the segment."""
        profiles = {p["email"]: p for p in self.sandbox.profiles() if p["email"]}
        found = []
        for customer in self.customers.values():
            cid, current = customer.customer_id, customer.email
            held = [e for e in customer.past_emails | {current} if e in profiles]
            if len(held) > 1:
                found.append(f"customer {cid}: {len(held)} profiles")
            if current in self.forgotten:
                continue
            profile = profiles.get(current)
            if customer.in_segment or (cid in left and customer.exists):
                if profile is None or held != [current]:
                    found.append(f"customer {cid}: not (only) under {current}: {held}")
                    continue
                fields = profile["dataFields"]
                wanted = {"first_name": customer.first_name, "plan_type": customer.plan_type}
                if {k: fields.get(k) for k in wanted} != wanted:
                    found.append(f"customer {cid}: {fields} != {wanted}")
            if customer.in_segment and profile is not None:
                if profile["dataFields"].get("recent_page_view") != customer.page:
                    found.append(f"customer {cid}: recent_page_view is not {customer.page}")
                if f"page-view-{customer.page_view_id}" not in profile["events"]:
                    found.append(f"customer {cid}: latest event missing")
            if cid in left and not customer.exists and self.delete_deleted and held:
                found.append(f"deleted customer {cid} still in Iterable under {held}")
        found += [f"forgotten {e} written again" for e in self.forgotten if e in profiles]
        members = {m["email"] for m in self.sandbox.list_members(self.list_id)}
        segment = {self.customers[cid].email for cid in self.segment()} - self.forgotten
        if members != segment:
            found.append(f"list {sorted(members)} != segment {sorted(segment)}")
        found += [f"duplicate {d['ids']}" for d in self.sandbox.duplicate_events()]
        return found


customer_ids = st.sampled_from(CUSTOMERS)
changes = st.one_of(
    st.tuples(st.just("view"), customer_ids, st.sampled_from(["/a", "/b"])),
    st.tuples(st.just("email"), customer_ids),
    st.tuples(st.just("plan"), customer_ids, st.sampled_from(["pro", "free"])),
    st.tuples(st.just("active"), customer_ids, st.booleans()),
    st.tuples(st.just("exists"), customer_ids, st.booleans()),
    st.tuples(st.just("forget"), customer_ids),
)
runs = st.tuples(
    st.just("run"),
    st.sampled_from(["single", "bulk"]),
    st.sampled_from(["clean", "clean", "full_refresh", "faults", "crash"]),
    st.integers(0, 99),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=st.lists(st.one_of(changes, runs), min_size=1, max_size=10),
    delete_deleted=st.booleans(),
)
def test_any_lifecycle_keeps_iterable_true_to_the_database(sandbox, history, delete_deleted):
    sandbox.reset()
    list_id = sandbox.create_list("segment")
    with tempfile.TemporaryDirectory() as tmp:
        world = World(sandbox, Path(tmp), list_id, delete_deleted)
        for customer_id in CUSTOMERS:
            world.add(customer_id)
        world.run("single")
        assert world.problems(left=set()) == []
        # The segment as the last run that reached its end saw it: who leaves in the next.
        before = world.segment()
        for step in history:
            if step[0] != "run":
                world.change(step)
                continue
            _, mode, kind, seed = step
            if kind == "crash":
                world.run(mode, crash=True)
                continue
            if kind == "faults":
                sandbox.add_fault(
                    "status",
                    status=503,
                    apply_first=seed % 2 == 0,
                    probability=0.5,
                    seed=seed,
                    times=None,
                )
                world.run(mode)
                sandbox.clear_faults()
            else:
                world.run(mode, full_refresh=kind == "full_refresh")
                assert world.problems(left=before - world.segment()) == [], history
            before = world.segment()
        # After anything, one clean run converges, and the next one sends nothing.
        world.run("single")
        assert world.problems(left=set()) == []
        assert world.run("bulk") == 0, "a converged run made calls"
