"""Read rows ahead into a bounded buffer on their own thread.

The database keeps streaming while the API is slow (up to the buffer's size), and
memory stays bounded because the reader waits when the buffer is full.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()
BUFFER_ROWS = 20_000


class ReadAhead(Generic[T]):
    """Iterate over `source` through a queue of at most `size` items filled by a reader thread."""

    def __init__(self, source: Iterable[T], size: int = BUFFER_ROWS) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=size)
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._error = exc
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the reader (for example when the run is interrupted) and wait for it."""
        self._cancelled.set()
        self._thread.join(timeout=30)
