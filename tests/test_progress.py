"""Progress output: a bar with rate and ETA on a terminal, periodic log lines for cron."""

from __future__ import annotations

import io
import logging

import progress
from progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress, "DRAW_EVERY_SECONDS", 0.0)
    screen = Terminal()
    bar = Progress(total=200, stream=screen)
    for _ in range(50):
        bar.advance()
    bar.finish()
    last = screen.getvalue().rstrip().split("\r")[-1]
    assert last.startswith("[#######-----------------------] 50/200 users, ")
    assert "/s, ETA " in last


def test_cron_gets_log_lines_not_a_bar(monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    stream = io.StringIO()
    counter = Progress(total=10, stream=stream)
    with caplog.at_level(logging.INFO, logger="progress"):
        counter.advance(3)
        counter.finish()
    assert stream.getvalue() == ""
    assert any(m.startswith("progress: 3/10 users, ") for m in caplog.messages)


def test_line_without_a_total():
    assert Progress(total=None, stream=io.StringIO()).line(0.0).startswith("0 users")
