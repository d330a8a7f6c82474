"""mlpipe/reports/cards.py, plots.py and reports.py: the summary JSON and the self-contained HTML card."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlpipe.quality import drift, gate
from mlpipe.reports import cards, plots, sections


def svgs(html):
    found = re.findall(r"<svg.*?</svg>", html, re.S)
    for svg in found:
        ET.fromstring(svg)  # well-formed, or this raises
    return found


def finished(card, status="FINISHED", error=None, metrics=None):
    data = cards.summary(card, run_id="r1", experiment_id="0", status=status, error=error, metrics=metrics or {})
    return data, cards.render(data, card.sections)


def test_summary_counts_checks_and_names_failures():
    card = cards.Card("qa")
    card.add_checks([gate.Check("a", True, 1.0, ">= 0"), gate.Check("b", False, 0.1, ">= 0.5", "too low")])
    data, html = finished(card, metrics={"z": 1.0, "a": 2.0})
    assert data["checks_passed"] == 1 and data["checks_failed"] == ["b"]
    assert list(data["metrics"]) == ["a", "z"]
    assert html.count('class="badge fail"') == 1 and html.count('class="badge pass"') == 1


def test_a_failed_card_shows_the_error_escaped():
    data, html = finished(cards.Card("ingest"), status="FAILED", error="DataError: <x> is 'bad'")
    assert data["status"] == "FAILED"
    assert "DataError: &lt;x&gt; is &#x27;bad&#x27;" in html and "<x>" not in html


def test_cards_are_self_contained():
    card = cards.Card("qa")
    card.add_plot("bars", plots.bars(["a", "b"], [1.0, 2.0], "t"))
    card.add_image("png", b"\x89PNG\r\n\x1a\nfake")
    _, html = finished(card)
    assert "data:image/png;base64," in html
    # nothing fetched from elsewhere: no external scripts, stylesheets or images
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert len(svgs(html)) == 1


def test_index_holds_each_card_and_marks_missing_ones():
    card = cards.Card("ingest")
    card.add_table("class balance", ("class", "rows"), [("a", 3)])
    _, page = finished(card)
    html = cards.render_index("pipeline p", [
        {"step": "ingest", "run_id": "r1", "status": "FINISHED", "outcome": "cached", "href": "01-ingest.html"},
        {"step": "qa", "run_id": "r2", "status": "FAILED", "outcome": "ran", "href": None, "summary": "boom"}],
        {"01-ingest.html": page})
    assert '<a href="#01-ingest">01-ingest.html</a>' in html and "no card" in html and "boom" in html
    assert cards.card_body(page) in html and "<td>a</td><td>3</td>" in html
    assert html.count("<body>") == 1 and html.count("</html>") == 1


def test_index_links_stay_on_the_page():
    """MLflow's viewer loads a page from a blob: URL in a sandboxed iframe: a link to another file
    cannot resolve there and blanks the viewer. Every link must be an anchor of the page itself."""
    pages = {f"0{i}-{s}.html": finished(cards.Card(s))[1] for i, s in enumerate(("ingest", "train"), 1)}
    html = cards.render_index("pipeline p", [
        {"step": href[3:-5], "run_id": "r", "status": "FINISHED", "outcome": "ran", "href": href} for href in pages]
        + [{"step": "qa", "run_id": "r", "status": "FINISHED", "outcome": "ran", "href": "03-qa.html"}], pages)
    links = re.findall(r'href="([^"]*)"', html)
    ids = set(re.findall(r'id="([^"]*)"', html))
    assert links and all(link.startswith("#") and link[1:] in ids for link in links), (links, ids)
    assert "#03-qa" not in links  # a card that could not be copied is not linked


def test_plots_are_valid_svg_and_scale_bars_to_values():
    svg = plots.bars(["x", "y"], [1.0, 4.0], "t", limit=2.0, width=300)
    widths = [float(w) for w in re.findall(r'<rect x="150" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[1] == pytest.approx(4 * widths[0])
    assert "stroke-dasharray" in svg  # the limit line
    for svg in (plots.paired_bars(["a"], [0.5], [0.25], ("r", "b"), "t"),
                plots.heatmap([[3, 1], [0, 5]], ["a", "b"], "cm"),
                plots.scatter([1, 2, 3], [0.1, -0.2, 0.0], "r", "x", "y", hline=0.0),
                plots.bars(["nan"], [float("nan")], "t")):
        ET.fromstring(svg)


def test_heatmap_writes_each_count():
    svg = plots.heatmap([[7, 1], [2, 9]], ["a", "b"], "cm")
    assert [int(t) for t in re.findall(r'text-anchor="middle" fill="#[0f]+">(\d+)<', svg)] == [7, 1, 2, 9]


def test_feature_importances_come_from_the_fitted_pipeline():
    X, y = load_wine(return_X_y=True, as_frame=True)
    forest = Pipeline([("p", StandardScaler()), ("m", RandomForestClassifier(10, random_state=0))]).fit(X, y)
    names, values, kind = sections.feature_importances(forest)
    assert set(names) == set(X.columns) and values == sorted(values, reverse=True) and kind == "impurity importance"
    ridge = Pipeline([("p", StandardScaler()), ("m", Ridge())]).fit(X, y)
    assert sections.feature_importances(ridge)[2] == "|coefficient|"


def test_step_sections():
    frame = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "t": ["x", "y", "x", "x"]})
    card = cards.Card("ingest")
    failures = pd.DataFrame({"column": ["a"], "check": ["not_nullable"], "failure_case": [None], "index": [1]})
    sections.ingest(card, frame, "t", "classification", failures, "inferred")
    assert [t for t, _ in card.sections] == ["validation failures by column and check (all cases: validation/failures.csv)",
                                             "class balance", "missing values"]
    assert card.checks[0]["passed"] is False and card.checks[0]["value"] == 1.0

    card = cards.Card("qa")
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(size=500)})
    found = drift.compare(drift.reference_profile(ref, ["x"], [], 10), ref, ref + 3, 0.01, 0.2)
    report = {"baseline": {"metric": "r2", "model_value": 0.5, "baseline_value": 0.0, "lift": 0.5,
                           "lift_lower_bound": 0.4, "p_value": 1e-5, "test": "paired t", "rows": 3},
              "classes": None, "drift": {"batch": drift.summary(found, 0.01, 0.2)}}
    sections.qa(card, report, pd.Series([1.0, 2.0, 3.0]), [1.1, 1.9, 3.2], {})
    titles = [t for t, _ in card.sections]
    assert "residuals" in titles and "drift: batch" in titles and "drift: batch, x" in titles
    _, html = finished(card)
    assert len(svgs(html)) == 3


def test_the_drift_chart_says_the_whole_rule_a_bar_over_the_line_alone_is_not_red():
    from mlpipe.reports import sections

    report = {"max_psi": 0.2, "alpha_per_column": 0.05 / 13}
    assert sections.drift_legend("test", report) == "PSI, test vs training. Red = drifted: PSI > 0.2 (line) and test p < 0.0038"
