"""`python main.py report RESULTS.json`: one self-contained HTML page summarising a run.

Rendering (`render_report`) is pure and separate from file I/O (`report_command`). Every
piece of text from the results file goes through `_text`, which masks anything that looks
like an email address before escaping it, so the page never holds a full address. The
optional CSV (`--csv`) is the one exception: it lists the failed rows with their real
addresses for whoever fixes the data, and is written owner-only.

The counts come from `results.Summary`, the class that counts for the results file itself,
so the page and the file cannot disagree about what a row counts as.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, NamedTuple, TextIO

from exit_codes import EXIT_ABORTED, EXIT_CONFIG, EXIT_OK, EXIT_ROWS_FAILED, run_exit_code
from logger_config import mask_email, mask_emails
from results import (
    DRY_RUN,
    EMAIL_CHANGE_CONFLICT,
    EMAIL_CHANGE_FORGOTTEN,
    EMAIL_CHANGE_OLD_MISSING,
    FAILED,
    FORGOTTEN,
    LEAVE_GUARD,
    LEFT_DELETED,
    LEFT_SEGMENT,
    SKIPPED,
    SUBSCRIBED,
    SUCCESS,
    UNCHANGED,
    UNSUBSCRIBED,
    Summary,
    write_atomically,
)

TEMPLATES = Path(__file__).resolve().parent / "report_templates"
MAX_WARNINGS = 5  # warnings are advice, not work to do: a few examples are enough
OPEN_LIMIT = 10  # a list this short is shown open; a longer one is folded under <details>
MAX_TEXT = 160  # a long Iterable msg is cut so a table cell stays one or two lines
MAX_CAUSE = 1000  # a cause a group of failures shares is said once, whole unless absurd
MAX_CHANGES = 500  # rows listed per change section; the counts cover every row
# A row's calls, in the order they are made.
STEPS = (
    ("update_email", "email move"),
    ("user_update", "user update"),
    ("event_track", "event track"),
    ("delete_user", "delete"),
)
# What an email change that did not move the profile came to.
NOT_MOVED = {
    EMAIL_CHANGE_CONFLICT: "the new email has another profile: both left as they are",
    EMAIL_CHANGE_OLD_MISSING: "no profile under the old email: created under the new one",
    EMAIL_CHANGE_FORGOTTEN: "the old email was forgotten: created under the new one",
}
NO_REASON = "(no reason)"
DASH = "\u2014"
CSV_COLUMNS = ("customer_id", "email", "reason", "detail", "failing_since", "outstanding")
# A spreadsheet runs a cell that starts with one of these as a formula; a malformed email
# is exactly the kind of value that lands in the CSV.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def masked(value: object) -> str:
    """An email masked for the page; a dash when there is none."""
    text = "" if value is None else str(value).strip()
    return mask_email(text) if text else DASH


def _text(value: object, limit: int | None = None) -> str:
    """Masked, optionally shortened, HTML-escaped text; None renders as a dash."""
    if value is None or value == "":
        return DASH
    text = mask_emails(str(value))
    if limit is not None and len(text) > limit:
        # Cut after masking so a cut can never turn a masked address back into a partial one.
        text = text[: limit - 1].rstrip() + "\u2026"
    return html.escape(text)


def _dict(value: object) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one (older or damaged files)."""
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    """A JSON number as float; strings, booleans and nulls are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None  # json.load accepts NaN and Infinity


def _count(value: object) -> int:
    """A non-negative whole count, 0 when missing or malformed."""
    number = _number(value)
    return max(int(number), 0) if number is not None else 0


def _optional_text(value: object) -> str | None:
    """A value from the file as text, None when absent."""
    return None if value is None or value == "" else str(value)


def _fmt_int(value: int) -> str:
    """Thousands separators for counts."""
    return f"{value:,}"


def _plural(count: int, word: str) -> str:
    """`word` or `words` to go with a count."""
    return word if count == 1 else word + "s"


def _percent(part: int, whole: int) -> float:
    """Share in percent, 0 for an empty whole (for bar widths)."""
    return 100.0 * part / whole if whole else 0.0


def _share(part: int, whole: int) -> str:
    """A share for people to read, as HTML: `16.7 %`, and `< 0.1 %` rather than `0.0 %`
    when there is something, `> 99.9 %` rather than `100.0 %` when something is missing."""
    if not part or not whole:
        return "0 %"
    if part >= whole:
        return "100 %"
    percent = 100.0 * part / whole
    if percent < 0.1:
        return "&lt; 0.1 %"
    if percent > 99.9:
        return "&gt; 99.9 %"
    return f"{percent:.1f} %"


@dataclass(frozen=True)
class FailedRow:
    """One failed row as the file has it (unmasked: the page masks, the CSV does not)."""

    customer_id: str
    email: str | None
    reason: str
    detail: str | None  # what went wrong: Iterable's msg or error, else the row's own detail
    step: str | None = None
    http_status: str | None = None
    code: str | None = None
    outstanding: bool = False
    failing_since: str | None = None
    left: bool = False
    previous_email: str | None = None


@dataclass(frozen=True)
class ChangedRow:
    """A row that changed something beyond its own profile: an email move, a leaver, a list
    change. Unmasked, as the file has it; the page masks."""

    customer_id: str
    email: str | None
    done: str  # what was done, in a few words
    previous_email: str | None = None
    list_action: str | None = None
    failed: bool = False


@dataclass
class RowStats:
    """What the per-row results add up to: the Summary's counts, every failed row, and
    retries and warnings (bounded)."""

    summary: Summary = field(default_factory=Summary)
    failed: list[FailedRow] = field(default_factory=list)
    retried_rows: int = 0
    retried_by_step: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    rows_with_warnings: int = 0
    warning_examples: list[tuple[str, str]] = field(default_factory=list)
    moves: list[ChangedRow] = field(default_factory=list)
    leavers: list[ChangedRow] = field(default_factory=list)
    deletions: list[ChangedRow] = field(default_factory=list)
    listed: list[ChangedRow] = field(default_factory=list)

    @property
    def new_failures(self) -> list[FailedRow]:
        return [row for row in self.failed if not row.outstanding]

    @property
    def outstanding(self) -> list[FailedRow]:
        return [row for row in self.failed if row.outstanding]


def _step_failed(step: Mapping[str, Any]) -> bool:
    """Whether a step summary records a failed Iterable call."""
    if step.get("skipped"):
        return False
    if step.get("error"):
        return True
    status = step.get("http_status")
    if isinstance(status, int) and not 200 <= status < 300:
        return True
    code = step.get("code")
    return isinstance(code, str) and code not in ("", "Success")


def _failing_step(row: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """The label and summary of the first step with a failed Iterable call, if any."""
    for key, label in STEPS:
        step = row.get(key)
        if isinstance(step, dict) and _step_failed(step):
            return label, step
    return None, {}


def _failed_row(row: Mapping[str, Any]) -> FailedRow:
    """A failed row: the failing step's status, code and msg, else the row's detail."""
    customer = row.get("customer_id")
    reason = row.get("reason")
    outstanding = bool(row.get("outstanding"))  # the same test as Summary.add_row
    label, step = _failing_step(row)
    status = step.get("http_status")
    return FailedRow(
        customer_id=DASH if customer is None else str(customer),
        email=_optional_text(row.get("email")),
        reason=str(reason) if reason else NO_REASON,
        detail=_optional_text(step.get("msg") or step.get("error") or row.get("detail")),
        step=label,
        http_status=None if status is None else f"HTTP {status}",
        code=_optional_text(step.get("code")),
        outstanding=outstanding,
        failing_since=_optional_text(row.get("failing_since")) if outstanding else None,
        left=row.get("segment") == LEFT_SEGMENT,
        previous_email=_optional_text(row.get("previous_email")),
    )


def _step_attempts(row: Mapping[str, Any]) -> list[str]:
    """Labels of the steps that needed more than one attempt."""
    retried = []
    for key, label in STEPS:
        attempts = _number(_dict(row.get(key)).get("attempts"))
        if attempts is not None and attempts > 1:
            retried.append(label)
    return retried


def _add_warnings(stats: RowStats, row: Mapping[str, Any]) -> None:
    """Count a row's warnings and keep the first few."""
    warnings = row.get("warnings")
    if not isinstance(warnings, list) or not warnings:
        return
    stats.warnings += len(warnings)
    stats.rows_with_warnings += 1
    customer = row.get("customer_id")
    for warning in warnings:
        if len(stats.warning_examples) >= MAX_WARNINGS:
            break
        stats.warning_examples.append((DASH if customer is None else str(customer), str(warning)))


