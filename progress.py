"""Progress: a tqdm bar on a terminal, a log line about every 10 s otherwise (cron).

While the bar is shown, console log lines go through tqdm, which clears the bar's line,
prints the log line and draws the bar again below it: a log line never lands on the bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Never, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
DRAW_EVERY_SECONDS = 0.2
# The rate, and so the ETA, means something only after a few seconds of rows.
ETA_AFTER_SECONDS = 3.0
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} NOUN [{elapsed}, {rate_fmt}{postfix}]"
COUNT_FORMAT = "{n_fmt} NOUN [{elapsed}, {rate_fmt}]"


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Counts finished rows; thread-safe, cheap enough to call once per row."""

    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = is_terminal(self.stream)
        self.clock = clock
        self.done = 0
        self.noun = "users"
        self.started = clock()
        self._last_output = self.started
        self._lock = threading.Lock()
        self._bar: tqdm[Never] | None = None
        self._logging = contextlib.ExitStack()
        if self.interactive:
            self._bar = self._new_bar()
            self._logging.enter_context(console_logging_beside_the_bar())

    def _new_bar(self) -> tqdm[Never]:
        # Without a total there is no share to show: a count, never "0%".
        return tqdm(
            total=self.total or None,
            file=self.stream,
            unit=f" {self.noun}",
            bar_format=(BAR_FORMAT if self.total else COUNT_FORMAT).replace("NOUN", self.noun),
            dynamic_ncols=True,
            mininterval=DRAW_EVERY_SECONDS,
            smoothing=0,  # the average rate since the start, as the ETA uses
        )

    def leavers(self, count: int) -> None:
        """The customers who left the segment: a line, and a bar of their own with its total."""
        log.info("%s customers left the segment: updating …", f"{count:,}")
        with self._lock:
            self.total, self.done, self.noun = count, 0, "customers"
            self.started = self._last_output = self.clock()
            if self._bar is not None:
                self._bar.close()
                self._bar = self._new_bar()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = self.clock()
            if self._bar is not None:
                if now - self._last_output >= DRAW_EVERY_SECONDS:
                    self._last_output = now
                    self._bar.set_postfix_str(self.eta(now), refresh=False)
                self._bar.update(count)
            elif now - self._last_output >= LOG_EVERY_SECONDS:
                self._last_output = now
                log.info("progress: %s", self.line(now))

    def finish(self) -> None:
        """Close the bar (keeping its last frame) and give the console back; idempotent."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._logging.close()

    def eta(self, now: float) -> str:
        """'ETA 12s' once the rate is measured and there is a total; '' before, and once
        the total is reached (an 'ETA 0s' that stands still says nothing)."""
        elapsed = now - self.started
        if not self.total or elapsed < ETA_AFTER_SECONDS or self.done == 0:
            return ""
        remaining = self.total - self.done
        if remaining <= 0:
            return ""
        return f"ETA {remaining / (self.done / elapsed):.0f}s"

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = self.eta(now)
        counted = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return f"{counted} {self.noun}, {rate:.0f}/s" + (f", {eta}" if eta else "")


@contextlib.contextmanager
def console_logging_beside_the_bar() -> Iterator[None]:
    """logging_redirect_tqdm, keeping the console handler's level (it keeps only its format
    and filters, so DEBUG lines meant for the log file would reach the screen)."""
    root = logging.getLogger()
    before = list(root.handlers)
    console = [
        handler.level
        for handler in before
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
    ]
    if not console:
        yield
        return
    with logging_redirect_tqdm():
        for handler in root.handlers:
            if handler not in before:
                handler.setLevel(min(console))
        yield
