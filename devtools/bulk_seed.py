"""Synthetic pro customers on top of the demo seed, for tests and runs that need many rows.

`python -m devtools.bulk_seed --port 3307 --database demo --customers 5000` adds them to a
database (the throwaway server's, say) for trying the progress display and bulk mode.

Each synthetic customer has one page view inside the 7-day window, so every one of
them is a Query 2 row; rows are generated in the server with INSERT ... SELECT over a
digits cross join (portable to MySQL 8 and MariaDB, no recursion limits).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devtools.mariadb_server import ServerHandle

FIRST_CUSTOMER_ID = 100_000
FIRST_PAGE_VIEW_ID = 1_000_000
MAX_COUNT = 100_000
DEVICES = ("desktop", "mobile", "tablet")

_DIGITS = (
    "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {i}" for i in range(1, 10)) + ")"
)
_SEQUENCE = (
    "SELECT d0.d + 10 * d1.d + 100 * d2.d + 1000 * d3.d + 10000 * d4.d AS n "
    f"FROM {_DIGITS} AS d0 CROSS JOIN {_DIGITS} AS d1 CROSS JOIN {_DIGITS} AS d2 "
    f"CROSS JOIN {_DIGITS} AS d3 CROSS JOIN {_DIGITS} AS d4"
)


def synthetic_email(n: int) -> str:
    return f"bulk.{n}@example.com"


def add_pro_customers(server: ServerHandle, database: str, count: int) -> None:
    """Add `count` pro customers (n = 0..count-1), each with one recent page view.

    Customer n has id FIRST_CUSTOMER_ID + n, email bulk.<n>@example.com, first name
    First<n>, last name Last<n>, and page view FIRST_PAGE_VIEW_ID + n on /bulk/<n>
    between 1 and 600 minutes ago.
    """
    if not 0 < count <= MAX_COUNT:
        raise ValueError(f"count must be from 1 to {MAX_COUNT}")
    server.execute(
        "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
        "SELECT %s + n, CONCAT('bulk.', n, '@example.com'), CONCAT('First', n), "
        "CONCAT('Last', n), 'pro', UTC_TIMESTAMP() - INTERVAL 30 DAY "
        f"FROM ({_SEQUENCE}) AS seq WHERE n < %s",
        (FIRST_CUSTOMER_ID, count),
        database=database,
    )
    server.execute(
        "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
        "SELECT %s + n, %s + n, CONCAT('/bulk/', n), ELT(1 + n MOD 3, %s, %s, %s), "
        "'Testville', UTC_TIMESTAMP() - INTERVAL (1 + n MOD 600) MINUTE "
        f"FROM ({_SEQUENCE}) AS seq WHERE n < %s",
        (FIRST_PAGE_VIEW_ID, FIRST_CUSTOMER_ID, *DEVICES, count),
        database=database,
    )


# -- what Iterable must hold once every qualifying row is delivered -------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bulk_seed",
        description="Add synthetic pro customers, each with a recent page view, to a database "
        "loaded with sql/database_setup.sql.",
    )
    parser.add_argument("--customers", type=int, default=5000, help=f"how many (1 to {MAX_COUNT})")
    parser.add_argument("--database", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    args = parser.parse_args(argv)
    if not 0 < args.customers <= MAX_COUNT:
        parser.error(f"--customers must be from 1 to {MAX_COUNT}")
    server = ServerHandle(args.host, args.port, args.user, args.password)
    add_pro_customers(server, args.database, args.customers)
    print(f"added {args.customers:,} pro customers with a page view each to {args.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
