"""The benchmark's output: console and Markdown tables, the chart, summary.json and summary.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_DIR = ROOT / "docs" / "bench"


def one_line(r: dict[str, Any]) -> str:
    busy = r.get("busy_core_share")
    return (
        f"{r['users_per_second']:,.1f} users/s over {r['sync_seconds']}s "
        f"(ceiling {r['ceiling']:,.0f}/s, efficiency {r['efficiency']:.3f}; "
        f"wall {r['job_duration_seconds']}s, {r['efficiency_wall']:.3f}), "
        f"CPU {r['cpu_seconds_per_1000_users']:.3f}s/1k users, RSS {r['peak_rss_mb']} MB, "
        f"{r['requests']:,} requests, {r['status_429']} x 429, lost {r['lost']}, "
        f"duplicated {r['duplicated']}, exit {r['exit_code']}; "
        f"sandbox CPU {r.get('sandbox_cpu_share', 0):.0%} of a core"
        + (f", busy loop got {busy:.0%} of a core" if busy is not None else "")
        + f"; others {r.get('others_cores', 0):.2f} cores"
    )


def capacity_line(r: dict[str, Any]) -> str:
    return (
        f"{r['load']}: {r['users']:,} users + events in batches of {r['batch_size']:,}: "
        f"{r['users_per_second']:,.0f} users/s (ceiling {r['ceiling']:,.0f}/s, "
        f"efficiency {r['efficiency']:.3f}), sandbox CPU {r['sandbox_cpu_share']:.0%} of a "
        f"core ({r['sandbox_cpu_seconds_per_1000_users']:.3f}s per 1k users), answers in "
        f"{r['answer_seconds_median']}s median / {r['answer_seconds_max']}s max, "
        f"machine busy {r.get('machine_busy_cores', 0):.2f} cores (all processes), "
        f"lost {r['lost']}, duplicated {r['duplicated']}"
    )


COLUMNS = (
    ("run", "name", "{}"),
    ("machine", "load", "{}"),
    ("users", "users", "{:,}"),
    ("conc/batch", "shape", "{}"),
    ("users/s", "users_per_second", "{:,.1f}"),
    ("ceiling/s", "ceiling_text", "{}"),
    ("eff", "efficiency", "{:.3f}"),
    ("eff vs limit", "efficiency_vs_rate_limit", "{:.3f}"),
    ("sync s", "sync_seconds", "{:.2f}"),
    ("wall s", "job_duration_seconds", "{:.2f}"),
    ("eff wall", "efficiency_wall", "{:.3f}"),
    ("ceiling s", "ceiling_seconds", "{:.2f}"),
    ("process s", "process_wall_seconds", "{:.2f}"),
    ("start s", "start_seconds", "{:.2f}"),
    ("end s", "end_seconds", "{:.2f}"),
    ("CPU s/1k", "cpu_seconds_per_1000_users", "{:.3f}"),
    ("CPU s/1k, each run", "cpu_each", "{}"),
    ("users/s, each run", "users_each", "{}"),
    ("RSS MB", "peak_rss_mb", "{:.1f}"),
    ("sandbox CPU", "sandbox_cpu_share", "{:.0%}"),
    ("others", "others_cores", "{:.2f}"),
    ("requests", "requests", "{:,}"),
    ("429s", "status_429", "{:,}"),
    ("lost", "lost", "{}"),
    ("dup", "duplicated", "{}"),
    ("exit", "exit_code", "{}"),
)


def table_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [title for title, _, _ in COLUMNS]
    rows = []
    for r in results:
        shown = dict(r)
        shown["shape"] = (
            f"c={r['concurrency']}" if r["mode"] == "single" else f"b={r['batch_size']}"
        )
        shown["ceiling_text"] = (
            f"{r['latency_ceiling']:,.0f} (latency) / {r['rate_limit_ceiling']:,.0f} (limits)"
            if r["latency_ceiling"]
            else f"{r['rate_limit_ceiling']:,.0f} (limits)"
        )
        shown.setdefault("load", "quiet")  # reports from before the busy runs
        if "cpu_seconds_per_1000_users_each" in r:  # absent from reports before the repeats
            shown["cpu_each"] = " / ".join(f"{v:.3f}" for v in r["cpu_seconds_per_1000_users_each"])
            shown["users_each"] = " / ".join(f"{v:,.0f}" for v in r["users_per_second_each"])
        rows.append(
            ["-" if shown.get(key) is None else fmt.format(shown[key]) for _, key, fmt in COLUMNS]
        )
    return header, rows


def text_table(results: list[dict[str, Any]]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(header, widths, strict=True))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_explain(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no plan)"
    keys = list(rows[0])
    cells = [[str(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(keys, *cells, strict=True)]
    out = ["  " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)).rstrip()]
    out += [
        "  " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(out)


def chart(results: list[dict[str, Any]], rss: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if rss else 1
    width = max(5.2, 1.1 * len(results))
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(width + 5.2 * (panels - 1), 4.2),
        dpi=100,
        squeeze=False,
        gridspec_kw={"width_ratios": [width, 5.2][:panels]},
    )
    ax = axes[0][0]
    names = [f"{bar_label(r)}\n{r['users']:,} users\n{r.get('load', 'quiet')}" for r in results]
    values = [r["users_per_second"] for r in results]
    colours = [
        "#9aa5b1" if r["name"] == "baseline" else "#3b82f6" if r["mode"] == "single" else "#10b981"
        for r in results
    ]
    bars = ax.bar(names, values, color=colours)
    for bar, r in zip(bars, results, strict=True):
        if r.get("load") == "busy":
            bar.set_hatch("//")
            bar.set_alpha(0.6)
        x0, width = bar.get_x(), bar.get_width()
        marks = [(r["rate_limit_ceiling"], "rate-limit ceiling", "--")]
        if r["latency_ceiling"]:
            marks.append((r["latency_ceiling"], "latency ceiling (1 / 2 x latency)", ":"))
        for value, label, style in marks:
            ax.hlines(
                value, x0 - 0.06, x0 + width + 0.06, colors="#dc2626", linestyles=style, label=label
            )
        ax.annotate(
            f"{r['users_per_second']:,.0f}/s\n{r['efficiency']:.0%} of ceiling",
            # Above the bar, or above its ceiling line when the bar stops short of it.
            (x0 + width / 2, max(r["users_per_second"], r["ceiling"])),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    ax.set_yscale("log")
    ax.set_ylim(1, max(r["rate_limit_ceiling"] for r in results) * 8)
    ax.set_ylabel("users per second (log)")
    ax.set_title("Throughput by mode, quiet and one core busy (red: ceiling)", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    if rss:
        ax2 = axes[0][1]
        sizes = [r["users"] for r in rss]
        ax2.plot(sizes, [r["peak_rss_mb"] for r in rss], marker="o", color="#10b981")
        ax2.axhline(150, color="#dc2626", linestyle="--", linewidth=1)
        ax2.set_xscale("log")
        ax2.set_ylim(0, 170)
        ax2.set_xlabel("rows (bulk mode)")
        ax2.set_ylabel("peak RSS of main.py, MB")
        ax2.set_title("Memory by size (red: 150 MB target)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def bar_label(r: dict[str, Any]) -> str:
    if r["name"] == "bulk-v30":
        return f"bulk, 30 views\nbatch {r['batch_size']:,}"
    if r["mode"] == "bulk":
        return f"bulk\nbatch {r['batch_size']:,}"
    if r["name"] == "baseline":
        return "baseline\nc=1"
    default = " (default)" if r["name"] == "single" else ""
    return f"single\nc={r['concurrency']}{default}"


def write_outputs(report: dict[str, Any], docs: bool, save: bool = True) -> None:
    """Print the tables; save the full report (unless re-rendering one) and the summary."""
    runs, rss = report.get("runs", []), report.get("rss_series", [])
    print()
    if runs:
        print(text_table(runs))
        print(
            "\nusers/s and eff are over the sync (first API request to last answer); "
            "eff = ceiling time / sync time, eff wall = ceiling time / the job's whole run "
            "(incl. Query 2).\nprocess s: from starting main.py to its exit, against ceiling s, "
            "the time the rate limits allow; start s: from starting it to its first request; "
            "end s: from the last answer to its exit.\nThe baseline's ceiling is latency-bound: "
            "1 / (2 x latency); "
            "eff vs limit compares it with the rate-limit ceiling.\nbusy: another process "
            "kept one core busy during the run. sandbox CPU: its share of one core meanwhile.\n"
            "others: cores used meanwhile by processes the bench did not start (a shared "
            "machine is only as quiet as this says).\nA row is the run with the median CPU "
            "per user of those on the same machine; the each-run columns give all of them."
        )
    if report.get("sandbox_capacity"):
        print("\nsandbox capacity (one process, bulk traffic sent without the job):")
        for r in report["sandbox_capacity"]:
            print("  " + capacity_line(r))
    if rss:
        print("\nmemory series (bulk mode):")
        for r in rss:
            print(
                f"  {r['users']:>9,} rows: peak RSS {r['peak_rss_mb']:6.1f} MB, "
                f"{r['users_per_second']:,.0f} users/s, eff {r['efficiency']:.3f}, "
                f"lost {r['lost']}, duplicated {r['duplicated']}"
            )
    for entry in report.get("profiles") or []:
        print(f"profile of {entry['name']} ({entry['load']}): {entry['profile']}")
    print(f"\nbench wall time {report['bench_wall_seconds']}s")
    if save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        full = RESULTS_DIR / f"bench-{stamp}.json"
        full.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results: {full.relative_to(ROOT)}")
    out_dir = DOCS_DIR if docs else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    if runs:
        chart(runs, rss, out_dir / "users_per_second.png")
    (out_dir / "summary.json").write_text(
        json.dumps(compact(report), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "summary.md").write_text(summary_markdown(report), encoding="utf-8")
    print(f"summary and chart: {out_dir.relative_to(ROOT)}/")


SUMMARY_KEYS = (
    "name",
    "load",
    "mode",
    "users",
    "concurrency",
    "batch_size",
    "events_batch_size",
    "users_per_second",
    "rate_limit_ceiling",
    "latency_ceiling",
    "efficiency",
    "efficiency_vs_rate_limit",
    "sync_seconds",
    "job_duration_seconds",
    "efficiency_wall",
    "ceiling_seconds",
    "process_wall_seconds",
    "start_seconds",
    "end_seconds",
    "cpu_seconds_per_1000_users",
    "repeats",
    "cpu_seconds_per_1000_users_each",
    "users_per_second_each",
    "peak_rss_mb",
    "requests",
    "status_429",
    "lost",
    "duplicated",
    "exit_code",
    "sandbox_cpu_share",
    "busy_core_share",
    "others_cores",
)
CAPACITY_KEYS = (
    "load",
    "users",
    "batch_size",
    "ceiling",
    "users_per_second",
    "efficiency",
    "sandbox_cpu_share",
    "sandbox_cpu_seconds_per_1000_users",
    "answer_seconds_median",
    "answer_seconds_max",
    "machine_busy_cores",
    "statuses",
    "lost",
    "duplicated",
    "busy_core_share",
)


def compact(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"environment": report.get("environment")}
    out["runs"] = [{k: r.get(k) for k in SUMMARY_KEYS} for r in report.get("runs", [])]
    out["rss_series"] = [
        {k: r.get(k) for k in ("users", "peak_rss_mb", "users_per_second", "efficiency", "lost")}
        | {"duplicated": r.get("duplicated")}
        for r in report.get("rss_series", [])
    ]
    if "sandbox_capacity" in report:
        out["sandbox_capacity"] = [
            {k: r.get(k) for k in CAPACITY_KEYS} for r in report["sandbox_capacity"]
        ]
    if "query2" in report:
        out["query2"] = report["query2"]
    out["bench_wall_seconds"] = report.get("bench_wall_seconds")
    return out


def summary_markdown(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    lines = [
        "# Benchmark summary",
        "",
        f"{env.get('date')}: {env.get('cpus')} CPUs ({env.get('cpu_model')}), Python "
        f"{env.get('python')}, MariaDB {env.get('mariadb')}, sandbox latency "
        f"{env.get('latency_ms'):g} ms, Iterable's published rate limits in the sandbox and "
        "in the job.",
        "",
    ]
    if report.get("runs"):
        lines += [markdown_table(report["runs"]), ""]
        lines.append(
            "users/s and eff: over the sync, first API request to last answer; eff = ceiling "
            "time / measured time. eff wall: over the job's whole run, Query 2 included. The "
            "baseline (one user at a time) is bound by latency, 1 / (2 x latency); eff vs limit "
            "compares every run with the rate-limit ceiling. Each mode runs several times on "
            "each machine, in turn: a row is the run with the median CPU per user, and the "
            "each-run columns give all of them (this machine's CPU figures vary by 10-20 % "
            "between runs of the same code). A run of only a few batches can "
            "show slightly more than 1: n paced requests span n - 1 intervals. CPU and RSS: "
            "main.py's own (wait4 rusage). lost/dup: checked against the sandbox's store. "
            "machine busy: another process kept one core busy for the whole run. sandbox CPU: "
            "the sandbox process's share of one core while the job ran. others: cores used "
            "meanwhile by processes the bench did not start (other people's work on a shared "
            "machine)."
        )
        lines.append("")
    if report.get("sandbox_capacity"):
        lines += [
            "Sandbox capacity: one sandbox process, users/bulkUpdate and events/trackBulk "
            "bodies prepared in advance and sent without the job at 5 requests/s each:",
            "",
            "| machine | users | batch | users/s | ceiling/s | eff | sandbox CPU | "
            "CPU s/1k users | answer s median / max | all busy cores | lost | dup |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['load']} | {r['users']:,} | {r['batch_size']:,} | "
            f"{r['users_per_second']:,.0f} | {r['ceiling']:,.0f} | {r['efficiency']:.3f} | "
            f"{r['sandbox_cpu_share']:.0%} | {r['sandbox_cpu_seconds_per_1000_users']:.3f} | "
            f"{r['answer_seconds_median']} / {r['answer_seconds_max']} | "
            f"{r.get('machine_busy_cores', 0):.2f} | {r['lost']} | {r['duplicated']} |"
            for r in report["sandbox_capacity"]
        ]
        lines.append("")
    if report.get("rss_series"):
        lines += [
            "| rows (bulk) | peak RSS MB | users/s | eff | lost | dup |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['users']:,} | {r['peak_rss_mb']:.1f} | {r['users_per_second']:,.0f} | "
            f"{r['efficiency']:.3f} | {r['lost']} | {r['duplicated']} |"
            for r in report["rss_series"]
        ]
        lines.append("")
    if isinstance(report.get("query2"), dict):  # reports from before both forms were timed
        q = report["query2"]
        lines += [
            f"Query 2 on {q['customers_in_db']:,} customers / {q['page_views_in_db']:,} page "
            f"views ({q['qualifying_rows']:,} rows): COUNT(*) {q['count_seconds_median']} s, "
            f"streamed {q['stream_seconds_median']} s (median of 3).",
            "",
            "```",
            format_explain(q["explain"]),
            "```",
            "",
        ]
    elif report.get("query2"):
        lines += [
            "Query 2, both forms (the seed's `query2`, the job's `query2_per_customer`), its "
            "rows streamed to the job's reader:",
            "",
            "| query | customers | page views | rows | first row s | all rows s | each run s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{q['query']}` | {q['customers_in_db']:,} | {q['page_views_in_db']:,} | "
            f"{q['qualifying_rows']:,} | {q['first_row_seconds_median']} | "
            f"{q['seconds_median']} | {' / '.join(map(str, q['seconds_each']))} |"
            for q in report["query2"]
        ]
        lines.append("")
        for q in report["query2"]:
            lines += [
                f"`{q['query']}` on {q['page_views_in_db']:,} page views:",
                "",
                "```",
                format_explain(q["explain"]),
                "```",
                "",
            ]
    lines.append(f"Bench wall time: {report.get('bench_wall_seconds')} s.")
    return "\n".join(lines) + "\n"
