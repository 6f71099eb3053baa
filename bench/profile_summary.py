"""Where the job's CPU goes, by area, from a bench/profile_job.py profile.

cProfile with a per-thread CPU clock costs about two clock reads per call, and on a VM
those are system calls: the profiled job uses several times the CPU of an unprofiled run,
and functions called often look dearer than they are. So each function's own time is
reduced by its share of that overhead: half a call's cost to the function called, half
to its caller (one clock read falls on either side), with the cost per call chosen so that
the total comes down to what the same run used unprofiled. Then the time of C functions
and of generic library code (datetime, re, os.path...) goes to the area of their callers.
"""

from __future__ import annotations

import pstats
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# First match wins: (area, substrings of the function's file path).
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "MySQL rows (mysql-connector, pure Python; read-ahead)",
        ("/mysql/connector/", "/db_connection.py", "/read_ahead.py"),
    ),
    (
        "HTTP (requests, urllib3, http.client, the client)",
        (
            "/requests/",
            "/urllib3/",
            "/http/",
            "/email/",
            "/socket.py",
            "/ssl.py",
            "/idna/",
            "/charset_normalizer/",
            "/iterable_client.py",
            "/rate_limit.py",
        ),
    ),
    ("JSON encoding and decoding (json)", ("/json/",)),
    ("SQLite sync state (sync_state.py, sqlite3)", ("/sync_state.py", "/sqlite3/")),
    ("logging (console and rotating DEBUG file)", ("/logging/", "/logger_config.py")),
    ("results file (results.py)", ("/results.py", "/private_files.py")),
    ("payload building and fingerprints (payloads.py)", ("/payloads.py", "/row_checks.py")),
    (
        "thread hand-offs (queues, futures, locks, threads)",
        ("/threading.py", "/queue.py", "/concurrent/futures/"),
    ),
    (
        "the sync loop (sync.py, bulk.py, main.py, progress)",
        ("/sync.py", "/bulk.py", "/main.py", "/progress.py", "/monitoring.py", "/checks.py"),
    ),
    ("start-up (imports, settings)", ("importlib", "/settings.py", "/dotenv/", "/argparse.py")),
)
OTHER = "other"
# Callers followed upwards to find an area for generic code before giving up.
MAX_DEPTH = 6

Func = tuple[str, int, str]


def area_of_file(filename: str) -> str | None:
    for area, needles in AREAS:
        if any(needle in filename for needle in needles):
            return area
    return None


class Attribution:
    """Own CPU time per function, less the profiler's overhead, summed by area."""

    def __init__(self, stats: pstats.Stats, real_cpu_seconds: float | None) -> None:
        self.stats: Mapping[Func, Any] = stats.stats  # type: ignore[attr-defined]
        self.calls_made: dict[Func, int] = defaultdict(int)
        self.total_calls = 0
        self.profiled_seconds = 0.0
        for _cc, nc, tt, _ct, callers in self.stats.values():
            self.total_calls += nc
            self.profiled_seconds += tt
            for caller, edge in callers.items():
                self.calls_made[caller] += edge[0]
        excess = self.profiled_seconds - (real_cpu_seconds or self.profiled_seconds)
        self.per_call = max(0.0, excess) / self.total_calls if self.total_calls else 0.0

    def own_seconds(self, func: Func) -> float:
        _cc, nc, tt, _ct, _callers = self.stats[func]
        overhead = self.per_call / 2 * (nc + self.calls_made.get(func, 0))
        return max(0.0, tt - overhead)

    def by_area(self, corrected: bool) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for func, (_cc, _nc, tt, _ct, _callers) in self.stats.items():
            self._assign(func, self.own_seconds(func) if corrected else tt, totals, 0)
        return totals

    def _assign(self, func: Func, seconds: float, totals: dict[str, float], depth: int) -> None:
        area = area_of_file(func[0])
        if area is not None:
            totals[area] += seconds
            return
        callers = self.stats[func][4]
        weights = {caller: edge[2] for caller, edge in callers.items() if caller in self.stats}
        weight = sum(weights.values())
        if depth >= MAX_DEPTH or weight <= 0:
            totals[OTHER] += seconds
            return
        for caller, part in weights.items():
            self._assign(caller, seconds * part / weight, totals, depth + 1)

    def call_counts(self, file_part: str, name: str) -> list[tuple[str, int]]:
        """How often a function was called, by calling function (exact, unlike times)."""
        rows: dict[str, int] = defaultdict(int)
        for func, (_cc, _nc, _tt, _ct, callers) in self.stats.items():
            if func[2] == name and file_part in func[0]:
                for caller, edge in callers.items():
                    rows[_label(caller)] += edge[0]
        return sorted(rows.items(), key=lambda item: -item[1])


def _label(func: Func) -> str:
    filename, line, name = func
    return f"{Path(filename).name}:{line}({name})" if filename != "~" else name


def summarise(profile: Path, real_cpu_seconds: float | None, users: int) -> str:
    """CPU by area, raw and with the overhead removed, and who calls json.dumps how often."""
    attribution = Attribution(pstats.Stats(str(profile)), real_cpu_seconds)
    raw = attribution.by_area(corrected=False)
    corrected = attribution.by_area(corrected=True)
    raw_total = sum(raw.values()) or 1.0
    corrected_total = sum(corrected.values()) or 1.0
    # The per-call correction is approximate; its shares are scaled to the real total.
    real = real_cpu_seconds or corrected_total
    lines = [
        "=== CPU by area ===",
        f"profiled: {attribution.profiled_seconds:.1f} CPU s in {attribution.total_calls:,} "
        "calls; unprofiled run: "
        + (f"{real_cpu_seconds:.1f} CPU s" if real_cpu_seconds else "not measured")
        + f"; overhead taken as {attribution.per_call * 1e6:.2f} us per call. raw: shares "
        "of the profiled time; corrected: overhead removed per function, then scaled to the "
        "unprofiled total. A ranking that holds in both columns can be trusted.",
        "",
        f"{'area':<56} {'raw':>6} {'corrected':>9} {'ms/1k users':>12}",
    ]
    for area in sorted(corrected, key=lambda name: -corrected[name]):
        share = corrected[area] / corrected_total
        lines.append(
            f"{area:<56} {raw.get(area, 0.0) / raw_total:6.1%} {share:9.1%} "
            f"{share * real / users * 1e6:12.1f}"
        )
    for file_part, name in (("/json/", "dumps"), ("iterable_client.py", "encode")):
        lines += ["", f"{name} ({file_part.strip('/')}) calls by caller, per user:"]
        for label, calls in attribution.call_counts(file_part, name)[:8]:
            lines.append(f"  {calls / users:6.2f}  {label}")
    return "\n".join(lines) + "\n"
