"""Masking emails for logs and the report: one rule, used everywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logger_config import mask_email, mask_emails


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("jane@example.com", "j***@example.com"),
        ("J.Doe+tag@mail.example.co.uk", "J***@mail.example.co.uk"),
        ("not-an-email", "n***"),
        ("@example.com", "***@example.com"),
        ("a@b@example.com", "a***@example.com"),
        ("", "<none>"),
        (None, "<none>"),
    ],
)
def test_mask_email(value, masked):
    assert mask_email(value) == masked


def test_mask_emails_masks_every_address_and_is_idempotent():
    text = "Invalid email: 'bob@example.com', also <zoë.ünï@exämple.de> and x@localhost"
    masked = mask_emails(text)
    assert masked == "Invalid email: 'b***@example.com', also <z***@exämple.de> and x***@localhost"
    assert mask_emails(masked) == masked


@given(
    local=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+-]{1,20}", fullmatch=True),
    domain=st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,6}", fullmatch=True),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_mask_emails_never_leaves_a_full_address(local, domain, before, after):
    address = f"{local}@{domain}"
    assert address not in mask_emails(f"{before} {address} {after}")
