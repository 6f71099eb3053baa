"""`make bench`: the sync job's throughput, CPU and memory against its rate-limit ceiling.

Starts a throwaway MariaDB loaded with synthetic Query 2 data (bench.dataset) and the
Iterable sandbox as its own process (simulated latency, Iterable's published rate
limits), then runs `python main.py` as a subprocess per mode:

  baseline    --mode single --concurrency 1   (one user at a time)
  single      --mode single                   (the job's default concurrency)
  bulk        --mode bulk                     (users/bulkUpdate + events/trackBulk)
  bulk-b5000  --mode bulk, 5,000 users and 5,000 events a request (ceiling 25,000 users/s)
  bulk-v30    --mode bulk on 30 page views a customer (3M page views at 100,000 users):
              the whole process's wall time against the ceiling's, Query 2 included

each twice: on a quiet machine and with a second process keeping one core busy
(bench.busy_core). Then it checks, without the job, that one sandbox process keeps up
with bulk traffic at 25,000 users/s (bench.sandbox_capacity), and runs bulk mode at
several sizes for peak memory. Every run gets a fresh sync state, results directory and
sandbox store, and is checked against the sandbox: every user and event there with the
right fields, nothing missing, extra or duplicated. This module runs and measures;
bench/output.py prints and writes what it measured.

    python -m bench.run                      # full run, writes bench/results/ and docs/bench/
    python -m bench.run --quick              # small smoke run, bench/results/ only
    python -m bench.run --only single,bulk --no-busy-core --users 20000
    python -m bench.run --only single,bulk --profile   # + the job's CPU profile per run
    python -m bench.run --explain            # also EXPLAIN and time both Query 2 forms on 1M
                                             # and 3M page views
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import dataset as data  # noqa: E402
from bench import profile_summary, sandbox_capacity  # noqa: E402
from bench.busy_core import BusyCore, machine_busy_seconds, others_cores  # noqa: E402
from bench.output import DOCS_DIR, RESULTS_DIR, format_explain, one_line, write_outputs  # noqa: E402
from bench.sandbox_process import SandboxProcess, process_cpu_seconds  # noqa: E402
from db_connection import SYNC_QUERY  # noqa: E402
from devtools.mariadb_server import ServerHandle, ThrowawayMariaDB  # noqa: E402
from rate_limit import PUBLISHED_RATE_LIMITS  # noqa: E402
from settings import RATE_LIMIT_VARIABLES, load_settings  # noqa: E402

# The limits the sandbox enforces with --rate-limits iterable; the job is given the same.
RATE_LIMITS = {
    RATE_LIMIT_VARIABLES[endpoint]: f"{rate:g}" for endpoint, rate in PUBLISHED_RATE_LIMITS.items()
}
API_ENDPOINTS = ("users/update", "events/track", "users/bulkUpdate", "events/trackBulk")
VIEWS_PER_CUSTOMER = 10  # 100k customers -> 1M page views
MANY_VIEWS = 30  # 100k customers -> 3M page views, 70 % of them in the window
EXPLAIN_CUSTOMERS = 100_000
EXPLAIN_VIEWS = (VIEWS_PER_CUSTOMER, MANY_VIEWS)
EXPLAIN_RUNS = 3
# The seed's Query 2, which the job's form must match; --explain times both.
REFERENCE_QUERY = "query2"
MARIADB_ARGS = ("--innodb-buffer-pool-size=1G", "--innodb-log-file-size=512M")
# 5 users/bulkUpdate a second x 5,000 users; events in batches as large, so that
# events/trackBulk (10/s) is not the tighter limit.
BIG_BATCH = 5_000
BIG_BATCH_ENV = (("BULK_BATCH_SIZE", str(BIG_BATCH)), ("EVENTS_BATCH_SIZE", str(BIG_BATCH)))
RUNS = (
    "baseline",
    "single",
    "bulk",
    "bulk-mysql-state",
    "bulk-b5000",
    "bulk-v30",
    "sandbox",
    "memory",
)
# The bulk run with its state in MySQL (STATE_STORE=mysql), in a database of its own.
MYSQL_STATE_ENV = (("STATE_STORE", "mysql"),)
TRANSPORTS = ("own", "http.client")
LOADS = ("quiet", "busy")
# Profiling slows the job down several times; give it room before the timeout kills it.
PROFILED_TIMEOUT_FACTOR = 10


@dataclass(frozen=True)
class Plan:
    name: str
    users: int
    args: tuple[str, ...]
    views: int = VIEWS_PER_CUSTOMER
    series: str = "modes"
    env: tuple[tuple[str, str], ...] = ()  # settings given through the environment
    load: str = "quiet"  # or "busy": one core kept busy by another process meanwhile
    transport: str = "own"  # or "http.client": direct requests over bench/stdlib_transport.py


class Bench:
    """The servers, the datasets loaded so far, and the runs."""

    def __init__(
        self,
        admin: ServerHandle,
        sandbox: SandboxProcess,
        latency_ms: float,
        job_prefix: Sequence[str] = (),
        mariadb_pid: int | None = None,
    ) -> None:
        self.admin = admin
        self.mariadb_pid = mariadb_pid
        self.job_prefix = list(job_prefix)
        self.sandbox = sandbox
        self.latency = latency_ms / 1000.0
        self.datasets: dict[tuple[int, int], data.Dataset] = {}
        self.app_password = "bench-" + os.urandom(8).hex()

    def dataset(self, customers: int, views: int) -> data.Dataset:
        key = (customers, views)
        if key not in self.datasets:
            name = f"bench_{customers}_{views}"
            print(f"loading {customers:,} qualifying customers x {views} views into {name} ...")
            loaded = data.load(self.admin, name, customers, views)
            self.admin.create_user("bench_app", self.app_password, name)
            print(
                f"  {loaded.total_customers:,} customers, {loaded.total_views:,} page views "
                f"in {loaded.load_seconds:.1f}s",
                flush=True,
            )
            self.datasets[key] = loaded
        return self.datasets[key]

    def run(self, plan: Plan, profile: Path | None = None) -> dict[str, Any]:
        """One run of main.py, measured and checked; under the profiler when `profile` is set."""
        dataset = self.dataset(plan.users, plan.views)
        self.sandbox.reset()
        with tempfile.TemporaryDirectory(prefix=f"bench-{plan.name}-") as tmp:
            workdir = Path(tmp)
            env = self.environment(dataset, workdir) | dict(plan.env)
            if env.get("STATE_STORE") == "mysql":
                env["STATE_MYSQL_DATABASE"] = self.state_database(dataset)
            settings = load_settings([*plan.args, "--env-file", str(workdir / "bench.env")], env)
            expected = expected_seconds(plan, settings, self.latency)
            # A floor for runs bound by the job's own CPU rather than by the ceiling.
            timeout = 120 + max(3 * expected, plan.users / 1000)
            if profile is not None:
                timeout *= PROFILED_TIMEOUT_FACTOR
            settings_env = " ".join(f"{k}={v}" for k, v in plan.env)
            verb = "profile" if profile else "run"
            print(
                f"{verb} {plan.name} ({plan.load}): {plan.users:,} users, "
                f"{settings_env + ' ' if settings_env else ''}main.py {' '.join(plan.args)} "
                f"(ceiling {expected:.0f}s, timeout {timeout:.0f}s) ...",
                flush=True,
            )
            with ExitStack() as stack:
                busy = stack.enter_context(BusyCore()) if plan.load == "busy" else None
                sandbox_cpu = self.sandbox.cpu_seconds()
                mariadb_cpu = self.mariadb_cpu_seconds()
                machine = machine_busy_seconds()
                job = run_job(
                    [*plan.args, "--env-file", str(workdir / "bench.env")],
                    env,
                    workdir,
                    timeout,
                    self.job_prefix,
                    profile,
                    plan.transport,
                )
                sandbox_cpu = self.sandbox.cpu_seconds() - sandbox_cpu
                mariadb_cpu = self.mariadb_cpu_seconds() - mariadb_cpu
                machine = machine_busy_seconds() - machine
            if job.code != 0:
                print(f"  main.py exited with {job.code}:\n{tail(job.stderr_path)}")
            run_info, summary = read_results_head(workdir / "results")
            sandbox_view = self.inspect_sandbox(dataset)
        extra = {
            "load": plan.load,
            "busy_core_share": round(busy.share, 2) if busy is not None else None,
            "sandbox_cpu_seconds": round(sandbox_cpu, 2),
            # The sandbox's share of one core while the job ran: near 1 it would be the limit.
            "sandbox_cpu_share": round(sandbox_cpu / job.wall_seconds, 3),
            "mariadb_cpu_seconds": round(mariadb_cpu, 2),
            # Other people's work on a shared machine: the "quiet" runs are only as quiet
            # as this says.
            "others_cores": round(
                others_cores(
                    machine,
                    job.user_seconds
                    + job.sys_seconds
                    + sandbox_cpu
                    + mariadb_cpu
                    + (busy.cpu_seconds if busy is not None else 0.0),
                    job.wall_seconds,
                ),
                2,
            ),
        }
        return self.measure(plan, dataset, settings, job, run_info, summary, sandbox_view, extra)

    def mariadb_cpu_seconds(self) -> float:
        return process_cpu_seconds(self.mariadb_pid) if self.mariadb_pid else 0.0

    def profile(self, plan: Plan, unprofiled: dict[str, Any]) -> dict[str, Any]:
        """The run again under the profiler; its .txt gains CPU by area (bench.profile_summary)."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"profile-{plan.name}-{plan.load}-{plan.users}-{stamp}"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        profiled = self.run(plan, path)
        text = path.with_suffix(".txt")
        if not path.with_suffix(".prof").exists():
            print("  no profile was written (see the job's exit above)")
            return {"name": plan.name, "load": plan.load, "profile": None}
        areas = profile_summary.summarise(
            path.with_suffix(".prof"), unprofiled["cpu_seconds"], plan.users
        )
        text.write_text(areas + "\n" + text.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"  profile: {text.relative_to(ROOT)}\n" + areas, flush=True)
        return {
            "name": plan.name,
            "load": plan.load,
            "users": plan.users,
            "profile": str(text.relative_to(ROOT)),
            "profiled_cpu_seconds": profiled["cpu_seconds"],
            "unprofiled_cpu_seconds": unprofiled["cpu_seconds"],
        }

    def state_database(self, dataset: data.Dataset) -> str:
        """An empty MySQL store beside the dataset, which the job's account may fill."""
        name = f"{dataset.database}_state"
        self.admin.drop_database(name)
        self.admin.create_database(name)
        self.admin.execute(f"GRANT ALL ON `{name}`.* TO 'bench_app'@'%'")
        return name

    def environment(self, dataset: data.Dataset, workdir: Path) -> dict[str, str]:
        (workdir / "results").mkdir()
        (workdir / "bench.env").write_text("")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env.update(
            MYSQL_HOST=self.admin.host,
            MYSQL_PORT=str(self.admin.port),
            MYSQL_USER="bench_app",
            MYSQL_PASSWORD=self.app_password,
            MYSQL_DATABASE=dataset.database,
            ITERABLE_API_KEY=self.sandbox.api_key,
            ITERABLE_BASE_URL=self.sandbox.base_url,
            RESULTS_DIR=str(workdir / "results"),
            LOG_FILE=str(workdir / "sync.log"),
            LOCK_FILE=str(workdir / "sync.lock"),
            SYNC_STATE_PATH=str(workdir / "state.sqlite3"),
            **RATE_LIMITS,
        )
        return env

    def inspect_sandbox(self, dataset: data.Dataset) -> dict[str, Any]:
        stats = self.sandbox.control("GET", "stats")
        log = self.sandbox.control("GET", "requests")["requests"]
        times = [entry["t"] for entry in log if entry["endpoint"] in API_ENDPOINTS]
        checks = data.verify(
            dataset,
            self.sandbox.control("GET", "users"),
            self.sandbox.control("GET", "events"),
            self.sandbox.control("GET", "duplicates")["duplicates"],
        )
        return {
            "stats": stats,
            "first_answer": min(times) if times else None,
            "last_answer": max(times) if times else None,
            "log_complete": len(log) >= stats["total_requests"],
            "checks": checks,
        }

    def measure(
        self,
        plan: Plan,
        dataset: data.Dataset,
        settings: Any,
        job: JobResult,
        run_info: dict[str, Any],
        summary: dict[str, Any],
        sandbox_view: dict[str, Any],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        users = dataset.customers
        limit_ceiling = rate_limit_ceiling(settings)
        latency_ceiling = 1.0 / (2 * self.latency) if settings.concurrency == 1 else None
        ceiling = min(limit_ceiling, latency_ceiling or limit_ceiling)
        if settings.mode == "bulk":
            latency_ceiling = None
            ceiling = limit_ceiling
        duration = float(run_info.get("duration_seconds") or job.wall_seconds)
        first, last = sandbox_view["first_answer"], sandbox_view["last_answer"]
        start = end = None
        if first is not None and sandbox_view["log_complete"]:
            # From the first request's arrival (its answer less the simulated latency)
            # to the last answer.
            sync = last - first + self.latency
            # What the process does before its first request (start-up, Query 2's first
            # batch) and after the last answer (results file, sync state, leavers, exit).
            start = first - self.latency - job.started_at
            end = job.ended_at - last
        else:
            sync = duration
        checks = sandbox_view["checks"]
        stats = sandbox_view["stats"]
        cpu = job.user_seconds + job.sys_seconds
        result = {
            "name": plan.name,
            "series": plan.series,
            "mode": settings.mode,
            "args": list(plan.args),
            "concurrency": settings.concurrency if settings.mode == "single" else None,
            "batch_size": settings.bulk_batch_size if settings.mode == "bulk" else None,
            "events_batch_size": settings.events_batch_size if settings.mode == "bulk" else None,
            "users": users,
            "page_views_in_db": dataset.total_views,
            "customers_in_db": dataset.total_customers,
            "exit_code": job.code,
            "timed_out": job.timed_out,
            "succeeded": summary.get("succeeded"),
            "failed": summary.get("failed"),
            "sync_seconds": round(sync, 3),
            "job_duration_seconds": round(duration, 3),
            "process_wall_seconds": round(job.wall_seconds, 3),
            "start_seconds": None if start is None else round(start, 3),
            "end_seconds": None if end is None else round(end, 3),
            "users_per_second": round(users / sync, 1),
            "users_per_second_wall": round(users / duration, 1),
            "rate_limit_ceiling": round(limit_ceiling, 1),
            "latency_ceiling": round(latency_ceiling, 1) if latency_ceiling else None,
            "ceiling": round(ceiling, 1),
            "ceiling_seconds": round(users / ceiling, 3),
            "process_over_ceiling_seconds": round(job.wall_seconds - users / ceiling, 3),
            "efficiency": round(users / ceiling / sync, 3),
            "efficiency_wall": round(users / ceiling / duration, 3),
            "efficiency_vs_rate_limit": round(users / limit_ceiling / sync, 3),
            "cpu_seconds": round(cpu, 2),
            "cpu_user_seconds": round(job.user_seconds, 2),
            "cpu_sys_seconds": round(job.sys_seconds, 2),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_seconds_per_1000_users": round(cpu / users * 1000, 3),
            "peak_rss_mb": round(job.max_rss_kb / 1024, 1),
            "rss_mb_every_5s": [round(mb, 1) for _, mb in job.rss_samples],
            "requests": stats["total_requests"],
            "requests_by_endpoint": stats["by_endpoint"],
            "status_429": stats["status_429"],
            "retries": run_info.get("api", {}).get("retries", {}),
            "lost": checks["lost_users"] + checks["lost_events"],
            "duplicated": checks["duplicate_events"]
            + checks["extra_users"]
            + checks["extra_events"],
            "checks": checks,
        } | extra
        print("  " + one_line(result), flush=True)
        return result

    def explain(self) -> list[dict[str, Any]]:
        """Both forms of Query 2 on 100k customers with 10 and 30 views each: plans and times."""
        return [
            self.explain_form(views, name)
            for views in EXPLAIN_VIEWS
            for name in (REFERENCE_QUERY, SYNC_QUERY)
        ]

    def explain_form(self, views: int, name: str) -> dict[str, Any]:
        """One form's plan, and its rows streamed to the job's reader EXPLAIN_RUNS times."""
        from db_connection import ConnectionSettings, DatabaseConnection, load_query
        from preflight import describe_plan

        dataset = self.dataset(EXPLAIN_CUSTOMERS, views)
        settings = ConnectionSettings(
            host=self.admin.host,
            port=self.admin.port,
            user="bench_app",
            password=self.app_password,
            database=dataset.database,
        )
        query = load_query(name)
        with DatabaseConnection(settings) as db:
            db.bind_variables({"plan_type": "pro", "lookback_days": 7})
            plan = db.explain(query)
            times = []
            rows = 0
            for _ in range(EXPLAIN_RUNS):
                started = time.perf_counter()
                first_row, rows = None, 0
                for _description, chunk in db.raw_chunks(query):
                    if first_row is None:
                        first_row = time.perf_counter() - started
                    rows += len(chunk)
                times.append((time.perf_counter() - started, first_row or 0.0))
        explain = [{k: _plain(v) for k, v in row.items()} for row in plan]
        result: dict[str, Any] = {
            "query": name,
            "customers_in_db": dataset.total_customers,
            "page_views_in_db": dataset.total_views,
            "qualifying_rows": rows,
            "explain": explain,
            "seconds_each": [round(total, 3) for total, _ in times],
            "first_row_seconds_each": [round(first, 3) for _, first in times],
            "seconds_median": round(statistics.median(t for t, _ in times), 3),
            "first_row_seconds_median": round(statistics.median(f for _, f in times), 3),
        }
        print(
            f"{name} on {dataset.total_customers:,} customers / {dataset.total_views:,} page "
            f"views: {rows:,} rows in {result['seconds_median']}s, the first after "
            f"{result['first_row_seconds_median']}s (median of {EXPLAIN_RUNS})"
        )
        print(format_explain(explain))
        print(f"  --check says: {describe_plan(explain)}", flush=True)
        return result


@dataclass
class JobResult:
    code: int
    wall_seconds: float  # from starting the process to its exit
    started_at: float  # epoch seconds, as the sandbox's request log has them
    ended_at: float
    user_seconds: float
    sys_seconds: float
    max_rss_kb: int
    timed_out: bool
    stderr_path: Path
    rss_samples: list[tuple[float, float]]


def run_job(
    args: Sequence[str],
    env: dict[str, str],
    workdir: Path,
    timeout: float,
    prefix: Sequence[str] = (),
    profile: Path | None = None,
    transport: str = "own",
) -> JobResult:
    """main.py as a grandchild under bench/spawn.py, which reports the job's own rusage.

    The job's CPU time and peak RSS come from wait4 in that small process: measured from
    here, Linux would report this process's peak RSS as the job's (see bench/spawn.py).
    With `profile`, main.py runs under bench/profile_job.py, which writes its profile there;
    with the http.client transport, under bench/stdlib_transport.py.
    """
    usage_path = workdir / "rusage.json"
    command = [*prefix, sys.executable]
    if profile is not None:
        command += [str(ROOT / "bench" / "profile_job.py"), str(profile), "--"]
    if transport == "http.client":
        command += [str(ROOT / "bench" / "stdlib_transport.py"), "--"]
    command += [str(ROOT / "main.py"), *args]
    stdout = open(workdir / "stdout.txt", "wb")  # noqa: SIM115 - handed to the child
    stderr = open(workdir / "stderr.txt", "wb")  # noqa: SIM115
    started_at = time.time()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "spawn.py"), str(usage_path), "--", *command],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,  # its own process group: a timeout kills the job too
    )
    stdout.close()
    stderr.close()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        kill_group(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    samples: list[tuple[float, float]] = []
    sampler = threading.Thread(
        target=sample_rss, args=(process.pid, started, samples), name="rss", daemon=True
    )
    sampler.start()
    try:
        process.wait()
    except BaseException:
        # Ctrl-C or SIGTERM: ask the job to stop (it finishes in-flight work), then insist.
        kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            kill_group(process.pid, signal.SIGKILL)
            process.wait()
        raise
    finally:
        timer.cancel()
    wall = time.monotonic() - started
    ended_at = started_at + wall
    try:
        usage = json.loads(usage_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # killed before it could write: no figures
        usage = {"exit_code": process.returncode, "user_seconds": 0.0, "sys_seconds": 0.0}
        usage["max_rss_kb"] = 0
    return JobResult(
        code=int(usage["exit_code"]),
        wall_seconds=wall,
        started_at=started_at,
        ended_at=ended_at,
        user_seconds=float(usage["user_seconds"]),
        sys_seconds=float(usage["sys_seconds"]),
        max_rss_kb=int(usage["max_rss_kb"]),
        timed_out=timed_out.is_set(),
        stderr_path=workdir / "stderr.txt",
        rss_samples=samples[::10],
    )


def kill_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def sample_rss(spawner: int, started: float, samples: list[tuple[float, float]]) -> None:
    """The job's VmRSS every 0.5 s, to show when its peak comes; ends with the job."""
    children = Path(f"/proc/{spawner}/task/{spawner}/children")
    status: Path | None = None
    while True:
        try:
            if status is None:
                pids = children.read_text().split()
                if pids:
                    status = Path(f"/proc/{pids[0]}/status")
            if status is not None:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        megabytes = int(line.split()[1]) / 1024
                        samples.append((round(time.monotonic() - started, 1), megabytes))
        except OSError:
            if status is not None or not Path(f"/proc/{spawner}").exists():
                return
        time.sleep(0.5)


def read_results_head(results_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The "run" and "summary" objects: the first two lines of the results file, read alone."""
    files = sorted(results_dir.glob("integration_results_*.json"))
    if not files:
        return {}, {}
    with files[-1].open(encoding="utf-8") as handle:
        run_line = handle.readline()
        summary_line = handle.readline()
    run = json.loads(run_line.removeprefix('{"run": ').rstrip().rstrip(","))
    summary = json.loads(summary_line.strip().removeprefix('"summary": ').rstrip(","))
    return run, summary


def rate_limit_ceiling(settings: Any) -> float:
    """Users per second the client's rate limits allow: each user needs one of each request."""
    rates = settings.rate_limits
    if settings.mode == "bulk":
        return float(
            min(
                rates["users/bulkUpdate"] * settings.bulk_batch_size,
                rates["events/trackBulk"] * settings.events_batch_size,
            )
        )
    return float(min(rates["users/update"], rates["events/track"]))


def expected_seconds(plan: Plan, settings: Any, latency: float) -> float:
    ceiling = rate_limit_ceiling(settings)
    if settings.mode == "single":
        ceiling = min(ceiling, settings.concurrency / (2 * max(latency, 0.001)))
    return plan.users / ceiling


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return value


def mariadb_version(admin: ServerHandle) -> str:
    return str(admin.execute("SELECT VERSION()")[0][0])


def environment_info(admin: ServerHandle, latency_ms: float) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "mariadb": mariadb_version(admin),
        "latency_ms": latency_ms,
        "sandbox_rate_limits": "iterable (users/update 500/s, events/track 2000/s, "
        "users/bulkUpdate 5/s, events/trackBulk 10/s)",
        "job_rate_limits": {k: float(v) for k, v in RATE_LIMITS.items()},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, help="users per mode (overrides the per-mode sizes)")
    parser.add_argument("--baseline-users", type=int, default=500)
    parser.add_argument("--single-users", type=int, default=10_000)
    parser.add_argument("--bulk-users", type=int, default=100_000)
    parser.add_argument(
        "--bulk-b5000-users", type=int, default=100_000, help="users in the bulk-b5000 run"
    )
    parser.add_argument(
        "--bulk-v30-users", type=int, default=100_000, help="users in the bulk-v30 run"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--concurrency",
        default="default",
        help='single-mode concurrency levels, comma-separated; "default" is the job\'s own '
        '(e.g. "default,128" runs single mode twice)',
    )
    parser.add_argument(
        "--only",
        "--modes",
        dest="only",
        default=",".join(RUNS),
        help=f"what to run, comma-separated, from {','.join(RUNS)} (default: all); "
        "sandbox is the sandbox's capacity check, memory the memory series",
    )
    parser.add_argument(
        "--busy-core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each mode a second time with one core kept busy by another process "
        "(default: yes)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each mode run, run it again under cProfile (CPU time, all threads) and "
        f"write profile-*.txt and .prof to {RESULTS_DIR.relative_to(ROOT)}/ (the profiled "
        "job is several times slower; the table shows the unprofiled runs)",
    )
    parser.add_argument(
        "--rss-sizes",
        default=None,
        help="bulk-mode sizes for the memory series (default 10000,100000,1000000; "
        "--quick: 5000); empty to skip",
    )
    parser.add_argument(
        "--rss-views", type=int, default=2, help="page views per customer in the memory series"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN and time both forms of Query 2 (the seed's and the job's) on 1M and 3M "
        "page views",
    )
    parser.add_argument(
        "--job-prefix",
        default="",
        help='run main.py under this command, e.g. "py-spy record -o prof.txt -f raw --" '
        "(profiling only: CPU and RSS then include it)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of each mode on each machine, taken in turn; the table shows the run with "
        "the median CPU per user, and every run's CPU and users/s beside it (default 3; "
        "--quick: 1; the baseline runs once)",
    )
    parser.add_argument(
        "--transports",
        default="own",
        help="single mode's transports, comma-separated, each a run of its own in every "
        'round: "own" (http_connections.py) and "http.client" (bench/stdlib_transport.py)',
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="run nothing: print and write the summary and chart from a bench/results/ file",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help=f"do not write {DOCS_DIR.relative_to(ROOT)}/ (runs of a part of the bench, "
        "--only, --users, --no-busy-core or --quick, never do)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.baseline_users, args.single_users, args.bulk_users = 40, 2_000, 10_000
        args.bulk_b5000_users = args.bulk_v30_users = 10_000
        args.no_docs = True
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.rss_sizes is None:
        args.rss_sizes = "5000" if args.quick else "10000,100000,1000000"
    if args.users:
        args.baseline_users = args.single_users = args.bulk_users = args.users
        args.bulk_b5000_users = args.bulk_v30_users = args.users
    args.transports = [name.strip() for name in args.transports.split(",") if name.strip()]
    if not args.transports or set(args.transports) - set(TRANSPORTS):
        parser.error(f"--transports: choose from {', '.join(TRANSPORTS)}")
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in RUNS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    # docs/bench/ holds the whole bench: a part of it goes to bench/results/ only.
    if (
        set(args.only) != set(RUNS)
        or args.users
        or not args.busy_core
        or args.transports != ["own"]
    ):
        args.no_docs = True
    return args


def mode_plans(args: argparse.Namespace) -> list[Plan]:
    """The mode runs asked for, each on a quiet machine and (unless --no-busy-core) a busy one."""
    plans: list[Plan] = []
    for name in args.only:
        if name == "baseline":
            single_one = ("--mode", "single", "--concurrency", "1")
            plans.append(Plan("baseline", args.baseline_users, single_one))
        elif name == "single":
            for level in (c.strip() for c in args.concurrency.split(",") if c.strip()):
                for transport in args.transports:
                    suffix = "" if transport == "own" else f"-{transport}"
                    if level == "default":
                        flags: tuple[str, ...] = ("--mode", "single")
                        title = "single"
                    else:
                        flags = ("--mode", "single", "--concurrency", str(int(level)))
                        title = f"single-c{int(level)}"
                    plans.append(
                        Plan(title + suffix, args.single_users, flags, transport=transport)
                    )
        elif name == "bulk":
            plans.append(Plan("bulk", args.bulk_users, ("--mode", "bulk")))
        elif name == "bulk-mysql-state":
            plans.append(
                Plan("bulk-mysql-state", args.bulk_users, ("--mode", "bulk"), env=MYSQL_STATE_ENV)
            )
        elif name == "bulk-b5000":
            big = ("--mode", "bulk")
            plans.append(Plan("bulk-b5000", args.bulk_b5000_users, big, env=BIG_BATCH_ENV))
        elif name == "bulk-v30":
            plans.append(Plan("bulk-v30", args.bulk_v30_users, ("--mode", "bulk"), MANY_VIEWS))
    loads = LOADS if args.busy_core else LOADS[:1]
    return [replace(plan, load=load) for plan in plans for load in loads]


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every server is stopped on the way out."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text(encoding="utf-8"))
        write_outputs(saved, docs=not args.no_docs, save=False)
        return 0
    started = time.monotonic()
    plans = mode_plans(args)
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    if "memory" not in args.only:
        rss_sizes = []
    report: dict[str, Any] = {}
    try:
        with stop_on_sigterm(), ExitStack() as stack:
            print("starting a throwaway MariaDB and the sandbox process ...", flush=True)
            server = stack.enter_context(ThrowawayMariaDB(extra_args=MARIADB_ARGS))
            sandbox = stack.enter_context(SandboxProcess(args.latency_ms))
            print(f"MariaDB on 127.0.0.1:{server.port}, sandbox at {sandbox.base_url}", flush=True)
            bench = Bench(
                server.admin,
                sandbox,
                args.latency_ms,
                shlex.split(args.job_prefix),
                mariadb_pid(server.tmpdir),
            )
            report["environment"] = environment_info(server.admin, args.latency_ms)
            if args.explain:
                report["query2"] = bench.explain()
            report["every_run"], report["profiles"] = [], []
            for round_number in range(max(1, args.repeat)):
                for plan in plans:
                    if round_number and plan.name == "baseline":
                        continue  # a minute a run, bound by latency, not by CPU
                    report["every_run"].append(bench.run(plan))
                    if args.profile and round_number == 0:
                        report["profiles"].append(bench.profile(plan, report["every_run"][-1]))
            report["runs"] = median_runs(report["every_run"])
            if "sandbox" in args.only:
                report["sandbox_capacity"] = capacity(sandbox, args)
            report["rss_series"] = [
                bench.run(Plan(f"memory-{size}", size, ("--mode", "bulk"), args.rss_views, "rss"))
                for size in rss_sizes
            ]
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    report["bench_wall_seconds"] = round(time.monotonic() - started, 1)
    report["bench_rusage_children_cpu_seconds"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
        1,
    )
    write_outputs(report, docs=not args.no_docs)
    return 0 if all_clean(report) else 1


def mariadb_pid(tmpdir: Path | None) -> int | None:
    """The throwaway server's pid, from the pid file it keeps in its directory."""
    if tmpdir is None:
        return None
    try:
        return int((tmpdir / "mysqld.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def capacity(sandbox: SandboxProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The sandbox alone at the bulk-b5000 ceiling, quiet and (unless --no-busy-core) busy."""
    results = []
    rate = float(RATE_LIMITS["RATE_LIMIT_USERS_BULK_UPDATE"])
    for load in LOADS if args.busy_core else LOADS[:1]:
        with ExitStack() as stack:
            busy = stack.enter_context(BusyCore()) if load == "busy" else None
            result = sandbox_capacity.run(sandbox, args.bulk_b5000_users, BIG_BATCH, rate)
        result["load"] = load
        result["busy_core_share"] = round(busy.share, 2) if busy is not None else None
        results.append(result)
    return results


def median_runs(every_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per mode and machine: the run with the median CPU per user, with every
    run's CPU and users/s, and lost, duplicated and exit over all of them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in every_run:
        groups.setdefault((run["name"], run["load"]), []).append(run)
    rows = []
    for runs in groups.values():
        by_cpu = sorted(runs, key=lambda run: run["cpu_seconds_per_1000_users"])
        row = dict(by_cpu[len(by_cpu) // 2])  # of two, the higher
        row["repeats"] = len(runs)
        row["cpu_seconds_per_1000_users_each"] = [r["cpu_seconds_per_1000_users"] for r in runs]
        row["users_per_second_each"] = [r["users_per_second"] for r in runs]
        row["lost"] = sum(r["lost"] for r in runs)
        row["duplicated"] = sum(r["duplicated"] for r in runs)
        row["exit_code"] = next((r["exit_code"] for r in runs if r["exit_code"] != 0), 0)
        rows.append(row)
    return rows


def all_clean(report: dict[str, Any]) -> bool:
    runs = report.get("every_run", report.get("runs", [])) + report.get("rss_series", [])
    runs += report.get("sandbox_capacity", [])
    return all(r.get("exit_code", 0) == 0 and r["lost"] == 0 and r["duplicated"] == 0 for r in runs)


if __name__ == "__main__":
    sys.exit(main())
