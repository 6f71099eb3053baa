"""`make demo` works from a clean checkout: its own MariaDB, the sandbox, two runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_job_twice_and_the_second_run_sends_nothing():
    # One stream, as a terminal shows it: the log lines and the summaries in their order.
    done = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout
    assert "7 users: 6 succeeded, 1 failed, 0 skipped" in done.stdout
    assert "the sandbox now holds 6 user profiles and 6 page_view events" in done.stdout
    # The malformed email still fails, as outstanding: it alerted on the first run only.
    assert "7 users: 0 succeeded, 1 failed, 6 skipped" in done.stdout
    assert "1 outstanding (failing since " in done.stdout
    assert "API calls made by the second run: 0" in done.stdout
    assert "Traceback" not in done.stdout
    assert_readme_sample_matches(done.stdout)


def assert_readme_sample_matches(output: str) -> None:
    """The README's `make demo` sample is what the demo prints, `…` standing for times,
    paths and durations."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sample = re.search(r"```\n(--- first run: .*?)```", readme, re.DOTALL)
    assert sample, "the README has no make demo sample"
    expected = sample.group(1).rstrip("\n").splitlines()
    printed = output[output.index("--- first run: ") :].rstrip("\n").splitlines()
    assert len(printed) == len(expected), printed
    for shown, line in zip(expected, printed, strict=True):
        pattern = ".*".join(re.escape(part) for part in shown.split("…"))
        assert re.fullmatch(pattern, line), (shown, line)
