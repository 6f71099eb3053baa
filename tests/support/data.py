"""Changing a test's data the way its users' data changes: the database as the admin user,
and Iterable through its API, as another integration would."""

from __future__ import annotations

from typing import Any

import requests

from devtools.mariadb_server import Database, ServerHandle
from sandbox import DEFAULT_API_KEY


def sql(mariadb: ServerHandle, database: Database, statement: str, *params: Any) -> None:
    mariadb.execute(statement, params or None, database=database.name)


def change_email(mariadb: ServerHandle, database: Database, customer_id: int, email: str) -> None:
    sql(mariadb, database, "UPDATE customers SET email = %s WHERE id = %s", email, customer_id)


def change_plan(mariadb: ServerHandle, database: Database, customer_id: int, plan: str) -> None:
    sql(mariadb, database, "UPDATE customers SET plan_type = %s WHERE id = %s", plan, customer_id)


def shift_views(mariadb: ServerHandle, database: Database, customer_id: int, days: int) -> None:
    """Move a customer's page views `days` later (earlier when negative): -60 takes them out
    of the 7-day window, +60 brings them back."""
    sql(
        mariadb,
        database,
        "UPDATE page_views SET viewed_at = viewed_at + INTERVAL %s DAY WHERE customer_id = %s",
        days,
        customer_id,
    )


def profile_in_iterable(base_url: str, email: str, **fields: Any) -> None:
    """A profile written by someone else (another integration, a person in the UI): it
    takes the email and fixes the types of the fields it sets."""
    response = requests.post(
        f"{base_url}/api/users/update",
        headers={"Api-Key": DEFAULT_API_KEY},
        json={"email": email, "dataFields": fields},
        timeout=5,
    )
    assert response.status_code == 200, response.text
