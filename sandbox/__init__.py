"""A local Iterable-compatible HTTP server: the sandbox the tests, the demo and the benchmark use.

It answers the part of Iterable's REST API this project uses or may use, the way Iterable
answers it: the same validation errors and codes, per-field type locking, API-key checks,
per-endpoint rate limits and bulk results that name failed items. Faults (error statuses,
delays, dropped connections, optionally after the write was applied) can be injected to test
a client's resilience, and everything stored is observable, in process and over HTTP under
/_sandbox/.

Endpoints, with the names request_count(), stats(), rate limits and faults use:
users/update, events/track, users/bulkUpdate, events/trackBulk, users/getByEmail,
users/get (GET /api/users/{email}), users/getByUserId (GET /api/users/byUserId/{userId}),
users/updateEmail, users/delete (both DELETE routes), users/forgotten, users/forget,
users/getFields, lists (GET /api/lists), lists/create (POST /api/lists), lists/subscribe,
lists/unsubscribe.

The store holds profiles: an optional email, an optional userId, dataFields, events; static
lists hold profiles. The project type (hybrid by default; set in the constructor, configure()
or POST /_sandbox/config, only while the sandbox is empty) decides how users are identified:

- hybrid: email and userId are both unique and either identifies a profile;
- email: the email is the key; a userId identifies only a profile that already has it
  (users/update with preferUserId creates one);
- userId: the userId is the key and emails are not unique, so a request that identifies a
  user by email is refused (400 BadParams), as are the email-only endpoints.

Where Iterable's documents leave a choice open, the sandbox answers:

- users/update by userId with dataFields.email sets or changes the profile's email: 409
  EmailAlreadyExists when another profile has it (not in userId projects), 409
  ForgottenUserError when it is forgotten; by email, a different dataFields.email is 400
  BadParams (use updateEmail). In bulk answers these are conflictEmails, forgottenEmails and
  invalidDataEmails. A write about an unknown user creates the profile, events included.
- users/updateEmail (email and hybrid projects) moves the profile with its data, events and
  list memberships; currentEmail wins over currentUserId. Unknown current user: 400
  UnknownEmailError / UnknownUserIdError; new email taken: 409 EmailAlreadyExists; either
  one forgotten: 409 ForgottenUserError.
- lists/subscribe creates unknown users unless updateExistingUsersOnly (hybrid and userId
  projects); lists/unsubscribe names unknown users in notFoundEmails / notFoundUserIds and
  counts someone not on the list as removed. Every channelUnsubscribe received is recorded;
  omitted or true marks the profile unsubscribed_globally. An unknown listId is 400 BadParams
  (the spec lists no 404 for these endpoints).
- DELETE /api/users/{email} and /byUserId/{userId} remove the profile with its events and
  memberships; an unknown user is 400 NotFound. GET of an unknown user answers 200 {}.
- forget(identifier) removes the profile's data; later writes about its email or userId are
  409 ForgottenUserError alone and forgottenEmails / forgottenUserIds in bulk and list
  answers. GET /api/users/forgotten lists SHA-256 hashes of the forgotten emails.
- GET /api/users/getFields (not in Iterable's spec; the shape of recorded answers) lists
  email, userId and every user field with the type its first value fixed: string, long,
  double, boolean, object, an array by its first item's type. Dates are not told apart from
  strings.
- Bulk requests: no item count limit unless max_bulk_items is set; more items, or a body
  over 4 MB, answer BatchTooLarge with batch_too_large_status (400, or 413).

In process (the asyncio loop runs in a daemon thread)::

    with SandboxServer(latency=0.0) as sandbox:
        requests.post(sandbox.base_url + "/api/users/update", headers={"Api-Key": "sandbox-key"},
                      json={"email": "a@example.com", "dataFields": {"plan": "pro"}})
        assert sandbox.users()["a@example.com"] == {"plan": "pro"}

As a process::

    python -m sandbox --port 0 --latency-ms 50 --rate-limits iterable --port-file PATH

Modules, by job: wire (HTTP values), config (endpoints, rate limits, faults), store (what is
held), validation (request checks and error answers), handlers (routes, one handler per
endpoint), server (the in-process API, /_sandbox/ and the asyncio server), __main__ (the CLI).
"""

from sandbox.config import (
    BATCH_TOO_LARGE_STATUSES,
    DEFAULT_API_KEY,
    ENDPOINTS,
    ITERABLE_RATE_LIMITS,
    PROJECT_TYPES,
    RATE_LIMIT_JSON,
    RATE_LIMIT_TEXT,
    FaultRule,
    ProjectType,
    SandboxConfig,
    TokenBucket,
    parse_rate_limits,
)
from sandbox.handlers import ROUTES, Route
from sandbox.server import DEFAULT_HOST, Sandbox, SandboxServer
from sandbox.store import email_hash
from sandbox.validation import MAX_BULK_BODY_BYTES

__all__ = [
    "BATCH_TOO_LARGE_STATUSES",
    "DEFAULT_API_KEY",
    "DEFAULT_HOST",
    "ENDPOINTS",
    "ITERABLE_RATE_LIMITS",
    "MAX_BULK_BODY_BYTES",
    "PROJECT_TYPES",
    "RATE_LIMIT_JSON",
    "RATE_LIMIT_TEXT",
    "ROUTES",
    "FaultRule",
    "ProjectType",
    "Route",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "TokenBucket",
    "email_hash",
    "parse_rate_limits",
]