def _move_done(row: Mapping[str, Any]) -> str:
    warnings = [str(w) for w in row.get("warnings") or () if isinstance(w, str)]
    for prefix, said in NOT_MOVED.items():
        if any(w.startswith(prefix) for w in warnings):
            return said
    if row.get("status") == FAILED:
        return f"failed: {row.get('reason')}"
    if row.get("reason") == DRY_RUN:
        return "would be moved"
    return "moved, with its history" if row.get("status") == SUCCESS else "not moved"


def _leaver_done(row: Mapping[str, Any]) -> str:
    status, reason = row.get("status"), row.get("reason")
    if reason == LEFT_DELETED:
        deleted = row.get("delete_user") is not None and status == SUCCESS
        planned = bool(_dict(row.get("payloads")).get("delete_user"))
        if status == FAILED:
            return f"gone from the database; deleting it in Iterable failed: {reason}"
        if deleted or planned:
            return "gone from the database; " + (
                "would be deleted in Iterable" if planned else "deleted in Iterable"
            )
        return "gone from the database; kept in Iterable"
    done = {
        UNCHANGED: "nothing to send: Iterable holds the current fields",
        LEAVE_GUARD: "held back by the mass-leave guard: nothing sent",
        DRY_RUN: "profile would be updated",
        FORGOTTEN: "forgotten in Iterable: nothing sent",
    }
    if status == FAILED:
        return f"failed: {reason}"
    return done.get(str(reason), "profile updated" if status == SUCCESS else str(reason))


