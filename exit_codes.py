"""Exit codes: the constants main(), the preflight and the report use, and what each means.

The README's exit-code table is generated from EXIT_CODES (a test fails when it drifts).
"""

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_CONFIG = 2
EXIT_ABORTED = 3
EXIT_LOCKED = 4

EXIT_CODES = {
    EXIT_OK: (
        "ok: every row succeeded or was skipped, or still fails exactly as on an earlier run "
        "(outstanding, data unchanged), or there was nothing to do"
    ),
    EXIT_ROWS_FAILED: (
        "rows failed: at least one row failed that had not failed before, or whose data "
        "changed (the results file says which and why)"
    ),
    EXIT_CONFIG: (
        "bad configuration: bad settings or arguments, or an unusable sync state file; "
        "nothing was sent"
    ),
    EXIT_ABORTED: (
        "run aborted: database unreachable or query failed, Iterable rejected the key "
        "(401/403), Iterable unreachable (no request succeeded for OUTAGE_SECONDS), the first "
        "20 profile updates all refused for a field's type, ITERABLE_LIST_ID names no list, "
        "interrupted by SIGTERM/SIGINT, a failed --check, or an unexpected error (logged "
        "with its traceback)"
    ),
    EXIT_LOCKED: "locked: another run holds the lock; this one did nothing",
}


def run_exit_code(cut_short: bool, new_failures: int) -> int:
    """How a run that ended maps to an exit code, for main() and the report alike: cut
    short (aborted or stopped by a signal) is 3; rows that failed anew are 1; rows still
    failing as on an earlier run (outstanding) alerted then, and are 0 now."""
    if cut_short:
        return EXIT_ABORTED
    return EXIT_ROWS_FAILED if new_failures else EXIT_OK
