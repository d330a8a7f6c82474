"""Step report cards: a machine-readable summary JSON and a one-page, self-contained HTML card.

A step fills its `Card` (inputs, outputs, checks, plots, tables); the harness adds the run's
status, error and metrics and logs both files to the run, also when the step fails. The driver
copies every step's card into the parent run next to an index page (`cards/index.html`).
Everything is inline (CSS, SVG charts, PNGs as data URIs): the files open offline.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable, Sequence


STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:22px 0 6px;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-size:12px;font-weight:bold}
.FINISHED,.pass{background:#2e7d32}.FAILED,.fail{background:#c62828}.cached,.other{background:#757575}
.error{border:1px solid #c62828;background:#fdecea;padding:8px;margin:10px 0;white-space:pre-wrap}
table{border-collapse:collapse;font-size:12px;margin:4px 0} td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f5f5f5} .muted{color:#777;font-size:12px} .plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0} img{max-width:460px}
"""


@dataclass
class Card:
    """What one step reports; filled by the step, finished and logged by the harness."""

    step: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add_checks(self, checks: Iterable[Any]) -> None:
        """gate.Check objects (or dicts with name, passed, value, expected, note)."""
        for check in checks:
            self.checks.append(check.as_dict() if hasattr(check, "as_dict") else dict(check))

    def add_plot(self, title: str, svg: str) -> None:
        self.sections.append((title, f"<figure>{svg}</figure>"))

    def add_image(self, title: str, png: bytes) -> None:
        data = base64.b64encode(png).decode()
        self.sections.append((title, f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}"/>'
                                     f"</figure>"))

    def add_table(self, title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.sections.append((title, table(header, rows)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, default=str)[:300])
    return escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary(card: Card, *, run_id: str, experiment_id: str, status: str, error: str | None,
            metrics: dict[str, float]) -> dict[str, Any]:
    """The machine-readable card: what went in and out, each check, the numbers."""
    failed = [c["name"] for c in card.checks if not c.get("passed")]
    return {"step": card.step, "run_id": run_id, "experiment_id": experiment_id, "status": status,
            "error": error, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": card.inputs, "outputs": card.outputs, "checks": card.checks,
            "checks_passed": len(card.checks) - len(failed), "checks_failed": failed,
            "metrics": {k: metrics[k] for k in sorted(metrics)}, "facts": card.facts,
            "sections": [title for title, _ in card.sections]}


def _check_rows(checks: list[dict[str, Any]]) -> str:
    rows = []
    for c in checks:
        verdict = '<span class="badge pass">PASS</span>' if c.get("passed") else '<span class="badge fail">FAIL</span>'
        rows.append(f"<tr><td>{verdict}</td><td>{escape(str(c.get('name')))}</td><td>{_cell(c.get('value'))}</td>"
                    f"<td>{escape(str(c.get('expected', '')))}</td><td>{escape(str(c.get('note', '')))}</td></tr>")
    return ("<table><tr><th></th><th>check</th><th>value</th><th>expected</th><th>note</th></tr>"
            + "".join(rows) + "</table>")


def render(data: dict[str, Any], sections: list[tuple[str, str]]) -> str:
    """One self-contained HTML page for a step's summary and its sections."""
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(data['step'])} card</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(data['step'])} <span class=\"badge {escape(data['status'])}\">{escape(data['status'])}"
             f"</span></h1>",
             f"<div class=\"muted\">run {escape(data['run_id'])} · experiment {escape(str(data['experiment_id']))}"
             f" · written {escape(data['written_at'])}</div>"]
    if data.get("error"):
        parts.append(f"<div class=\"error\">{escape(data['error'])}</div>")
    for title, key in (("Inputs", "inputs"), ("Outputs", "outputs")):
        if data[key]:
            parts.append(f"<h2>{title}</h2>" + table(("name", "value"), data[key].items()))
    if data["checks"]:
        failed = len(data["checks_failed"])
        parts.append(f"<h2>Checks: {data['checks_passed']} passed, {failed} failed</h2>" + _check_rows(data["checks"]))
    if sections:
        parts.append("<div class=\"plots\">" + "".join(
            f"<section><h2>{escape(title)}</h2>{html}</section>" for title, html in sections) + "</div>")
    if data["metrics"]:
        parts.append("<h2>Metrics</h2>" + table(("metric", "value"), data["metrics"].items()))
    parts.append("</body></html>")
    return "".join(parts)


def render_index(title: str, rows: list[dict[str, Any]]) -> str:
    """The parent run's page: one line per step with a link to its card (a file beside it)."""
    lines = []
    for r in rows:
        link = f"<a href=\"{escape(r['href'])}\">card</a>" if r.get("href") else "no card"
        lines.append(f"<tr><td>{escape(r['step'])}</td><td><span class=\"badge {escape(r['status'])}\">"
                     f"{escape(r['status'])}</span></td><td>{escape(r['outcome'])}</td><td>{escape(r['run_id'])}</td>"
                     f"<td>{link}</td><td>{escape(r.get('summary') or '')}</td></tr>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            "<table><tr><th>step</th><th>status</th><th>outcome</th><th>run</th><th>card</th><th>result</th></tr>"
            + "".join(lines) + "</table></body></html>")
