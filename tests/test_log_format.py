"""LOG_FORMAT=json: one JSON object per log line, on the console and in the file, tied to
the run's results file by its run id, and masked and redacted exactly as text logs are."""

from __future__ import annotations

import io
import json
import logging
import re

from logger_config import REDACTED, RedactingFilter, make_formatter
from sandbox import DEFAULT_API_KEY as API_KEY

FIELDS = {"time", "level", "logger", "message", "run_id"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_on_console_and_in_the_file_carry_the_run_id(job, sandbox):
    password = job.env["MYSQL_PASSWORD"]
    # A results directory whose path holds the password and an address: the line that
    # names it must come out redacted and masked, as in text logs.
    results_dir = job.workdir / password / "jane.doe@example.com"
    results_dir.mkdir(parents=True)
    run = job.run(LOG_FORMAT="json", RESULTS_DIR=str(results_dir))
    assert run.code == 1, run.stderr
    results = json.loads(next(results_dir.glob("integration_results_*.json")).read_text())
    run_id = results["run"]["run_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)

    console, logged = json_lines(run.stderr), json_lines(job.log_file.read_text())
    assert console and len(logged) > len(console)  # the file also has the DEBUG lines
    for record in console[:-1] + logged[:-1]:
        assert set(record) == FIELDS, record
    for last in (console[-1], logged[-1]):  # the summary record
        assert set(last) == FIELDS | {"summary"}, last
        assert (last["summary"]["exit_code"], last["summary"]["failed"]) == (1, 1)
    for record in console + logged:
        assert TIME.fullmatch(record["time"]) and record["run_id"] == run_id
    written = [r for r in console if r["message"].startswith("results written to")]
    assert len(written) == 1 and written[0]["level"] == "INFO"
    assert f"/{REDACTED}/j***@example.com/integration_results_" in written[0]["message"]
    for text in (run.stderr, job.log_file.read_text()):
        assert password not in text and API_KEY not in text
        assert UNMASKED_EMAIL.findall(text) == []


def test_text_stays_the_default(job):
    run = job.run()
    assert run.code == 1
    first = run.stderr.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO ", first), first
    assert re.fullmatch(r"[0-9a-f]{32}", run.results["run"]["run_id"])


def test_a_traceback_goes_into_the_line_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json", "r1"))
    handler.addFilter(RedactingFilter(["s3cret-pw"]))
    logger = logging.getLogger("test_log_format.traceback")
    logger.addHandler(handler)
    try:
        raise ValueError("connect failed for s3cret-pw and bob@example.com")
    except ValueError:
        logger.exception("unexpected error")
    finally:
        logger.removeHandler(handler)
    (record,) = json_lines(stream.getvalue())
    assert record["message"] == "unexpected error" and record["run_id"] == "r1"
    assert record["exception"].startswith("Traceback")
    assert "ValueError: connect failed for [REDACTED] and b***@example.com" in record["exception"]
