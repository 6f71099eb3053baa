"""Test support: the oracle that says what the sandbox should hold, waiting helpers, and
the rule for a missing prerequisite (skip locally, fail in CI)."""
