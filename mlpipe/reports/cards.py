"""Step report cards: a machine-readable summary JSON and a one-page, self-contained HTML card.

A step fills its `Card` (inputs, outputs, checks, plots, tables); the harness adds the run's
status, error and metrics and logs both files to the run, also when the step fails. The driver
copies every step's card into the parent run next to an index page (`cards/index.html`).
Everything is inline (CSS, SVG charts, PNGs as data URIs): the files open offline.

A page links only within itself: MLflow's artifact viewer shows HTML in a sandboxed iframe
loaded from a `blob:` URL, where a link to another file cannot resolve (the viewer turns blank:
`about:blank#blocked`) and following `#anchor` does nothing. So the index holds every card, and
its `#anchor` links also scroll by script (`SCROLL_TO_ANCHOR`).
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
figure{margin:0} img{max-width:460px} section.card{border-top:3px solid #ddd;margin-top:28px;padding-top:4px}
"""


# Scrolls to the target of an in-page link, which MLflow's viewer does not do (see above); a
# browser that follows the link itself then scrolls to the same place and keeps the #anchor.
SCROLL_TO_ANCHOR = """<script>
document.addEventListener("click", event => {
  const link = event.target.closest('a[href^="#"]');
  const target = link && document.getElementById(link.getAttribute("href").slice(1));
  if (target) target.scrollIntoView();
});
</script>"""


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


def card_body(html: str) -> str | None:
    """What is between `<body>` and `</body>` of a page made by `render` (None for another page)."""
    start, end = html.find("<body>"), html.rfind("</body>")
    return html[start + len("<body>"):end] if 0 <= start < end else None


def render_index(title: str, rows: list[dict[str, Any]], pages: dict[str, str] | None = None) -> str:
    """The parent run's page: one line per step, then each step's card (`pages`: the card file
    beside the index, its `href`, -> its HTML), each line linking to its card on this page."""
    pages = pages or {}
    lines, bodies = [], []
    for r in rows:
        body = card_body(pages.get(r.get("href") or "", ""))
        anchor = escape(r["href"].removesuffix(".html")) if body is not None else None
        link = f"<a href=\"#{anchor}\">{escape(r['href'])}</a>" if anchor else "no card"
        lines.append(f"<tr><td>{escape(r['step'])}</td><td><span class=\"badge {escape(r['status'])}\">"
                     f"{escape(r['status'])}</span></td><td>{escape(r['outcome'])}</td><td>{escape(r['run_id'])}</td>"
                     f"<td>{link}</td><td>{escape(r.get('summary') or '')}</td></tr>")
        if anchor:
            bodies.append(f"<section id=\"{anchor}\" class=\"card\">{body}"
                          "<p class=\"muted\"><a href=\"#index\">back to the steps</a></p></section>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1 id=\"index\">{escape(title)}</h1>"
            "<table><tr><th>step</th><th>status</th><th>outcome</th><th>run</th><th>card</th><th>result</th></tr>"
            + "".join(lines) + "</table>"
            "<p class=\"muted\">Each card is below, and also a file beside this page.</p>"
            + "".join(bodies) + SCROLL_TO_ANCHOR + "</body></html>")