def _add_changes(stats: RowStats, row: Mapping[str, Any]) -> None:
    """Keep the first rows of each change section (the Summary counts them all)."""
    customer = row.get("customer_id")
    cid = DASH if customer is None else str(customer)
    email = _optional_text(row.get("email"))
    action = row.get("list") if row.get("list") in (SUBSCRIBED, UNSUBSCRIBED) else None
    failed = row.get("status") == FAILED
    previous = _optional_text(row.get("previous_email"))
    if previous and len(stats.moves) < MAX_CHANGES:
        stats.moves.append(ChangedRow(cid, email, _move_done(row), previous, action, failed))
    if row.get("segment") == LEFT_SEGMENT:
        leaver = ChangedRow(cid, email, _leaver_done(row), previous, action, failed)
        if len(stats.leavers) < MAX_CHANGES:
            stats.leavers.append(leaver)
        if row.get("reason") == LEFT_DELETED and len(stats.deletions) < MAX_CHANGES:
            stats.deletions.append(leaver)
    if action and len(stats.listed) < MAX_CHANGES:
        stats.listed.append(ChangedRow(cid, email, str(action), previous, action, failed))


def _countable(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The row for Summary.add_row; a failing_since that is not text (a damaged file) is
    dropped, since failing times are compared with each other."""
    since = row.get("failing_since")
    if since is None or isinstance(since, str):
        return row
    return {**row, "failing_since": None}


def collect_rows(rows: object) -> RowStats:
    """One pass over the per-row results: Summary counts, failed rows, retries, warnings."""
    stats = RowStats()
    if not isinstance(rows, list):
        return stats
    for row in rows:
        if not isinstance(row, dict):
            continue
        stats.summary.add_row(_countable(row))
        if row.get("status") == FAILED:
            stats.failed.append(_failed_row(row))
        _add_changes(stats, row)
        retried = _step_attempts(row)
        if retried:
            stats.retried_rows += 1
            stats.retried_by_step.update(retried)
        _add_warnings(stats, row)
    return stats


class RunStatus(NamedTuple):
    """The run as a whole: a css class, a badge label and an optional explanation."""

    css: str
    label: str
    explanation: str | None


def run_status(run: Mapping[str, Any], summary: Summary) -> RunStatus:
    """The run's status, matching main's exit codes; outstanding rows alone are amber."""
    code = run_exit_code(
        bool(run.get("aborted") or run.get("stopped_by_signal")), summary.new_failures
    )
    if code == EXIT_ABORTED and run.get("aborted"):
        return RunStatus("aborted", "aborted", f"Run aborted: {run['aborted']}")
    if code == EXIT_ABORTED:
        return RunStatus("aborted", "aborted", "Stopped by a signal before every row was done.")
    if code == EXIT_ROWS_FAILED:
        return RunStatus("failed", "rows failed", None)
    if summary.outstanding:
        rows = f"{_fmt_int(summary.outstanding)} {_plural(summary.outstanding, 'row')}"
        explanation = (
            f"No new failures, but {rows} still fail as an earlier run reported: "
            "they need a fix in the data (see Outstanding)."
        )
        return RunStatus("outstanding", "outstanding", explanation)
    return RunStatus("ok", "ok", None)


def _fmt_time(value: object) -> str:
    """An ISO timestamp as `2026-11-29 12:00:00 UTC`; anything else as given."""
    if not isinstance(value, str) or not value:
        return _text(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _text(value)
    return html.escape(moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip())


def _fmt_duration(value: object) -> str:
    """Seconds as `3.2 s`, `2 min 5 s` or `1 h 4 min`."""
    seconds = _number(value)
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _fmt_flag(value: object) -> str:
    """JSON booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _text(value)


def _header(run: Mapping[str, Any], status: RunStatus) -> str:
    """Title, status badge and the run's settings."""
    badges = f'<span class="badge badge-{status.css}" id="run-status">{status.label}</span>'
    if run.get("dry_run") is True:
        badges += '<span class="badge badge-dry">dry run</span>'
    lookback = run.get("lookback_days")
    meta = [
        ("Started", _fmt_time(run.get("started_at"))),
        ("Finished", _fmt_time(run.get("finished_at"))),
        ("Duration", _fmt_duration(run.get("duration_seconds"))),
        ("Mode", _text(run.get("mode"))),
        ("Dry run", _fmt_flag(run.get("dry_run"))),
        ("Concurrency", _text(run.get("concurrency"))),
        ("Full refresh", _fmt_flag(run.get("full_refresh"))),
        ("Rows read", _text(run.get("rows_read"))),
        ("Plan type", _text(run.get("plan_type"))),
        ("Identify by", _text(run.get("identify_by"))),
        ("List", _text(run.get("list_id")) if run.get("list_id") is not None else "none"),
        ("Lookback", DASH if lookback is None else f"{_text(lookback)} days"),
        ("Database", _text(run.get("database"))),
        ("Iterable", _text(run.get("iterable_base_url"))),
    ]
    items = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in meta)
    alert = ""
    if status.explanation:
        alert = (
            f'<div class="alert alert-{status.css}" role="alert">{_text(status.explanation)}</div>'
        )
    return (
        '<header class="hero"><div class="title-row"><h1>Iterable sync run</h1>'
        f'<div class="badges">{badges}</div></div>'
        f'<dl class="meta">{items}</dl>{alert}</header>'
    )


