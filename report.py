"""`python main.py report RESULTS.json`: one self-contained HTML page summarising a run.

Rendering (`render_report`) is pure and separate from file I/O (`report_command`). Every
piece of text from the results file goes through `_text`, which masks anything that looks
like an email address before escaping it, so the page never holds a full address.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from exit_codes import EXIT_CONFIG, EXIT_OK
from logger_config import mask_email, mask_emails
from results import write_atomically

TEMPLATES = Path(__file__).resolve().parent / "report_templates"
MAX_EXAMPLES = 5
MAX_TEXT = 160  # a long Iterable msg is cut so a table cell stays one or two lines
STEPS = (("user_update", "user update"), ("event_track", "event track"))
NO_REASON = "(no reason)"
DASH = "\u2014"


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


def _fmt_int(value: int) -> str:
    """Thousands separators for counts."""
    return f"{value:,}"


def _plural(count: int, word: str) -> str:
    """`word` or `words` to go with a count."""
    return word if count == 1 else word + "s"


def _percent(part: int, whole: int) -> float:
    """Share in percent, 0 for an empty whole."""
    return 100.0 * part / whole if whole else 0.0


@dataclass
class Example:
    """One failed row, already masked, as shown under its reason."""

    customer_id: str
    email: str
    step: str | None
    status: str | None
    code: str | None
    msg: str | None


@dataclass
class ReasonGroup:
    """How many rows share a reason, with a few examples."""

    count: int = 0
    examples: list[Example] = field(default_factory=list)


@dataclass
class RowStats:
    """What the per-row results add up to; bounded in size however many rows there are."""

    counts: Counter[str] = field(default_factory=Counter)
    failed: dict[str, ReasonGroup] = field(default_factory=dict)
    skipped: dict[str, ReasonGroup] = field(default_factory=dict)
    retried_rows: int = 0
    retried_by_step: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    rows_with_warnings: int = 0
    warning_examples: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Totals:
    """The four headline numbers."""

    total: int
    succeeded: int
    failed: int
    skipped: int


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


def _example(row: Mapping[str, Any]) -> Example:
    """A failed row, masked: the failing step's status, code and msg, else the row's detail."""
    customer = row.get("customer_id")
    email = masked(row.get("email"))
    cid = DASH if customer is None else str(customer)
    for key, label in STEPS:
        step = row.get(key)
        if isinstance(step, dict) and _step_failed(step):
            status = step.get("http_status")
            return Example(
                customer_id=cid,
                email=email,
                step=label,
                status=None if status is None else f"HTTP {status}",
                code=None if step.get("code") is None else str(step.get("code")),
                msg=step.get("msg") or step.get("error") or row.get("detail"),
            )
    return Example(cid, email, None, None, None, row.get("detail"))


def _add_reason(groups: dict[str, ReasonGroup], row: Mapping[str, Any], keep: bool) -> None:
    """Count a row under its reason and keep it as an example while there is room."""
    reason = row.get("reason")
    group = groups.setdefault(str(reason) if reason else NO_REASON, ReasonGroup())
    group.count += 1
    if keep and len(group.examples) < MAX_EXAMPLES:
        group.examples.append(_example(row))


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
        if len(stats.warning_examples) >= MAX_EXAMPLES:
            break
        stats.warning_examples.append((DASH if customer is None else str(customer), str(warning)))


def collect_rows(rows: object) -> RowStats:
    """One pass over the per-row results: counts, reasons with examples, retries, warnings."""
    stats = RowStats()
    if not isinstance(rows, list):
        return stats
    for row in rows:
        if not isinstance(row, dict):
            continue
        status = row.get("status")
        # Same rule as results.Summary: anything neither success nor failed counts as skipped.
        kind = status if status in ("success", "failed") else "skipped"
        stats.counts[kind] += 1
        if kind == "failed":
            _add_reason(stats.failed, row, keep=True)
        elif kind == "skipped":
            _add_reason(stats.skipped, row, keep=False)
        retried = _step_attempts(row)
        if retried:
            stats.retried_rows += 1
            stats.retried_by_step.update(retried)
        _add_warnings(stats, row)
    return stats


def _reasons_from_summary(stats: RowStats, by_reason: object) -> None:
    """Fill reason counts from summary.by_reason when the file has no rows to count."""
    for key, value in _dict(by_reason).items():
        kind, _, reason = str(key).partition(":")
        groups = {"failed": stats.failed, "skipped": stats.skipped}.get(kind)
        if groups is not None:
            groups.setdefault(reason or NO_REASON, ReasonGroup()).count += _count(value)


def totals(summary: Mapping[str, Any], stats: RowStats) -> Totals:
    """Headline counts: the summary's when present, else counted from the rows."""

    def pick(key: str, counted: int) -> int:
        return _count(summary[key]) if _number(summary.get(key)) is not None else counted

    succeeded = pick("succeeded", stats.counts["success"])
    failed = pick("failed", stats.counts["failed"])
    skipped = pick("skipped", stats.counts["skipped"])
    return Totals(pick("total", succeeded + failed + skipped), succeeded, failed, skipped)


