"""A machine that is not quiet: a second process keeps one core busy while a run lasts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import TracebackType

from bench.sandbox_process import process_cpu_seconds

# Pure computation with no I/O: it wants a whole core, as another tenant's job would.
BUSY_LOOP = "while True:\n    pass\n"


class BusyCore:
    """`python -c 'while True: pass'` from enter to exit; `share` is how much core it got."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self.share = 0.0

    def __enter__(self) -> BusyCore:
        self._process = subprocess.Popen(
            [sys.executable, "-c", BUSY_LOOP],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us
        )
        self._started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        elapsed = time.monotonic() - self._started
        self.share = process_cpu_seconds(process.pid) / elapsed if elapsed > 0 else 0.0
        process.send_signal(signal.SIGKILL)
        process.wait()
