"""Run a command as our child and write its rusage: `python -m bench.spawn OUT.json -- CMD...`.

The benchmark measures the job through this small process rather than spawning it
directly: Linux carries the parent's peak RSS into a child's ru_maxrss across the
fork/vfork and exec, so a job started by the benchmark (which by then holds the
sandbox's whole store from its checks) would report the benchmark's peak instead of
its own. This process stays small, so the job's ru_maxrss is the job's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m bench.spawn OUT.json -- COMMAND...\n")
        return 2
    out, command = argv[0], argv[2:]
    process = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        try:
            _, status, usage = os.wait4(process.pid, 0)
            break
        except InterruptedError:
            continue
    process.returncode = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "exit_code": process.returncode,
                "user_seconds": usage.ru_utime,
                "sys_seconds": usage.ru_stime,
                "max_rss_kb": usage.ru_maxrss,
            },
            handle,
        )
    return process.returncode if process.returncode >= 0 else 128 - process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
