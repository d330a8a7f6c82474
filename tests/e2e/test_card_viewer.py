"""Report cards in MLflow's UI: a real `mlflow server` that proxies artifacts to a folder (as the
team's server does; no basic auth, which only gates the fetch), one `mlflow run . -e main` against
it, and the run page's artifact viewer (`#/experiments/<id>/runs/<run>/artifacts/<path>`) in
headless Chromium.

MLflow 3.17's viewer fetches the HTML and shows it in an iframe loaded from a `blob:` URL with
sandbox="allow-scripts": `--dump-dom` shows that iframe, not the card, so the card's DOM is read
in the frame over the DevTools protocol (browser.tab). About 50 s, most of it the pipeline."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from mlflow.tracking import MlflowClient

import browser
from services import MlflowServer
from support import BIN, ROOT

STEPS = ["ingest", "preprocess", "train", "qa", "register", "serve"]
CARD_TITLE = "document.querySelector('h1')?.textContent"


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    reason = browser.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_server = MlflowServer(workdir, str(workdir / "artifacts"), env)
    yield mlflow_server
    mlflow_server.stop()


@pytest.fixture(scope="module")
def pipeline(server) -> dict[str, str]:
    """One `mlflow run . -e main` against the server: run id by step, and `main` for the parent."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env.update({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_DISABLE_TELEMETRY": "true", "MLPIPE_SYSTEM_METRICS": "false",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    proc = subprocess.run([str(BIN / "python"), "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = dict(re.findall(r"^(\w+) +(\w{32}) +(?:ran|cached) ", proc.stdout, re.M))
    assert list(runs) == STEPS, proc.stdout
    (parent,) = MlflowClient(server.url).search_runs(["0"], "tags.`pipeline.role` = 'pipeline'")
    return {**runs, "main": parent.info.run_id}


def viewer(server, run_id: str, path: str) -> str:
    return f"{server.url}/#/experiments/0/runs/{run_id}/artifacts/{path}"


def test_the_viewer_shows_a_card_in_a_sandboxed_blob_iframe(server, pipeline):
    """What the other tests rely on: MLflow shows the card in a blob: iframe, not in the page."""
    dom = browser.dump_dom(viewer(server, pipeline["train"], "card/card.html"), budget_ms=15000)
    frames = re.findall(r'<iframe [^>]*class="mlflow-html-iframe"[^>]*>', dom)
    assert len(frames) == 1, dom[-3000:]
    frame = frames[0]
    assert f'src="blob:{server.url}/' in frame and 'sandbox="allow-scripts"' in frame, frame
    assert "couldn't load your file" not in dom and "feature importances" not in dom


@pytest.mark.parametrize("step, heading", [("train", "feature importances"), ("qa", "Checks: ")])
def test_a_step_card_renders_in_the_viewer(server, pipeline, step, heading):
    run_id = pipeline[step]
    with browser.tab(viewer(server, run_id, "card/card.html")) as page:
        title = page.wait_for(CARD_TITLE, frame="blob:", timeout=60)
        card = page.evaluate("""({
            headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
            text: document.body.innerText,
            tables: document.querySelectorAll('table').length,
            cells: [...document.querySelectorAll('td')].map(td => td.textContent),
            images: [...document.images].map(img => img.naturalWidth),
            charts: document.querySelectorAll('svg').length,
            height: document.documentElement.scrollHeight})""", frame="blob:")
    assert title == f"{step} FINISHED", title
    assert {"Inputs", "Outputs", "Metrics"} <= set(card["headings"]), card["headings"]
    assert any(h.startswith(heading) for h in card["headings"]), card["headings"]
    assert run_id in card["text"] and card["tables"] >= 3 and card["charts"] >= 1 and card["height"] > 500
    assert all(width > 0 for width in card["images"]), card["images"]  # qa's PNGs (data: URIs) decode
    if step == "qa":
        assert card["images"] and "PASS" in card["cells"], card["cells"][:20]


def test_the_index_card_holds_every_card_and_its_links_scroll_in_the_viewer(server, pipeline):
    with browser.tab(viewer(server, pipeline["main"], "cards/index.html")) as page:
        title = page.wait_for(CARD_TITLE, frame="blob:", timeout=60)
        assert title == f"pipeline {pipeline['main']}"
        sections = page.evaluate("[...document.querySelectorAll('section.card')].map(s => s.id + ' ' + "
                                 "s.querySelector('h1').textContent)", frame="blob:")
        assert sections == [f"{i:02d}-{step} {step} FINISHED" for i, step in enumerate(STEPS, 1)]
        # The train line's link, clicked as a user would: the frame stays on the page (a link to a
        # file would leave about:blank#blocked) and the train card comes to the top of the view.
        page.evaluate("document.querySelector('table').rows[3].querySelector('a').click()", frame="blob:")
        at_top = "Math.abs(document.getElementById('{}').getBoundingClientRect().top) < 1"
        page.wait_for(at_top.format("03-train"), frame="blob:", timeout=10)
        scrolled = page.evaluate("window.scrollY", frame="blob:")
        page.evaluate("document.getElementById('03-train').querySelector('a[href=\"#index\"]').click()", frame="blob:")
        page.wait_for(at_top.format("index"), frame="blob:", timeout=10)
        assert page.evaluate("window.scrollY", frame="blob:") < scrolled
