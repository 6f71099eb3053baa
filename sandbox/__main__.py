"""`python -m sandbox`: the sandbox as a process, e.g. for the benchmark.

python -m sandbox --port 0 --latency-ms 50 --rate-limits iterable --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence

from sandbox.config import BATCH_TOO_LARGE_STATUSES, DEFAULT_API_KEY, PROJECT_TYPES
from sandbox.server import DEFAULT_HOST, Sandbox, require_loopback


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Run a local Iterable-compatible API server."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated latency")
    parser.add_argument(
        "--rate-limits",
        default="off",
        help='"off", "iterable" (published limits) or "users/update=500,events/track=2000"',
    )
    parser.add_argument("--retry-after", type=float, default=None, help="Retry-After on 429s")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help=f"valid key (default {DEFAULT_API_KEY})"
    )
    parser.add_argument("--disabled-key", action="append", default=[], help="disabled key")
    parser.add_argument("--forbidden-key", action="append", default=[], help="key answered 403")
    parser.add_argument(
        "--project-type", choices=PROJECT_TYPES, default="hybrid", help="how users are identified"
    )
    parser.add_argument(
        "--max-bulk-items", type=int, default=None, help="most items a bulk request may carry"
    )
    parser.add_argument(
        "--batch-too-large-status",
        type=int,
        choices=sorted(BATCH_TOO_LARGE_STATUSES),
        default=400,
        help="status of a BatchTooLarge answer",
    )
    parser.add_argument("--port-file", help="write the chosen port to this file")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING...")
    return parser


def write_port_file(path: str, port: int) -> None:
    """Written whole then renamed, so a process polling for the file never reads half of it."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(f"{port}\n")
    os.replace(temporary, path)


async def serve_until_signalled(
    sandbox: Sandbox, host: str, port: int, port_file: str | None
) -> None:
    await sandbox.listen(host, port)
    # The port file first: whoever waits for either signal may then read both.
    if port_file:
        write_port_file(port_file, sandbox.port)
    print(f"sandbox listening on {sandbox.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await sandbox.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        require_loopback(args.host)
        sandbox = Sandbox(
            latency=args.latency_ms / 1000.0,
            rate_limits=args.rate_limits,
            api_keys=args.api_keys or [DEFAULT_API_KEY],
            disabled_keys=args.disabled_key,
            forbidden_keys=args.forbidden_key,
            retry_after=args.retry_after,
            project_type=args.project_type,
            max_bulk_items=args.max_bulk_items,
            batch_too_large_status=args.batch_too_large_status,
        )
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_until_signalled(sandbox, args.host, args.port, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
