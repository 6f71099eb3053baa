"""A machine that is not quiet: a second process keeps one core busy while a run lasts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from bench.sandbox_process import CLOCK_TICKS, process_cpu_seconds

# Pure computation with no I/O: it wants a whole core, as another tenant's job would.
BUSY_LOOP = "while True:\n    pass\n"


class BusyCore:
    """`python -c 'while True: pass'` from enter to exit; `share` is how much core it got."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self.cpu_seconds = 0.0
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
        self.cpu_seconds = process_cpu_seconds(process.pid)
        self.share = self.cpu_seconds / elapsed if elapsed > 0 else 0.0
        process.send_signal(signal.SIGKILL)
        process.wait()


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idle since boot (from /proc/stat).

    Time stolen by the hypervisor is left out: it is other machines' work, not this one's.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def others_cores(machine_seconds: float, ours_seconds: float, wall_seconds: float) -> float:
    """Cores used meanwhile by everything the bench did not start (other people's work)."""
    if wall_seconds <= 0:
        return 0.0
    return max(0.0, machine_seconds - ours_seconds) / wall_seconds