def run_status(run: Mapping[str, Any], failed: int) -> tuple[str, str, str | None]:
    """(css class, label, explanation) for the run as a whole, matching main's exit codes."""
    if run.get("aborted"):
        return "aborted", "aborted", f"Run aborted: {run['aborted']}"
    if run.get("stopped_by_signal"):
        return "aborted", "aborted", "Stopped by a signal before every row was done."
    if failed:
        return "failed", "rows failed", None
    return "ok", "ok", None


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


def _header(run: Mapping[str, Any], status: tuple[str, str, str | None]) -> str:
    """Title, status badge and the run's settings."""
    css, label, explanation = status
    badges = f'<span class="badge badge-{css}" id="run-status">{label}</span>'
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
        ("Lookback", DASH if lookback is None else f"{_text(lookback)} days"),
        ("Database", _text(run.get("database"))),
        ("Iterable", _text(run.get("iterable_base_url"))),
    ]
    items = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in meta)
    alert = f'<div class="alert" role="alert">{_text(explanation)}</div>' if explanation else ""
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


def _cards(counts: Totals, rows_read: object) -> str:
    """Total, succeeded, failed and skipped."""
    read = _number(rows_read)
    total_sub = f"{_fmt_int(int(read))} rows read" if read is not None else "rows in this run"
    share = {
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "skipped": counts.skipped,
    }
    cards = [_card("total", "Total", counts.total, total_sub)]
    for kind, value in share.items():
        sub = f"{_percent(value, counts.total):.1f}% of rows"
        cards.append(_card(kind, kind.capitalize(), value, sub))
    return f'<section class="cards">{"".join(cards)}</section>'


def _split_bar(counts: Totals) -> str:
    """A stacked bar of the outcome split, drawn with CSS widths only."""
    parts = [
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("skipped", counts.skipped),
    ]
    whole = sum(value for _, value in parts)
    segments = "".join(
        f'<span class="seg seg-{kind}" style="width:{_percent(value, whole):.2f}%"></span>'
        for kind, value in parts
        if value
    )
    legend = "".join(
        f'<li><span class="swatch seg-{kind}"></span>{kind.capitalize()} '
        f"<strong>{_fmt_int(value)}</strong> "
        f'<span class="muted">({_percent(value, whole):.1f}%)</span></li>'
        for kind, value in parts
    )
    label = ", ".join(f"{value} {kind}" for kind, value in parts)
    return (
        '<section class="panel"><h2>Outcome</h2>'
        f'<div class="bar" role="img" aria-label="{label}">{segments}</div>'
        f'<ul class="legend">{legend}</ul></section>'
    )


def _sorted_groups(groups: Mapping[str, ReasonGroup]) -> list[tuple[str, ReasonGroup]]:
    """Biggest reason first, then by name so the order is stable."""
    return sorted(groups.items(), key=lambda item: (-item[1].count, item[0]))


def _example_item(example: Example) -> str:
    """One example row: id, masked email, and what Iterable said."""
    said = " ".join(
        f"<code>{_text(part)}</code>" for part in (example.status, example.code) if part
    )
    where = f'<span class="step">{_text(example.step)}</span>' if example.step else ""
    msg = f'<span class="msg">{_text(example.msg, MAX_TEXT)}</span>' if example.msg else ""
    return (
        f'<li><span class="cid">#{_text(example.customer_id)}</span>'
        f'<span class="email">{_text(example.email)}</span>{where}{said}{msg}</li>'
    )


def _failures(groups: Mapping[str, ReasonGroup], total: int) -> str:
    """The failures-by-reason table, with up to MAX_EXAMPLES masked rows per reason."""
    if not groups:
        return _panel("Failures by reason", '<p class="empty">No failed rows.</p>', "failures")
    rows = []
    for reason, group in _sorted_groups(groups):
        items = "".join(_example_item(example) for example in group.examples)
        more = group.count - len(group.examples)
        if items and more > 0:
            items += f'<li class="muted">and {_fmt_int(more)} more</li>'
        examples = f'<ul class="examples">{items}</ul>' if items else '<span class="muted">—</span>'
        rows.append(
            f'<tr><td><code class="reason">{_text(reason)}</code></td>'
            f'<td class="num">{_fmt_int(group.count)}</td>'
            f'<td class="num muted">{_percent(group.count, total):.1f}%</td>'
            f"<td>{examples}</td></tr>"
        )
    head = '<tr><th>Reason</th><th class="num">Rows</th><th class="num">Share</th>'
    head += "<th>Examples (customer, email, Iterable response)</th></tr>"
    return _panel("Failures by reason", _table(head, rows, "failures-table"), "failures")


