"""Progress: a bar with rate and ETA on a terminal, a log line about every 10 s otherwise (cron)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
DRAW_EVERY_SECONDS = 0.2
BAR_WIDTH = 30


class Progress:
    """Counts finished rows; thread-safe, cheap enough to call once per row."""

    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.started = time.monotonic()
        self._last_output = self.started
        self._lock = threading.Lock()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            interval = DRAW_EVERY_SECONDS if self.interactive else LOG_EVERY_SECONDS
            if now - self._last_output >= interval:
                self._last_output = now
                self._emit(now)

    def finish(self) -> None:
        with self._lock:
            if self.interactive:
                self._emit(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            remaining = max(self.total - self.done, 0)
            eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
            return f"{self.done}/{self.total} users, {rate:.0f}/s, ETA {eta}"
        return f"{self.done} users, {rate:.0f}/s"

    def _emit(self, now: float) -> None:
        text = self.line(now)
        if not self.interactive:
            log.info("progress: %s", text)
            return
        filled = int(BAR_WIDTH * self.done / self.total) if self.total else 0
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {text}   ")
        self.stream.flush()
