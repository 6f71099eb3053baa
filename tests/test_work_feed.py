"""Single mode's work feed: every planned user taken once, the planner held to its lead."""

from __future__ import annotations

import threading

import sync
from sync import WorkFeed
from tests.support.waiting import wait_until


def test_every_item_is_taken_exactly_once_and_the_workers_end_on_close():
    feed = WorkFeed(low=4)
    taken: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while (item := feed.take()) is not None:
            with lock:
                taken.append(item)  # type: ignore[arg-type]

    workers = [threading.Thread(target=worker) for _ in range(8)]
    for thread in workers:
        thread.start()
    for start in range(0, 1000, 4):
        feed.wait_for_room()
        feed.put_many(list(range(start, start + 4)))  # type: ignore[arg-type]
    feed.close()
    for thread in workers:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in workers)
    assert sorted(taken) == list(range(1000))


def test_the_planner_waits_until_the_queue_is_down_to_low(monkeypatch):
    # Waits look again only after a minute: the planner gets on only if it is woken.
    monkeypatch.setattr(sync, "FEED_RECHECK", 60.0)
    feed = WorkFeed(low=2)
    feed.put_many(list(range(5)))  # type: ignore[arg-type]
    room = threading.Event()

    def planner() -> None:
        feed.wait_for_room()
        room.set()

    thread = threading.Thread(target=planner, daemon=True)
    thread.start()
    wait_until(lambda: feed._planner_waiting, 5, "the planner to wait for room")
    taken = [feed.take(), feed.take()]
    assert not room.is_set()  # 3 still queued
    taken.append(feed.take())
    assert room.wait(10)
    thread.join()
    assert taken == [0, 1, 2]
    feed.close()
    assert [feed.take(), feed.take(), feed.take()] == [3, 4, None]