def _card(kind: str, label: str, value: int, sub: str) -> str:
    """One headline number."""
    return (
        f'<div class="card card-{kind}"><div class="label">{label}</div>'
        f'<div class="value" id="count-{kind}">{_fmt_int(value)}</div>'
        f'<div class="sub">{sub}</div></div>'
    )


def _outcomes(summary: Summary) -> list[tuple[str, str, int]]:
    """(kind, label, rows) for each outcome; together they make up the total."""
    return [
        ("succeeded", "Succeeded", summary.succeeded),
        ("failed", "New failures", summary.new_failures),
        ("outstanding", "Outstanding", summary.outstanding),
        ("skipped", "Skipped", summary.skipped),
    ]


def _cards(summary: Summary, rows_read: object) -> str:
    """Total, then each outcome with its share; leavers are mentioned under the total."""
    read = _number(rows_read)
    notes = [f"{_fmt_int(int(read))} rows read" if read is not None else "rows in this run"]
    if summary.left:
        notes.append(f'<span id="count-left">{_fmt_int(summary.left)}</span> left the segment')
    cards = [_card("total", "Total", summary.total, " · ".join(notes))]
    for kind, label, value in _outcomes(summary):
        cards.append(_card(kind, label, value, f"{_share(value, summary.total)} of rows"))
    return f'<section class="cards">{"".join(cards)}</section>'


def _split_bar(summary: Summary) -> str:
    """A stacked bar of the outcome split, drawn with CSS widths only."""
    parts = _outcomes(summary)
    whole = sum(value for _, _, value in parts)
    segments = "".join(
        f'<span class="seg seg-{kind}" style="width:{_percent(value, whole):.2f}%"></span>'
        for kind, _, value in parts
        if value
    )
    legend = "".join(
        f'<li><span class="swatch seg-{kind}"></span>{label} '
        f"<strong>{_fmt_int(value)}</strong> "
        f'<span class="muted">({_share(value, whole)})</span></li>'
        for kind, label, value in parts
    )
    aria = ", ".join(f"{value} {label.lower()}" for _, label, value in parts)
    return (
        '<section class="panel"><h2>Outcome</h2>'
        f'<div class="bar" role="img" aria-label="{aria}">{segments}</div>'
        f'<ul class="legend">{legend}</ul></section>'
    )


def _folded(count: int, noun: str, body: str) -> str:
    """Every item, under a <details> that starts open when the list is short."""
    opened = " open" if count <= OPEN_LIMIT else ""
    return (
        f"<details{opened}><summary>{_fmt_int(count)} {_plural(count, noun)}</summary>"
        f"{body}</details>"
    )


def _tags(row: FailedRow) -> str:
    """Small labels: a leaver, and the address Iterable knew before an email change."""
    tags = '<span class="tag">left the segment</span>' if row.left else ""
    if row.previous_email:
        tags += f'<span class="tag">was {_text(masked(row.previous_email))}</span>'
    return tags


def _common_cause(rows: list[FailedRow]) -> str | None:
    """The message every row of a group shares, said once and in full (a type clash names
    its field and both types at the end); None when the rows say different things."""
    details = {row.detail for row in rows}
    if len(details) != 1:
        return None
    return details.pop()


