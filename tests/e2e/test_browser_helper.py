"""The headless-Chromium helper (browser.py) on a small report-like page: a table (one row added
by a script) and an inline base64 PNG chart made with matplotlib. Each Chromium call takes about
1 s here; the module runs in a few seconds. Skipped, with the reason, where Chromium cannot be had."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from browser import blank_fraction, dump_dom, screenshot, unavailable

ROWS = [("train", "0.912"), ("validation", "0.874"), ("test", "0.861")]


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def _chart_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.bar([name for name, _ in ROWS], [float(value) for _, value in ROWS], color="tab:blue")
    ax.set_ylabel("accuracy")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The last row is added by a script, so the DOM check also proves scripts ran; the script
    records the decoded chart's width, so it proves the data: URI image loaded."""
    chart = base64.b64encode(_chart_png()).decode()
    static = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in ROWS[:-1])
    name, value = ROWS[-1]
    html = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Report</title></head>
<body>
<h1>Model report</h1>
<table id="metrics"><thead><tr><th>split</th><th>accuracy</th></tr></thead><tbody>{static}</tbody></table>
<img id="chart" alt="accuracy by split" src="data:image/png;base64,{chart}">
<script>
  document.querySelector("#metrics tbody").insertAdjacentHTML(
    "beforeend", "<tr class='scripted'><td>{name}</td><td>{value}</td></tr>");
  window.addEventListener("load", () => {{
    document.body.dataset.chartWidth = document.getElementById("chart").naturalWidth;
  }});
</script>
</body></html>
"""
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html)
    return path


def test_dump_dom_has_the_table_rows(report):
    dom = dump_dom(report)
    for name, value in ROWS:
        assert f"<td>{name}</td><td>{value}</td>" in dom, dom[:2000]
    assert "class=\"scripted\"" in dom
    assert 'data-chart-width="600"' in dom, "the inline PNG chart did not decode"


def test_screenshot_of_the_report_is_not_blank(report, tmp_path):
    png = screenshot(report, tmp_path / "report.png")
    fraction = blank_fraction(png)
    assert fraction < 0.98, f"report screenshot is {fraction:.4f} one colour"


def test_screenshot_of_a_blank_page_is_blank(tmp_path):
    """The check above can fail: an empty page is one colour."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    fraction = blank_fraction(screenshot(blank, tmp_path / "blank.png", size=(800, 600)))
    assert fraction > 0.99, f"blank screenshot is only {fraction:.4f} one colour"