def _skipped(groups: Mapping[str, ReasonGroup], total: int) -> str:
    """The skipped-by-reason table."""
    if not groups:
        return _panel("Skipped by reason", '<p class="empty">No skipped rows.</p>', "skipped")
    rows = [
        f'<tr><td><code class="reason">{_text(reason)}</code></td>'
        f'<td class="num">{_fmt_int(group.count)}</td>'
        f'<td class="num muted">{_percent(group.count, total):.1f}%</td></tr>'
        for reason, group in _sorted_groups(groups)
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
    for key in ("requests", "seconds", "retries"):
        names.update(str(name) for name in _dict(api.get(key)))
    return sorted(names)


def _request_count(api: Mapping[str, Any], endpoint: str) -> int:
    """All requests to an endpoint, whatever their status."""
    return sum(_count(value) for value in _dict(_dict(api.get("requests")).get(endpoint)).values())


def _timing(api: Mapping[str, Any]) -> str:
    """Requests by status, total seconds and average milliseconds per request, per endpoint."""
    endpoints = _endpoints(api)
    if not endpoints:
        return _panel(
            "Timing per endpoint", '<p class="empty">No API calls recorded.</p>', "timing"
        )
    rows = []
    for endpoint in endpoints:
        by_status = _dict(_dict(api.get("requests")).get(endpoint))
        pills = " ".join(_status_pill(str(s), _count(n)) for s, n in sorted(by_status.items()))
        count = _request_count(api, endpoint)
        seconds = _number(_dict(api.get("seconds")).get(endpoint))
        average = f"{seconds / count * 1000:.1f}" if seconds is not None and count else DASH
        rows.append(
            f"<tr><td><code>{_text(endpoint)}</code></td><td>{pills or DASH}</td>"
            f'<td class="num">{_fmt_int(count)}</td>'
            f'<td class="num">{DASH if seconds is None else f"{seconds:.2f}"}</td>'
            f'<td class="num">{average}</td></tr>'
        )
    head = (
        '<tr><th>Endpoint</th><th>Requests by status</th><th class="num">Requests</th>'
        '<th class="num">Total seconds</th><th class="num">Avg ms / request</th></tr>'
    )
    return _panel("Timing per endpoint", _table(head, rows, "timing-table"), "timing")


def _retries(api: Mapping[str, Any], stats: RowStats, total: int) -> str:
    """Retries per endpoint and how many rows needed more than one attempt."""
    retries = _dict(api.get("retries"))
    endpoints = _endpoints(api)
    rows = []
    for endpoint in endpoints:
        count = _count(retries.get(endpoint))
        requests = _request_count(api, endpoint)
        rows.append(
            f'<tr><td><code>{_text(endpoint)}</code></td><td class="num">{_fmt_int(count)}</td>'
            f'<td class="num muted">{_percent(count, requests):.1f}%</td></tr>'
        )
    head = '<tr><th>Endpoint</th><th class="num">Retries</th><th class="num">Of requests</th></tr>'
    table = _table(head, rows, "retries-table") if rows else ""
    steps = ", ".join(
        f"{label}: {_fmt_int(n)}" for label, n in sorted(stats.retried_by_step.items())
    )
    detail = f" ({steps})" if steps else ""
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


def render_report(results: dict[str, Any], source: str | None = None) -> str:
    """The whole HTML page for one results file."""
    run = _dict(results.get("run"))
    summary = _dict(results.get("summary"))
    api = _dict(run.get("api"))
    stats = collect_rows(results.get("results"))
    if not stats.counts:
        _reasons_from_summary(stats, summary.get("by_reason"))
    counts = totals(summary, stats)
    status = run_status(run, counts.failed)
    started = run.get("started_at")
    title = f"Iterable sync · {_fmt_time(started)}" if started else "Iterable sync report"
    body = "".join(
        [
            _header(run, status),
            _cards(counts, run.get("rows_read")),
            _split_bar(counts),
            _failures(stats.failed, counts.total),
            _skipped(stats.skipped, counts.total),
            _timing(api),
            '<div class="pair">',
            _retries(api, stats, counts.total),
            _warnings(stats),
            "</div>",
            _footer(run, source),
        ]
    )
    page = Template(_template("report.html"))
    # The style is inlined so the page is one file that stands alone.
    return page.substitute(title=title, style=_template("report.css"), body=body)


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


def report_command(args: argparse.Namespace) -> int:
    """`main.py report`: read RESULTS.json, write the HTML, print its path; 2 on any user error."""
    output: Path = args.output or default_output(args.results)
    try:
        page = render_report(load_results(args.results), source=args.results.name)
        write_atomically(output, lambda out: out.write(page))
    except ReportError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {output}: {exc.strerror or exc}")
    sys.stdout.write(f"{output}\n")
    return EXIT_OK


def _fail(message: str) -> int:
    """One `error: ...` line on stderr, whatever the message holds."""
    sys.stderr.write("error: " + " ".join(message.splitlines()) + "\n")
    return EXIT_CONFIG
