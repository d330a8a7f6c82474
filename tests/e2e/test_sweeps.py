"""Hydra sweeps of the whole pipeline, through `mlflow run` and through the driver module directly."""

from __future__ import annotations

import pytest

from support import Store

# An absolute accuracy mark (off by default in conf/qa) that one stump cannot reach.
SWEEP = "-m model.max_depth=1 model.n_estimators=1,60 qa.thresholds.classification.accuracy=0.7"


@pytest.fixture(scope="module")
def sweep(store: Store):
    result = store.mlflow_run("-P", f"overrides={SWEEP}", check=True)
    parent = store.newest("tags.`pipeline.role` = 'sweep'")
    return result, parent


def test_one_sweep_parent_with_one_nested_pipeline_per_job(store: Store, sweep):
    _, parent = sweep
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert parent.info.run_name.startswith("sweep wine RandomForestClassifier "), parent.info.run_name
    children = store.children(parent.info.run_id)
    jobs = [c for c in children if c.data.tags.get("pipeline.role") == "sweep-job"]
    assert [j.data.tags["pipeline.overrides"] for j in jobs] == [
        f'["model.max_depth=1", "model.n_estimators={n}", "qa.thresholds.classification.accuracy=0.7"]' for n in (1, 60)]
    for job in jobs:
        steps = [(c.data.tags.get("pipeline.step") or c.data.tags.get("pipeline.cached_step"),
                  "cached" if "pipeline.cached_step" in c.data.tags else "ran") for c in store.children(job.info.run_id)]
        assert steps == [("ingest", "cached"), ("preprocess", "cached"), ("train", "ran"), ("qa", "ran")]
    # ingest and preprocess (no swept key reaches them) ran once before the jobs; register and
    # serve once after them, for the best job: all nested under the sweep parent.
    own = [c.data.tags.get("pipeline.step") for c in children if "pipeline.step" in c.data.tags]
    assert own == ["ingest", "preprocess", "register", "serve"]


def test_ingest_and_preprocess_run_once_for_all_jobs(store: Store, sweep):
    assert len(store.step_runs("ingest")) == 1
    assert len(store.step_runs("preprocess")) == 1
    assert len(store.step_runs("train")) == 2
    assert len(store.step_runs("qa")) == 2


def test_best_job_is_reported_and_only_its_model_becomes_champion(store: Store, sweep):
    result, parent = sweep
    jobs = [c for c in store.children(parent.info.run_id) if c.data.tags.get("pipeline.role") == "sweep-job"]
    scored = [j for j in jobs if j.info.status == "FINISHED"]
    best = max(scored, key=lambda j: j.data.metrics["pipeline.score"])
    assert parent.data.tags["sweep.best_job_run_id"] == best.info.run_id
    assert parent.data.tags["sweep.best_overrides"] == \
        "model.max_depth=1 model.n_estimators=60 qa.thresholds.classification.accuracy=0.7"
    assert parent.data.metrics["sweep.best_accuracy"] == best.data.metrics["pipeline.score"]
    versions = store.client.search_model_versions("name='wine_model'")
    assert len(versions) == 1
    champion = store.client.get_model_version_by_alias("wine_model", "champion")
    assert champion.tags["lineage.qa_run_id"] == best.data.tags["pipeline.qa_run_id"]
    assert f"best job: {best.info.run_id}" in result.stdout


def test_a_job_that_fails_the_gate_is_left_out(store: Store, sweep):
    """One stump is a weak model: it fails the sweep's 0.7 accuracy threshold; the sweep still finishes."""
    _, parent = sweep
    jobs = {j.data.tags["pipeline.overrides"]: j for j in store.children(parent.info.run_id)
            if j.data.tags.get("pipeline.role") == "sweep-job"}
    weak = jobs['["model.max_depth=1", "model.n_estimators=1", "qa.thresholds.classification.accuracy=0.7"]']
    qa = [r for r in store.step_runs("qa") if r.data.params["model.n_estimators"] == "1"][0]
    assert qa.info.status == "FAILED"
    assert weak.info.status == "FAILED"
    assert "failed the qa gate" in weak.data.tags["error.message"]
    assert "threshold.accuracy" in qa.data.tags["qa.failed_checks"].split(",")
    assert parent.data.metrics["sweep.jobs"] == 2
    assert parent.data.metrics["sweep.failed_jobs"] == 1


@pytest.mark.slow
def test_driver_module_sweeps_directly(store: Store, sweep):
    """`python -m steps.main -m ...` is a plain Hydra app: a new sweep parent, reused steps."""
    trains = len(store.step_runs("train"))
    result = store.python("-m", "steps.main", "-m", "model.max_depth=1", "model.n_estimators=60,61",
                          "main.steps=[ingest,preprocess,train,qa]", check=True)
    parent = store.newest("tags.`pipeline.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id != sweep[1].info.run_id
    assert parent.data.tags["sweep.best_overrides"] in {
        f"model.max_depth=1 model.n_estimators={n} main.steps=[ingest,preprocess,train,qa]" for n in (60, 61)}
    # n_estimators=60 was trained by the first sweep: only 61 is new.
    assert len(store.step_runs("train")) == trains + 1
    assert len(store.step_runs("ingest")) == 1
    assert len(store.client.search_model_versions("name='wine_model'")) == 1
    assert "Launching 2 jobs" in result.stderr + result.stdout
