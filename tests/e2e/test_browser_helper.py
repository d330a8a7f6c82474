"""The headless-Chromium helper (browser.py) on a small report-like page: a table (one row added
by a script) and an inline base64 PNG chart made with matplotlib, as a file and over HTTP; and
its DevTools tab on a page that shows HTML the way MLflow's artifact viewer does (a sandboxed
iframe loaded from a blob: URL). Each Chromium call takes about 1 s here; the module runs in a few
seconds. Skipped, with the reason, where Chromium cannot be had."""

from __future__ import annotations

import base64
import functools
import io
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from browser import blank_fraction, dump_dom, screenshot, tab, unavailable

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


@pytest.fixture(scope="module")
def site(report) -> str:
    """The report's folder over HTTP on 127.0.0.1 (a thread of this process, shut down afterwards)."""
    handler = functools.partial(_QuietHandler, directory=str(report.parent))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join(10)


AUTHORIZATION = "Basic " + base64.b64encode(b"user:secret").decode()


class _QuietHandler(SimpleHTTPRequestHandler):
    """Files of the folder; under /private/ only with AUTHORIZATION (as a server with basic auth)."""

    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            if self.headers.get("Authorization") != AUTHORIZATION:
                self.send_error(401)
                return
            self.path = self.path.removeprefix("/private")
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def test_dump_dom_and_screenshot_take_an_http_url(site, tmp_path):
    dom = dump_dom(f"{site}/report.html")
    assert "<td>train</td><td>0.912</td>" in dom and 'data-chart-width="600"' in dom, dom[:2000]
    assert blank_fraction(screenshot(f"{site}/report.html", tmp_path / "page.png")) < 0.98


# MLflow's ShowArtifactHtmlView in a few lines: the page fetches the HTML, turns it into a blob:
# URL and shows it in an iframe with sandbox="allow-scripts".
VIEWER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><h1>viewer</h1>
<script>
  fetch("card.html").then(response => response.text()).then(html => {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-scripts";
    frame.src = URL.createObjectURL(new Blob([html], {type: "text/html"}));
    document.body.appendChild(frame);
  });
</script></body></html>"""
CARD = """<!DOCTYPE html><html><body><h1>inner card</h1>
<a id="here" href="#part">in-page</a> <a id="away" href="report.html">the file beside it</a>
<p style="margin-top:3000px" id="part">the part</p></body></html>"""


@pytest.fixture(scope="module")
def viewer(site, report) -> str:
    (report.parent / "viewer.html").write_text(VIEWER)
    (report.parent / "card.html").write_text(CARD)
    return f"{site}/viewer.html"


def test_a_tab_reads_the_sandboxed_blob_iframe_that_dump_dom_cannot_see(viewer):
    with tab(viewer) as page:
        assert page.wait_for("document.querySelector('h1')?.textContent", frame="blob:") == "inner card"
        assert page.evaluate("document.querySelector('h1').textContent") == "viewer"
        (frame,) = page.frames()
        assert frame.startswith(viewer.rsplit("/", 1)[0].replace("http://", "blob:http://"))
    dom = dump_dom(viewer, budget_ms=5000)
    assert '<iframe sandbox="allow-scripts" src="blob:' in dom and "inner card" not in dom, dom


def test_in_that_iframe_a_link_to_a_file_blanks_it_and_an_anchor_link_does_nothing(viewer):
    """Why the report cards' index holds every card and scrolls to its anchors by script: a link
    to a file beside the page cannot resolve against a blob: URL (Chromium shows
    about:blank#blocked in the frame), and an #anchor link is not followed in a sandboxed blob:
    frame (it is in a plain one); scrolling by script works."""
    with tab(viewer) as page:
        page.wait_for("!!document.getElementById('here')", frame="blob:")
        page.evaluate("document.getElementById('here').click()", frame="blob:")
        time.sleep(0.5)
        assert page.evaluate("[location.hash, window.scrollY]", frame="blob:") == ["", 0]
        page.evaluate("document.getElementById('part').scrollIntoView()", frame="blob:")
        assert page.evaluate("window.scrollY", frame="blob:") > 0
        page.evaluate("document.getElementById('away').click()", frame="blob:")
        page.wait_for("location.href === 'about:blank#blocked'", frame="about:blank")
        assert page.frames() == ["about:blank#blocked"]


def test_a_tab_sends_the_headers_it_is_given(site):
    with tab(f"{site}/private/report.html", headers={"Authorization": AUTHORIZATION}) as page:
        assert page.wait_for("document.querySelector('h1')?.textContent") == "Model report"
    with tab(f"{site}/private/report.html") as page:
        assert "Error code: 401" in page.wait_for("document.body?.innerText")
