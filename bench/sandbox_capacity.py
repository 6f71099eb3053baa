"""Can one sandbox process take bulk traffic at a given ceiling? Measured without the job.

A bulk run of the job cannot tell whether the job or the sandbox set its pace: both share
the machine, and the job's events wait for the sandbox's answers. This probe sends what
the job would send at the ceiling, prepared in advance so that the sender costs next to
nothing: users/bulkUpdate and events/trackBulk bodies of `batch` items, each endpoint
paced at `rate` requests a second, several requests in flight. It then checks the
sandbox's store like a job run (bench.dataset.verify) and reports the sandbox's CPU over
the probe.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench import dataset as data
from bench.busy_core import machine_busy_seconds
from bench.sandbox_process import SandboxProcess

# Requests of both endpoints that may be open at once; enough that a slow answer does
# not hold back the next request's departure.
SENDERS = 8


@dataclass(frozen=True)
class Sent:
    endpoint: str
    started: float
    answered: float
    status: int


def probe_dataset(users: int) -> data.Dataset:
    """Expectations for users 1..N; nothing is loaded, the probe builds the bodies itself."""
    t0 = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    return data.Dataset(
        database="",
        customers=users,
        views=1,
        t0=t0,
        total_customers=users,
        total_views=0,
        load_seconds=0.0,
    )


def bodies(dataset: data.Dataset, batch: int) -> tuple[list[bytes], list[bytes]]:
    """users/bulkUpdate and events/trackBulk bodies as the job builds them from the rows."""
    user_bodies, event_bodies = [], []
    for low in range(1, dataset.customers + 1, batch):
        ids = range(low, min(dataset.customers, low + batch - 1) + 1)
        users = [{"email": dataset.email(i), "dataFields": dataset.expected_user(i)} for i in ids]
        events = [dataset.expected_event(i) for i in ids]
        user_bodies.append(json.dumps({"users": users}, separators=(",", ":")).encode())
        event_bodies.append(json.dumps({"events": events}, separators=(",", ":")).encode())
    return user_bodies, event_bodies


class Sender:
    """One keep-alive connection per sending thread."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.local = threading.local()

    def post(self, endpoint: str, body: bytes) -> Sent:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.local.connection = connection
        started = time.monotonic()
        connection.request(
            "POST",
            f"/api/{endpoint}",
            body=body,
            headers={"Api-Key": self.api_key, "Content-Type": "application/json"},
        )
        reply = connection.getresponse()
        reply.read()
        return Sent(endpoint, started, time.monotonic(), reply.status)


def run(sandbox: SandboxProcess, users: int, batch: int, rate: float) -> dict[str, Any]:
    """Send `users` users and their events in batches of `batch`, `rate` requests/s each.

    The result's machine_busy_cores counts every process, this one and the sandbox too:
    the sandbox can only keep up if the machine leaves it the CPU it needs.
    """
    dataset = probe_dataset(users)
    user_bodies, event_bodies = bodies(dataset, batch)
    sandbox.reset()
    sender = Sender(sandbox.port, sandbox.api_key)
    schedule = sorted(
        [(k / rate, "users/bulkUpdate", body) for k, body in enumerate(user_bodies)]
        # Events half an interval later, as the job sends a batch's events after its users.
        + [((k + 0.5) / rate, "events/trackBulk", body) for k, body in enumerate(event_bodies)],
        key=lambda entry: entry[0],
    )
    print(
        f"sandbox capacity: {users:,} users and events in batches of {batch:,}, "
        f"{rate:g} requests/s per endpoint (ceiling {rate * batch:,.0f} users/s) ...",
        flush=True,
    )
    cpu_before = sandbox.cpu_seconds()
    machine_before = machine_busy_seconds()
    started = time.monotonic()
    with ThreadPoolExecutor(SENDERS, thread_name_prefix="probe") as pool:
        futures = []
        for offset, endpoint, body in schedule:
            delay = started + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(sender.post, endpoint, body))
        sent = [future.result() for future in futures]
    elapsed = max(s.answered for s in sent) - started
    sandbox_cpu = sandbox.cpu_seconds() - cpu_before
    machine = machine_busy_seconds() - machine_before
    checks = data.verify(
        dataset,
        sandbox.control("GET", "users"),
        sandbox.control("GET", "events"),
        sandbox.control("GET", "duplicates")["duplicates"],
    )
    ceiling = rate * batch
    answer_seconds = sorted(s.answered - s.started for s in sent)
    result = {
        "users": users,
        "batch_size": batch,
        "requests_per_second_per_endpoint": rate,
        "ceiling": ceiling,
        "seconds": round(elapsed, 3),
        "users_per_second": round(users / elapsed, 1),
        "efficiency": round(users / ceiling / elapsed, 3),
        "sandbox_cpu_seconds": round(sandbox_cpu, 2),
        "sandbox_cpu_share": round(sandbox_cpu / elapsed, 3),
        "sandbox_cpu_seconds_per_1000_users": round(sandbox_cpu / users * 1000, 3),
        "machine_busy_cores": round(machine / elapsed, 2),
        "answer_seconds_median": round(answer_seconds[len(answer_seconds) // 2], 3),
        "answer_seconds_max": round(answer_seconds[-1], 3),
        "statuses": dict(sorted(Counter(str(s.status) for s in sent).items())),
        "lost": checks["lost_users"] + checks["lost_events"],
        "duplicated": checks["duplicate_events"] + checks["extra_users"] + checks["extra_events"],
        "checks": checks,
    }
    print(
        f"  {result['users_per_second']:,.0f} users/s over {result['seconds']}s, sandbox CPU "
        f"{result['sandbox_cpu_seconds']}s ({result['sandbox_cpu_share']:.0%} of a core), "
        f"answers in {result['answer_seconds_median']}s median / "
        f"{result['answer_seconds_max']}s max, statuses {result['statuses']}, machine busy "
        f"{result['machine_busy_cores']} cores, "
        f"lost {result['lost']}, duplicated {result['duplicated']}",
        flush=True,
    )
    return result