def _failed_item(row: FailedRow, with_detail: bool = True) -> str:
    """One failed row: id, masked email, and what Iterable said."""
    said = " ".join(f"<code>{_text(part)}</code>" for part in (row.http_status, row.code) if part)
    where = f'<span class="step">{_text(row.step)}</span>' if row.step else ""
    detail = ""
    if row.detail and with_detail:
        detail = f'<span class="msg">{_text(row.detail, MAX_TEXT)}</span>'
    return (
        f'<li><span class="cid">#{_text(row.customer_id)}</span>'
        f'<span class="email">{_text(masked(row.email))}</span>{_tags(row)}{where}{said}'
        f"{detail}</li>"
    )


def _by_reason(rows: Iterable[FailedRow]) -> list[tuple[str, list[FailedRow]]]:
    """Rows grouped by reason, biggest group first, then by name so the order is stable."""
    groups: dict[str, list[FailedRow]] = {}
    for row in rows:
        groups.setdefault(row.reason, []).append(row)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _failures(stats: RowStats) -> str:
    """New failures by reason, every row listed (folded when long), emails masked."""
    groups = _by_reason(stats.new_failures)
    if not groups:
        return _panel("New failures by reason", '<p class="empty">No new failures.</p>', "failures")
    total = stats.summary.total
    rows = []
    for reason, members in groups:
        cause = _common_cause(members)
        items = "".join(_failed_item(row, with_detail=cause is None) for row in members)
        said = f'<p class="cause">{_text(cause, MAX_CAUSE)}</p>' if cause else ""
        listing = _folded(len(members), "row", f'<ul class="examples">{items}</ul>')
        rows.append(
            f'<tr><td><code class="reason">{_text(reason)}</code></td>'
            f'<td class="num">{_fmt_int(len(members))}</td>'
            f'<td class="num muted">{_share(len(members), total)}</td>'
            f"<td>{said}{listing}</td></tr>"
        )
    head = '<tr><th>Reason</th><th class="num">Rows</th><th class="num">Share</th>'
    head += "<th>Rows (customer, email, Iterable response)</th></tr>"
    return _panel("New failures by reason", _table(head, rows, "failures-table"), "failures")


def _outstanding(stats: RowStats) -> str:
    """The amber panel of rows still failing as an earlier run reported; oldest first."""
    members = sorted(stats.outstanding, key=lambda row: (row.failing_since or "", row.customer_id))
    if not members:
        return ""
    rows = [
        f'<tr><td class="cid">#{_text(row.customer_id)}</td>'
        f'<td><span class="email">{_text(masked(row.email))}</span> {_tags(row)}</td>'
        f'<td><code class="reason">{_text(row.reason)}</code></td>'
        f"<td>{_fmt_time(row.failing_since)}</td>"
        f'<td class="msg">{_text(row.detail, MAX_TEXT)}</td></tr>'
        for row in members
    ]
    head = (
        "<tr><th>Customer</th><th>Email</th><th>Reason</th><th>Failing since</th>"
        "<th>Detail</th></tr>"
    )
    note = (
        f'<p class="note"><strong id="outstanding-rows">{_fmt_int(len(members))}</strong> '
        f"{_plural(len(members), 'row')} failed on an earlier run and again now with the same "
        "data: reported before, so not new failures. A fix in the source data clears them.</p>"
    )
    table = _folded(len(members), "row", _table(head, rows, "outstanding-table"))
    return (
        '<section class="panel panel-outstanding" id="outstanding">'
        f"<h2>Outstanding</h2>{note}{table}</section>"
    )


