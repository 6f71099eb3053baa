"""The Iterable sandbox as a separate process, and its control API (/_sandbox/) over loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 15.0
CONTROL_TIMEOUT = 600.0  # reading a million stored users takes a while
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sandbox_command(*flags: str) -> list[str]:
    """How the sandbox is started (from the repository's root): the one place that says so."""
    return [sys.executable, "-m", "sandbox", *flags]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sandbox_environment() -> dict[str, str]:
    """This environment with the repository root first on the import path, for `-m sandbox`."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}"}


class SandboxProcess:
    """The sandbox on 127.0.0.1, a free port, its own API key; stopped on exit, even on errors."""

    def __init__(self, latency_ms: float, rate_limits: str = "iterable") -> None:
        self.latency_ms = latency_ms
        self.rate_limits = rate_limits
        self.api_key = "bench-" + os.urandom(8).hex()
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-sandbox-")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> SandboxProcess:
        port_file = Path(self._tmp.name) / "port"
        log = open(Path(self._tmp.name) / "sandbox.log", "wb")
        self._process = subprocess.Popen(
            sandbox_command(
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--latency-ms",
                f"{self.latency_ms:g}",
                "--rate-limits",
                self.rate_limits,
                "--api-key",
                self.api_key,
                "--port-file",
                str(port_file),
            ),
            cwd=ROOT,
            env=sandbox_environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us in order
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not port_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the sandbox did not start: " + self.log_tail())
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._tmp.cleanup()

    def log_tail(self) -> str:
        try:
            text = (Path(self._tmp.name) / "sandbox.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-20:])

    def control(self, method: str, route: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/{route}", data=data, method=method
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        with opener.open(request, timeout=CONTROL_TIMEOUT) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        self.control("POST", "reset")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)
