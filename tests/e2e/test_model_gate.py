"""The qa gate end to end: a baseline that noise cannot beat, a real small lift that passes, the
champion on the same rows, and registry.allow_unvalidated, through `mlflow run . -e main`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from support import ROOT, Store, error_lines

FEATURES = ["a", "b", "c", "d"]


def labelled_frame(path, rows: int, noise: float | None, seed: int) -> str:
    """Four numeric features; the label is the sign of their sum plus Gaussian noise of scale
    `noise` (None: labels independent of the features)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    score = rng.normal(size=rows) if noise is None else x.sum(axis=1) + rng.normal(0, noise, rows)
    frame = pd.DataFrame(x, columns=FEATURES).assign(label=np.where(score > 0, "yes", "no"))
    frame.to_csv(path, index=False)
    return f"data.source={path} data.target=label"


def report(store: Store, run) -> dict:
    return json.load(open(store.client.download_artifacts(run.info.run_id, "qa_report.json", str(store.path))))


def checks(store: Store, run) -> dict[str, dict]:
    return {c["name"]: c for c in report(store, run)["checks"]}


def versions(store: Store, name: str) -> list:
    return store.client.search_model_versions(f"name='{name}'")


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """400 rows whose labels are coin flips: no model can beat the most frequent class."""
    store = Store(tmp_path_factory.mktemp("noise"))
    data = labelled_frame(tmp_path_factory.mktemp("data") / "noise.csv", 400, None, seed=0)
    return store, data, store.mlflow_run("-P", f"overrides={data}")


def test_pure_noise_is_stopped_at_qa_by_the_baseline(noise):
    store, _, result = noise
    assert result.returncode != 0, result.output[-3000:]
    qa = store.step_runs("qa")[-1]
    assert qa.info.status == "FAILED"
    assert qa.data.tags["qa.passed"] == "false" and qa.data.tags["qa.failed_checks"] == "baseline.p_value"
    message = qa.data.tags["error.message"]
    assert "failed the qa gate on 80 test rows: baseline.p_value=" in message and "(expected < 0.05)" in message
    assert any("StepFailedError: step qa failed" in line and "baseline.p_value" in line
               for line in error_lines(result.stderr)), result.stderr[-2000:]
    # The FAILED run carries the report that explains it, and the numbers behind it.
    baseline = checks(store, qa)["baseline.p_value"]
    assert not baseline["passed"] and baseline["value"] >= 0.05 and "McNemar" in baseline["note"]
    metrics = qa.data.metrics
    assert {"qa.baseline_accuracy", "qa.lift", "qa.lift_lower_bound", "qa.p_value", "qa.latency_p95_ms", "qa.cpu_p95_ms",
            "qa.recall.yes", "qa.recall.no"} <= set(metrics)
    assert metrics["qa.lift_lower_bound"] < 0
    assert {a.path for a in store.client.list_artifacts(qa.info.run_id)} >= {"qa_report.json", "confusion_matrix.json"}
    assert versions(store, "noise_model") == []
    assert store.step_runs("register") == []


@pytest.mark.slow
def test_allow_unvalidated_registers_the_failed_model_tagged_and_without_aliases(noise):
    store, data, _ = noise
    result = store.mlflow_run("-P", "steps=qa,register", "-P", f"overrides={data} registry.allow_unvalidated=true",
                              check=True)
    qa, register = store.step_runs("qa")[-1], store.step_runs("register")[-1]
    assert qa.info.status == "FINISHED" and qa.data.tags["qa.passed"] == "false"
    assert "registry.allow_unvalidated" in qa.data.tags["pipeline.summary"]
    [version] = versions(store, "noise_model")
    assert version.tags["qa.passed"] == "false"
    assert version.tags["lineage.qa_run_id"] == qa.info.run_id
    assert register.data.tags["registry.promoted"] == "false"
    assert dict(store.client.get_registered_model("noise_model").aliases) == {}
    assert "qa did not pass" in result.stdout
    # The same finished-but-failed qa run, without the flag, is refused by register.
    refused = store.mlflow_run("-P", f"qa_run_id={qa.info.run_id}", "-P", "overrides=" + data, entry="register")
    assert refused.returncode != 0
    assert store.step_runs("register")[-1].data.tags["error.type"] == "ModelValidationError"
    assert f"qa run {qa.info.run_id} did not pass the gate (failed: baseline.p_value)" in refused.stderr
    assert len(versions(store, "noise_model")) == 1


