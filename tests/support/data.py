"""Changing a test's database the way its users' data changes, as the admin user."""

from __future__ import annotations

from typing import Any

from devtools.mariadb_server import Database, ServerHandle


def sql(mariadb: ServerHandle, database: Database, statement: str, *params: Any) -> None:
    mariadb.execute(statement, params or None, database=database.name)
