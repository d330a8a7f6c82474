"""Report cards and drift end to end: every step's card and summary, the parent's index of
them (also when a step fails), and a drifted `qa.data_source` batch stopping the gate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from support import Store, error_lines

STEPS = ["ingest", "preprocess", "train", "qa", "register", "serve"]


def artifact(store: Store, run_id: str, path: str) -> Path:
    return Path(store.client.download_artifacts(run_id, path, str(store.path)))


def card(store: Store, run) -> dict:
    return json.loads(artifact(store, run.info.run_id, "card/summary.json").read_text())


def parent_of(store: Store, result) -> str:
    return store.newest("tags.`pipeline.role` = 'pipeline'").info.run_id


@pytest.fixture(scope="module")
def pipeline(store: Store):
    result = store.mlflow_run()
    assert result.returncode == 0, result.output[-3000:]
    return parent_of(store, result)


def test_every_step_logs_a_card_and_a_summary(store: Store, pipeline):
    for step in STEPS:
        run = store.step_runs(step)[-1]
        data = card(store, run)
        assert data["step"] == step and data["status"] == "FINISHED" and data["run_id"] == run.info.run_id
        assert data["checks_failed"] == [], (step, data["checks_failed"])
        html = artifact(store, run.info.run_id, "card/card.html").read_text()
        assert html.startswith("<!doctype html>") and f"<h1>{step} " in html
        assert not re.search(r'(src|href)="(https?:)?//', html), step  # opens offline
    qa = card(store, store.step_runs("qa")[-1])
    names = {c["name"] for c in qa["checks"]}
    assert {"baseline.p_value", "inference.serving_input", "inference.latency_p95_ms", "drift.test"} <= names
    assert {"confusion matrix", "drift: test", "roc curve plot"} <= set(qa["sections"])
    assert "feature importances" in card(store, store.step_runs("train")[-1])["sections"]
    assert "class balance" in card(store, store.step_runs("ingest")[-1])["sections"]


def test_the_test_split_does_not_drift(store: Store, pipeline):
    qa = store.step_runs("qa")[-1]
    assert qa.data.metrics["qa.drift.test.columns_drifted"] == 0
    report = json.loads(artifact(store, qa.info.run_id, "qa_report.json").read_text())
    assert report["drift"]["test"]["columns"] == 13


def test_the_parent_links_every_card(store: Store, pipeline):
    index = json.loads(artifact(store, pipeline, "cards/index.json").read_text())
    assert [row["step"] for row in index] == STEPS
    html = artifact(store, pipeline, "cards/index.html").read_text()
    for i, step in enumerate(STEPS, 1):
        name = f"{i:02d}-{step}.html"
        assert f'href="{name}"' in html
        copied = artifact(store, pipeline, f"cards/{name}").read_text()
        assert copied == artifact(store, index[i - 1]["run_id"], "card/card.html").read_text()


def wine_batch(path: Path, shift: dict[str, float] | None = None, drop: str | None = None) -> Path:
    """Wine's feature rows (no target), with columns shifted by a number of standard deviations."""
    frame = load_wine(as_frame=True).frame.drop(columns=["target"])
    for col, sds in (shift or {}).items():
        frame[col] = frame[col] + sds * frame[col].std()
    if drop:
        frame = frame.drop(columns=[drop])
    frame.to_csv(path, index=False)
    return path


def test_a_drifted_batch_fails_the_gate_and_nothing_is_registered(store: Store, pipeline, tmp_path):
    versions = len(store.client.search_model_versions("name='wine_model'"))
    batch = wine_batch(tmp_path / "shifted.csv", shift={"alcohol": 2.0, "proline": 1.5})
    result = store.mlflow_run("-P", f"overrides=qa.data_source={batch}")
    assert result.returncode != 0
    qa = store.step_runs("qa")[-1]
    assert qa.info.status == "FAILED"
    assert qa.data.tags["qa.failed_checks"] == "drift.batch"
    message = qa.data.tags["error.message"]
    assert "drift.batch=2 (expected <= 0 drifted columns)" in message
    assert "alcohol (psi" in message and "proline (psi" in message
    (line,) = error_lines(result.stderr)
    assert "step qa failed" in line and "drift.batch" in line and "alcohol" in line
    assert qa.data.metrics["qa.drift.batch.columns_drifted"] == 2
    assert qa.data.metrics["qa.drift.test.columns_drifted"] == 0
    assert len(store.client.search_model_versions("name='wine_model'")) == versions
    # The failed qa run's card explains it; the parent still links all the cards so far.
    data = card(store, qa)
    assert data["status"] == "FAILED" and data["checks_failed"] == ["drift.batch"]
    assert "drift: batch" in data["sections"]
    assert {"drift: batch, alcohol", "drift: batch, proline"} & set(data["sections"])  # the worst column
    parent = parent_of(store, result)
    index = json.loads(artifact(store, parent, "cards/index.json").read_text())
    assert [(r["step"], r["outcome"]) for r in index] == [
        ("ingest", "cached"), ("preprocess", "cached"), ("train", "cached"), ("qa", "ran")]
    assert index[-1]["status"] == "FAILED" and index[-1]["href"] == "04-qa.html"
