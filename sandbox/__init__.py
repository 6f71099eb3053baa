"""A local Iterable-compatible HTTP server: the sandbox the tests, the demo and the benchmark use.

It imitates the part of Iterable's REST API this project calls (users/update, events/track,
users/bulkUpdate, events/trackBulk, users/getByEmail) the way Iterable answers it: the same
validation errors and codes, per-field type locking, API-key checks, per-endpoint rate limits
and bulk results that name failed items. Faults (error statuses, delays, dropped connections,
optionally after the write was applied) can be injected to test a client's resilience, and
everything stored is observable, in process and over HTTP under /_sandbox/.

Modules, by job: wire (HTTP values), config (endpoints, rate limits, faults), store (what is
held), handlers (one per endpoint), server (the in-process API and the asyncio server) and
__main__ (the command line).

In process (the asyncio loop runs in a daemon thread)::

    with SandboxServer(latency=0.0) as sandbox:
        requests.post(sandbox.base_url + "/api/users/update", headers={"Api-Key": "sandbox-key"},
                      json={"email": "a@example.com", "dataFields": {"plan": "pro"}})
        assert sandbox.users()["a@example.com"] == {"plan": "pro"}

As a process::

    python -m sandbox --port 0 --latency-ms 50 --rate-limits iterable --port-file PATH
"""

from sandbox.config import (
    DEFAULT_API_KEY,
    ENDPOINTS,
    ITERABLE_RATE_LIMITS,
    RATE_LIMIT_JSON,
    RATE_LIMIT_TEXT,
    FaultRule,
    SandboxConfig,
    TokenBucket,
    parse_rate_limits,
)
from sandbox.handlers import MAX_BULK_BODY_BYTES
from sandbox.server import DEFAULT_HOST, Sandbox, SandboxServer

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_HOST",
    "ENDPOINTS",
    "ITERABLE_RATE_LIMITS",
    "MAX_BULK_BODY_BYTES",
    "RATE_LIMIT_JSON",
    "RATE_LIMIT_TEXT",
    "FaultRule",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "TokenBucket",
    "parse_rate_limits",
]