def _skipped(summary: Summary) -> str:
    """Skipped rows by reason, from the Summary's reason counts."""
    counts = {
        key.partition(":")[2]: value
        for key, value in summary.reasons.items()
        if key.startswith(f"{SKIPPED}:")
    }
    unexplained = summary.skipped - sum(counts.values())  # rows without a reason
    if unexplained > 0:
        counts[NO_REASON] = unexplained
    if not counts:
        return _panel("Skipped by reason", '<p class="empty">No skipped rows.</p>', "skipped")
    rows = [
        f'<tr><td><code class="reason">{_text(reason)}</code></td>'
        f'<td class="num">{_fmt_int(count)}</td>'
        f'<td class="num muted">{_share(count, summary.total)}</td></tr>'
        for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    head = '<tr><th>Reason</th><th class="num">Rows</th><th class="num">Share</th></tr>'
    return _panel("Skipped by reason", _table(head, rows, "skipped-table"), "skipped")


def _status_pill(status: str, count: int) -> str:
    """An HTTP status with its count, coloured by class (2xx, 4xx, 5xx or no response)."""
    kind = {"2": "2xx", "4": "4xx"}.get(status[:1], "5xx")
    return f'<span class="pill pill-{kind}">{_text(status)} &times; {_fmt_int(count)}</span>'


def _endpoints(api: Mapping[str, Any]) -> list[str]:
    """Every endpoint the run's API stats mention, sorted."""
    names: set[str] = set()
    for key in ("requests", "seconds", "busy_seconds", "retries"):
        names.update(str(name) for name in _dict(api.get(key)))
    return sorted(names)


def _request_count(api: Mapping[str, Any], endpoint: str) -> int:
    """All requests to an endpoint, whatever their status."""
    return sum(_count(value) for value in _dict(_dict(api.get("requests")).get(endpoint)).values())


def _seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


TIMING_NOTE = (
    "Summed request time adds up the time of every request, so requests that ran at the "
    "same time are counted more than once: it is not wall time."
)
BUSY_NOTE = " Busy (wall) time is how long at least one request to the endpoint was in flight."


def _timing(api: Mapping[str, Any]) -> str:
    """Requests by status, busy and summed seconds, and average milliseconds per request."""
    endpoints = _endpoints(api)
    if not endpoints:
        return _panel(
            "Timing per endpoint", '<p class="empty">No API calls recorded.</p>', "timing"
        )
    # `seconds` is a sum over requests that overlap; `busy_seconds` (newer files) is wall time.
    busy = _dict(api.get("busy_seconds"))
    rows = []
    for endpoint in endpoints:
        by_status = _dict(_dict(api.get("requests")).get(endpoint))
        pills = " ".join(_status_pill(str(s), _count(n)) for s, n in sorted(by_status.items()))
        count = _request_count(api, endpoint)
        summed = _number(_dict(api.get("seconds")).get(endpoint))
        average = f"{summed / count * 1000:.1f}" if summed is not None and count else DASH
        busy_cell = f'<td class="num">{_seconds(_number(busy.get(endpoint)))}</td>' if busy else ""
        rows.append(
            f"<tr><td><code>{_text(endpoint)}</code></td><td>{pills or DASH}</td>"
            f'<td class="num">{_fmt_int(count)}</td>{busy_cell}'
            f'<td class="num">{_seconds(summed)}</td>'
            f'<td class="num">{average}</td></tr>'
        )
    busy_head = '<th class="num">Busy (wall) time, s</th>' if busy else ""
    head = (
        '<tr><th>Endpoint</th><th>Requests by status</th><th class="num">Requests</th>'
        f'{busy_head}<th class="num">Summed request time, s</th>'
        '<th class="num">Avg ms / request</th></tr>'
    )
    note = f'<p class="note muted">{TIMING_NOTE}{BUSY_NOTE if busy else ""}</p>'
    return _panel("Timing per endpoint", _table(head, rows, "timing-table") + note, "timing")


def _retries(api: Mapping[str, Any], stats: RowStats) -> str:
    """Retries per endpoint and how many rows needed more than one attempt."""
    retries = _dict(api.get("retries"))
    rows = []
    for endpoint in _endpoints(api):
        count = _count(retries.get(endpoint))
        requests = _request_count(api, endpoint)
        rows.append(
            f'<tr><td><code>{_text(endpoint)}</code></td><td class="num">{_fmt_int(count)}</td>'
            f'<td class="num muted">{_share(count, requests)}</td></tr>'
        )
    head = '<tr><th>Endpoint</th><th class="num">Retries</th><th class="num">Of requests</th></tr>'
    table = _table(head, rows, "retries-table") if rows else ""
    steps = ", ".join(
        f"{label}: {_fmt_int(n)}" for label, n in sorted(stats.retried_by_step.items())
    )
    detail = f" ({steps})" if steps else ""
    total = stats.summary.total
    summary = (
        f'<p class="note"><strong id="retried-rows">{_fmt_int(stats.retried_rows)}</strong> '
        f"of {_fmt_int(total)} {_plural(total, 'row')} needed more than one attempt{detail}.</p>"
    )
    return _panel("Retries", table + summary, "retries")


def _warnings(stats: RowStats) -> str:
    """Warning count and the first few warnings."""
    summary = (
        f'<p class="note"><strong id="warning-count">{_fmt_int(stats.warnings)}</strong> '
        f"{_plural(stats.warnings, 'warning')} on {_fmt_int(stats.rows_with_warnings)} "
        f"{_plural(stats.rows_with_warnings, 'row')}.</p>"
    )
    items = "".join(
        f'<li><span class="cid">#{_text(cid)}</span>'
        f'<span class="msg">{_text(text, MAX_TEXT)}</span></li>'
        for cid, text in stats.warning_examples
    )
    examples = f'<ul class="examples">{items}</ul>' if items else ""
    return _panel("Warnings", summary + examples, "warnings")


def _run_warnings(run: Mapping[str, Any]) -> str:
    """Warnings about the run as a whole (a stale page_views, a lost state) and the
    mass-leave guard's verdict: shown first, since each may mean the run did too little."""
    warnings = [str(w) for w in run.get("warnings") or () if w]
    held_back = _optional_text(run.get("held_back"))
    if held_back:
        warnings.insert(0, held_back)
    if not warnings:
        return ""
    items = "".join(f"<li>{_text(warning)}</li>" for warning in warnings)
    return (
        '<section class="panel panel-outstanding" id="run-warnings">'
        f'<h2>Run warnings</h2><ul class="run-warnings">{items}</ul></section>'
    )


def _change_item(row: ChangedRow, show_list: bool = True) -> str:
    tags = ""
    if show_list and row.list_action:
        tags = f'<span class="tag">{_text(row.list_action)}</span>'
    kind = "msg failed" if row.failed else "msg"
    return (
        f'<li><span class="cid">#{_text(row.customer_id)}</span>'
        f'<span class="email">{_text(masked(row.email))}</span>{tags}'
        f'<span class="{kind}">{_text(row.done)}</span></li>'
    )


def _changes(stats: RowStats, run: Mapping[str, Any]) -> str:
    """Email moves, leavers, deletions and list changes: what the run changed in Iterable
    beyond the profiles and events of the segment."""
    changes = stats.summary.changes
    panels = []
    if stats.moves:
        items = [
            f'<li><span class="cid">#{_text(row.customer_id)}</span>'
            f'<span class="email">{_text(masked(row.previous_email))}</span> &rarr; '
            f'<span class="email">{_text(masked(row.email))}</span>'
            f'<span class="{"msg failed" if row.failed else "msg"}">{_text(row.done)}</span></li>'
            for row in stats.moves
        ]
        note = (
            f'<p class="note"><strong id="emails-moved">{_fmt_int(changes.emails_moved)}</strong> '
            f"{_plural(changes.emails_moved, 'profile')} moved to a new email; "
            f"{_fmt_int(changes.email_conflicts)} left alone for a conflict.</p>"
        )
        panels.append(_change_panel("Email moves", "email-moves", note, items, "email change"))
    if stats.leavers:
        note = (
            f'<p class="note"><strong id="leavers-count">{_fmt_int(changes.left)}</strong> '
            f"left the segment: {_fmt_int(changes.left_updated)} "
            f"{_plural(changes.left_updated, 'profile')} updated, "
            f"{_fmt_int(changes.left_unchanged)} unchanged, "
            f"{_fmt_int(changes.left_deleted)} gone from the database"
            + (f", {_fmt_int(changes.left_held_back)} held back" if changes.left_held_back else "")
            + ".</p>"
        )
        items = [_change_item(row) for row in stats.leavers]
        panels.append(_change_panel("Left the segment", "leavers", note, items, "leaver"))
    if stats.deletions:
        note = (
            f'<p class="note"><strong id="deleted-count">{_fmt_int(changes.left_deleted)}</strong>'
            f" {_plural(changes.left_deleted, 'customer')} gone from the customers table; "
            f"{_fmt_int(changes.deleted_in_iterable)} deleted in Iterable "
            "(ON_DELETED_CUSTOMER=delete).</p>"
        )
        items = [_change_item(row) for row in stats.deletions]
        panels.append(_change_panel("Deleted customers", "deletions", note, items, "deletion"))
    if stats.listed:
        note = (
            f'<p class="note">List <code id="list-id">{_text(run.get("list_id"))}</code>: '
            f'<strong id="list-subscribed">+{_fmt_int(changes.list_subscribed)}</strong> '
            f'subscribed, <strong id="list-unsubscribed">-{_fmt_int(changes.list_unsubscribed)}'
            "</strong> unsubscribed.</p>"
        )
        items = [_change_item(row, show_list=False) for row in stats.listed]
        panels.append(_change_panel("List changes", "list-changes", note, items, "list change"))
    return "".join(panels)


def _change_panel(title: str, panel_id: str, note: str, items: list[str], noun: str) -> str:
    """A panel of changes: its counts, then its rows' items (folded when they are many)."""
    listing = _folded(len(items), noun, f'<ul class="examples">{"".join(items)}</ul>')
    return _panel(title, note + listing, panel_id)


def _table(head: str, rows: Iterable[str], table_id: str) -> str:
    """A plain table with a header row."""
    return f'<table id="{table_id}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _panel(title: str, body: str, panel_id: str) -> str:
    """A titled white panel."""
    return f'<section class="panel" id="{panel_id}"><h2>{title}</h2>{body}</section>'


def _footer(run: Mapping[str, Any], source: str | None) -> str:
    """Where the numbers came from; says that addresses are masked."""
    version = run.get("version")
    parts = [f"iterable-sync {_text(version)}" if version else "iterable-sync"]
    if source:
        parts.insert(0, f"Generated from {_text(source)}")
    parts.append("email addresses are masked")
    return f"<footer>{' · '.join(parts)}</footer>"


@cache
def _template(name: str) -> str:
    """A file of report_templates/, found beside this module whatever the working directory."""
    path = TEMPLATES / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(
            f"cannot read the report template {path}: {exc.strerror or exc}"
        ) from None


def render_page(results: Mapping[str, Any], stats: RowStats, source: str | None = None) -> str:
    """The whole HTML page for a results file whose rows `stats` has collected."""
    run = _dict(results.get("run"))
    api = _dict(run.get("api"))
    summary = stats.summary
    started = run.get("started_at")
    title = f"Iterable sync · {_fmt_time(started)}" if started else "Iterable sync report"
    body = "".join(
        [
            _header(run, run_status(run, summary)),
            _run_warnings(run),
            _cards(summary, run.get("rows_read")),
            _split_bar(summary),
            _failures(stats),
            _outstanding(stats),
            _changes(stats, run),
            _skipped(summary),
            _timing(api),
            '<div class="pair">',
            _retries(api, stats),
            _warnings(stats),
            "</div>",
            _footer(run, source),
        ]
    )
    page = Template(_template("report.html"))
    # The style is inlined so the page is one file that stands alone.
    return page.substitute(title=title, style=_template("report.css"), body=body)


def render_report(results: Mapping[str, Any], source: str | None = None) -> str:
    """The whole HTML page for one results file."""
    return render_page(results, collect_rows(results.get("results")), source)


def _spreadsheet_safe(value: str | None) -> str:
    """The value, with a leading quote if a spreadsheet would otherwise run it as a formula."""
    text = value or ""
    return "'" + text if text.startswith(FORMULA_START) else text


def write_csv(out: TextIO, rows: Iterable[FailedRow]) -> None:
    """The failed and outstanding rows with their real addresses, for whoever fixes the data."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row.customer_id,
                _spreadsheet_safe(row.email),
                _spreadsheet_safe(row.reason),
                _spreadsheet_safe(row.detail),
                row.failing_since or "",
                "true" if row.outstanding else "false",
            ]
        )


class ReportError(Exception):
    """A problem the user can fix: bad arguments or an unreadable results file."""


def default_output(results_path: Path) -> Path:
    """`x.json` -> `x.html`; other names get `.html` appended, so the input is never overwritten."""
    if results_path.suffix.lower() == ".json":
        return results_path.with_suffix(".html")
    return results_path.with_name(results_path.name + ".html")


def load_results(path: Path) -> dict[str, Any]:
    """The parsed results file, or a ReportError saying why not."""
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ReportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a results file: expected a JSON object")
    return data


def _check_outputs(results: Path, outputs: Iterable[Path | None]) -> None:
    """Refuse an output that would overwrite the results file or another output."""
    seen = {results.resolve()}
    for output in outputs:
        if output is None:
            continue
        if output.resolve() in seen:
            raise ReportError(f"{output} would overwrite the results file or another output")
        seen.add(output.resolve())


def _write(path: Path, write: Callable[[TextIO], object]) -> None:
    """write_atomically, with a write error turned into a ReportError naming the file."""
    try:
        write_atomically(path, write)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


def report_command(args: argparse.Namespace) -> int:
    """`main.py report`: read RESULTS.json, write the HTML (and the CSV with --csv), print
    their paths; 2 on any user error."""
    output: Path = args.output or default_output(args.results)
    csv_path: Path | None = args.csv
    try:
        _check_outputs(args.results, [output, csv_path])
        results = load_results(args.results)
        stats = collect_rows(results.get("results"))
        page = render_page(results, stats, source=args.results.name)
        _write(output, lambda out: out.write(page))
        if csv_path is not None:
            _write(csv_path, lambda out: write_csv(out, stats.failed))
    except ReportError as exc:
        return _fail(str(exc))
    sys.stdout.write(f"{output}\n")
    if csv_path is not None:
        sys.stdout.write(f"{csv_path}\n")
    return EXIT_OK


def _fail(message: str) -> int:
    """One `error: ...` line on stderr, whatever the message holds."""
    sys.stderr.write("error: " + " ".join(message.splitlines()) + "\n")
    return EXIT_CONFIG
