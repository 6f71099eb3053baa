"""Run a script under cProfile in every thread: `python bench/profile_job.py OUT -- SCRIPT ARGS...`.

cProfile on its own sees only the thread that enabled it, and the job does much of its
work in pool threads and the read-ahead thread. So each thread gets its own profiler,
timed by that thread's CPU clock (time.thread_time): the profile says where CPU goes, not
where threads wait. At exit the profiles of the main thread and of every thread that
finished are merged into OUT.prof (pstats) and OUT.txt (top entries by cumulative and by
own time). Profiling slows the job down several times; its figures are not the bench's.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import runpy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TOP = 30


class ThreadProfiles:
    """A profiler per thread, started in Thread.run; kept once the thread has finished."""

    def __init__(self) -> None:
        self.finished: list[cProfile.Profile] = []
        self.started = 0
        self._lock = threading.Lock()

    def install(self) -> None:
        original: Callable[[threading.Thread], None] = threading.Thread.run
        profiles = self

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile(time.thread_time)
            with profiles._lock:
                profiles.started += 1
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()
                with profiles._lock:
                    profiles.finished.append(profile)

        threading.Thread.run = run  # type: ignore[method-assign,assignment]


def write(out: Path, profiles: list[cProfile.Profile], note: str) -> None:
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(str(out.with_suffix(".prof")))
    text = io.StringIO()
    text.write(note + "\n")
    for order in ("cumulative", "tottime"):
        text.write(f"\n=== top {TOP} by {order} (CPU seconds, all threads) ===\n")
        stats.stream = text  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(TOP)
    out.with_suffix(".txt").write_text(text.getvalue(), encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python bench/profile_job.py OUT -- SCRIPT [ARGS...]\n")
        return 2
    out, script, args = Path(argv[0]), argv[2], argv[3:]
    threads = ThreadProfiles()
    threads.install()
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as if the script were run itself
    code: int | str | None = 0
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    finally:
        profile.disable()
        unfinished = threads.started - len(threads.finished)
        note = (
            f"{script} {' '.join(args)}: main thread and {len(threads.finished)} other threads"
            + (f" ({unfinished} still running at exit, left out)" if unfinished else "")
        )
        write(out, [profile, *threads.finished], note)
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