@pytest.fixture(scope="module")
def small_signal(tmp_path_factory):
    """4000 rows whose label depends a little on the features: about 0.6 accuracy is the best there is."""
    store = Store(tmp_path_factory.mktemp("signal"))
    data = labelled_frame(tmp_path_factory.mktemp("data") / "signal.csv", 4000, 6.0, seed=0)
    return store, store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", "-P",
                                   f"overrides=model=logistic_regression {data}")


@pytest.mark.slow
def test_small_real_lift_on_thousands_of_rows_passes_and_registers(small_signal):
    store, result = small_signal
    assert result.returncode == 0, result.output[-3000:]
    qa = store.step_runs("qa")[-1]
    assert qa.data.tags["qa.passed"] == "true"
    metrics = qa.data.metrics
    assert metrics["qa.accuracy"] < 0.7  # a weak model by any absolute mark...
    assert metrics["qa.lift"] > 0 and metrics["qa.lift_lower_bound"] > 0 and metrics["qa.p_value"] < 0.05
    baseline = checks(store, qa)["baseline.p_value"]
    assert baseline["passed"] and "on 800 rows" in baseline["note"]
    assert checks(store, qa)["inference.serving_input"]["passed"]
    # ... that is registered as champion.
    champion = store.client.get_model_version_by_alias("signal_model", "champion")
    assert champion.tags["qa.passed"] == "true" and champion.tags["lineage.qa_run_id"] == qa.info.run_id


@pytest.fixture(scope="module")
def clear_signal(tmp_path_factory):
    """A good champion first, on data where even one stump beats the most frequent class."""
    store = Store(tmp_path_factory.mktemp("clear"))
    data = labelled_frame(tmp_path_factory.mktemp("data") / "clear.csv", 3000, 1.0, seed=1)
    store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", "-P",
                     f"overrides=model=logistic_regression {data}", check=True)
    return store, data


@pytest.mark.slow
def test_a_worse_model_than_the_champion_is_stopped_on_the_same_rows(clear_signal):
    store, data = clear_signal
    champion_qa = store.step_runs("qa")[-1]
    result = store.mlflow_run("-P", "steps=train,qa,register", "-P",
                              f"overrides={data} model.n_estimators=1 model.max_depth=1")
    assert result.returncode != 0, result.output[-3000:]
    qa = store.step_runs("qa")[-1]
    assert qa.info.status == "FAILED" and qa.data.tags["qa.failed_checks"] == "champion.accuracy"
    found = checks(store, qa)
    # The stump does beat the baseline: only the champion comparison stops it.
    assert found["baseline.p_value"]["passed"]
    champion = found["champion.accuracy"]
    assert not champion["passed"]
    assert champion["value"] == pytest.approx(qa.data.metrics["qa.accuracy"])
    # The champion was re-evaluated on this run's test rows: the same rows its own qa scored.
    champion_score = report(store, qa)["champion"]["metrics"]["accuracy"]
    assert champion_score == pytest.approx(champion_qa.data.metrics["qa.accuracy"])
    tolerance = yaml.safe_load((ROOT / "conf" / "qa" / "default.yaml").read_text())["champion"]["tolerance"]
    assert champion["expected"] == f">= {champion_score - tolerance:.4g}"
    assert "champion.accuracy=" in qa.data.tags["error.message"]
    assert len(versions(store, "clear_model")) == 1


@pytest.mark.slow
def test_a_champion_this_data_cannot_score_is_a_decision(fresh_store: Store):
    """One registered model name, a regression champion (diabetes), then a classifier (wine):
    qa fails on champion.compatible naming the setting; with it, the classifier takes over."""
    shared = "registry.model_name=shared main.steps=[ingest,preprocess,train,qa,register] model.n_estimators=10"
    fresh_store.mlflow_run("-P", f"overrides=data=diabetes {shared}", check=True)
    result = fresh_store.mlflow_run("-P", f"overrides=data=wine {shared}")
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert "champion.compatible=missing (expected a champion this data can score)" in line
    assert "to let this model take over: qa.champion.on_incompatible=replace" in line
    assert str(fresh_store.client.get_model_version_by_alias("shared", "champion").version) == "1"

    fresh_store.mlflow_run("-P", f"overrides=data=wine {shared} qa.champion.on_incompatible=replace", check=True)
    qa = fresh_store.step_runs("qa")[-1]
    assert qa.data.tags["qa.champion_replaced"] == "true"
    assert report(fresh_store, qa)["champion"]["note"].startswith("replaced: ")
    register = fresh_store.step_runs("register")[-1]
    assert register.data.tags["registry.promoted"] == "true"
    assert str(fresh_store.client.get_model_version_by_alias("shared", "champion").version) == \
        register.data.tags["registry.version"]
