"""Client-side pacing per Iterable endpoint, shared by every worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

# Iterable's published per-project limits, requests per second. The defaults stay below
# them because the customer's other integrations share the same budget.
PUBLISHED_RATE_LIMITS = {
    "users/update": 500.0,
    "events/track": 2000.0,
    "users/bulkUpdate": 5.0,
    "events/trackBulk": 10.0,
}
DEFAULT_RATE_LIMITS = {endpoint: 0.8 * rate for endpoint, rate in PUBLISHED_RATE_LIMITS.items()}

# After a 429 the endpoint runs at this fraction of its rate, climbing back to the
# full rate over RECOVERY_SECONDS, so a shared project budget is not hammered again at once.
SLOWDOWN_FACTOR = 0.5
RECOVERY_SECONDS = 10.0
# A stopping run still keeps to the pacing (waits this short), but not to a longer pause.
STOPPABLE_WAIT = 1.0


class RateLimiter:
    """Spaces requests evenly at `rate` per second (no bursts), with a pause-and-slow-down on 429.

    Each caller reserves the next free slot under a lock and then sleeps outside it,
    so many threads together never exceed the rate, and retries count like any request.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self._wait = wait or time.sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._slowed_at: float | None = None

    def current_rate(self, now: float) -> float:
        if self._slowed_at is None:
            return self.rate
        recovered = min(1.0, (now - self._slowed_at) / RECOVERY_SECONDS)
        if recovered >= 1.0:
            self._slowed_at = None
            return self.rate
        return self.rate * (SLOWDOWN_FACTOR + (1 - SLOWDOWN_FACTOR) * recovered)

    def reserve(self) -> float:
        """Book the next slot and return how long to wait for it."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.current_rate(slot)
            return slot - now

    def acquire(self) -> float:
        """Block until this caller may send; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            self._wait(delay)
        return delay

    def penalize(self, pause: float) -> None:
        """Iterable said 429: nobody sends for `pause` seconds, then the rate recovers slowly."""
        with self._lock:
            now = self._clock()
            self._next_slot = max(self._next_slot, now + pause)
            self._slowed_at = now + pause


class RateLimiters:
    """One limiter per endpoint; endpoints without a limit are not paced."""

    def __init__(self, rates: Mapping[str, float]) -> None:
        self._limiters = {name: RateLimiter(rate) for name, rate in rates.items() if rate > 0}

    def acquire_unless_stopped(self, endpoint: str, stop: threading.Event) -> bool:
        """acquire, except that a long wait (a 429's pause) ends when `stop` is set: False
        then, and the caller must not send. Pacing waits of a second or less are kept."""
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            return True
        delay = limiter.reserve()
        if delay <= STOPPABLE_WAIT:
            if delay > 0:
                time.sleep(delay)
            return True
        return not stop.wait(delay)

    def penalize(self, endpoint: str, pause: float) -> None:
        limiter = self._limiters.get(endpoint)
        if limiter:
            limiter.penalize(pause)
