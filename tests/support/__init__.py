"""Test support: the job as cron runs it, the oracle that says what the sandbox should hold,
and waiting helpers."""
