"""Test support: the oracle that says what the sandbox should hold, and waiting helpers."""
