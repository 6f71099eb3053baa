"""Read rows ahead into a bounded buffer on their own thread.

The database keeps streaming while the API is slow (up to the buffer's size), and
memory stays bounded because the reader waits when the buffer is full.

Rows cross between the threads in chunks, not one by one: with a full buffer, a
queue of single rows wakes the reader for every row the sync takes, and that
hand-over cost more CPU than reading the row.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()
BUFFER_ROWS = 20_000
CHUNK_ROWS = 500


class ReadAhead(Generic[T]):
    """Iterate over `source` through a bounded queue filled by a reader thread.

    Items travel in chunks of up to CHUNK_ROWS (fewer when `size` is smaller); at most
    `size` items wait in the queue, plus the chunk each thread holds.
    """

    def __init__(self, source: Iterable[T], size: int = BUFFER_ROWS) -> None:
        self._source = source
        self._chunk = max(1, min(CHUNK_ROWS, size))
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, size // self._chunk))
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        chunk: list[T] = []
        try:
            for item in self._source:
                chunk.append(item)
                if len(chunk) >= self._chunk:
                    if not self._put(chunk):
                        return
                    chunk = []
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._error = exc
        if chunk and not self._put(chunk):
            return
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
            yield from item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the reader (for example when the run is interrupted) and wait for it."""
        self._cancelled.set()
        self._thread.join(timeout=30)
