"""Progress output: a tqdm bar on a terminal that log lines never overwrite, no ETA before
the rate is measured, and periodic log lines instead of a bar for cron."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import termios

import progress
from devtools.bulk_seed import add_pro_customers, synthetic_email
from progress import Progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def frames(screen: str) -> list[str]:
    """What the bar drew, one frame at a time."""
    return [frame.strip() for frame in re.split(r"[\r\n]", screen) if frame.strip()]


def test_terminal_gets_a_bar_without_eta_until_the_rate_is_measured(monkeypatch):
    monkeypatch.setattr(progress, "DRAW_EVERY_SECONDS", 0.0)
    now = [0.0]
    screen = Terminal()
    bar = Progress(total=200, stream=screen, clock=lambda: now[0])
    for _ in range(20):
        bar.advance()
    assert "ETA" not in screen.getvalue()  # 20 rows in no time say nothing about the rest
    now[0] = progress.ETA_AFTER_SECONDS
    bar.advance()
    bar.advance()
    bar.finish()
    drawn = frames(screen.getvalue())
    assert drawn[0].startswith("0%|") and "0/200 users" in drawn[0]
    assert drawn[-1].startswith("11%|") and "22/200 users" in drawn[-1]
    assert drawn[-1].endswith(f"ETA {178 / (22 / progress.ETA_AFTER_SECONDS):.0f}s]")
    bar.finish()  # twice is harmless


def test_cron_gets_log_lines_not_a_bar(monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    stream = io.StringIO()
    counter = Progress(total=10, stream=stream)
    with caplog.at_level(logging.INFO, logger="progress"):
        counter.advance(3)
        counter.finish()
    assert stream.getvalue() == ""
    assert any(m.startswith("progress: 3/10 users, ") for m in caplog.messages)
    assert not any("ETA" in m for m in caplog.messages)


def test_line_without_a_total():
    assert Progress(total=None, stream=io.StringIO()).line(0.0).startswith("0 users")


def test_leavers_get_a_line_and_a_bar_with_their_total(monkeypatch, caplog):
    monkeypatch.setattr(progress, "DRAW_EVERY_SECONDS", 0.0)
    now = [0.0]
    screen = Terminal()
    bar = Progress(total=None, stream=screen, clock=lambda: now[0])
    bar.advance(5)
    with caplog.at_level(logging.INFO, logger="progress"):
        bar.leavers(3000)
    now[0] = progress.ETA_AFTER_SECONDS
    bar.advance(1500)
    bar.finish()
    drawn = frames(screen.getvalue())
    assert "3,000 customers left the segment: updating …" in caplog.messages
    assert not [frame for frame in drawn if "users" in frame and "%" in frame]  # no total
    assert drawn[-1].startswith("50%|") and "1500/3000 customers" in drawn[-1]
    assert drawn[-1].endswith("ETA 3s]")


def test_no_eta_once_the_total_is_reached():
    counter = Progress(total=10, stream=io.StringIO(), clock=lambda: 0.0)
    counter.advance(12)  # more rows than counted: the table grew during the run
    assert counter.eta(progress.ETA_AFTER_SECONDS + 1) == ""


# -- the real job on a pseudo-terminal -----------------------------------------------------


def run_on_a_terminal(job, *args: str) -> tuple[int, str]:
    """main.py with stderr on a pseudo-terminal 100 columns wide; (exit code, what it drew)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        job.command(*args),
        cwd=job.workdir,
        env=job.environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        code = process.wait(timeout=60)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def screen_lines(output: str) -> list[str]:
    """The lines as a terminal shows them: a carriage return goes back to the line's start
    and what follows overwrites it."""
    lines: list[str] = []
    for raw in output.replace("\r\n", "\n").split("\n"):
        shown: list[str] = []
        for part in raw.split("\r"):
            shown[: len(part)] = part
        lines.append("".join(shown).rstrip())
    return [line for line in lines if line]


def test_log_lines_never_land_on_the_bar(job, sandbox, mariadb, seeded_db):
    add_pro_customers(mariadb, seeded_db.name, 200)
    # Failures in the middle of the run log warnings while the bar is on the screen.
    body = '{"msg": "nope", "code": "BadParams", "params": null}'
    for n in (60, 120):
        sandbox.add_fault(
            "status", endpoint="users/update", email=synthetic_email(n), status=400, body=body
        )
    sandbox.set_latency(0.01)
    code, output = run_on_a_terminal(job, "--concurrency", "2")
    assert code == 1, output
    first_frame = output[output.index("0/207 users") :].split("\r")[0]
    assert "ETA" not in first_frame
    lines = screen_lines(output)
    warnings = [line for line in lines if "failed BadParams" in line]
    assert len(warnings) == 2, lines
    for warning in warnings:
        assert re.fullmatch(
            r"\S+Z WARNING outcomes: customer \d+ \(b\*\*\*@example\.com\): failed BadParams",
            warning,
        ), warning
    assert lines[-3].startswith("100%|") and "207/207 users" in lines[-3]
    assert "results written to" in lines[-2]
    assert "run finished: exit code 1" in lines[-1]
    assert "Traceback" not in output
