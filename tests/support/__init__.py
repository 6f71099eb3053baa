"""Test support: the job as cron runs it, the oracle that says what the sandbox should hold,
waiting helpers, and the rule for a missing prerequisite (skip locally, fail in CI)."""
