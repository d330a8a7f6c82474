"""`mlflow run . -e main`: the whole pipeline, its caching and step selection, end to end."""

from __future__ import annotations

import json

import pytest

from support import Store

STEPS = ["ingest", "preprocess", "train", "qa", "register", "serve"]


@pytest.fixture(scope="module")
def cold(store: Store):
    result = store.mlflow_run(check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    return result, parent


def test_cold_run_nests_one_finished_child_per_step(store: Store, cold):
    result, parent = cold
    assert parent.info.status == "FINISHED"
    children = store.children(parent.info.run_id)
    assert [c.data.tags["mlflow.project.entryPoint"] for c in children] == STEPS
    assert all(c.info.status == "FINISHED" for c in children)
    # The driver hands each step its upstream's run id.
    by_step = {c.data.tags["pipeline.step"]: c for c in children}
    assert by_step["preprocess"].data.params["ingest_run_id"] == by_step["ingest"].info.run_id
    assert by_step["train"].data.params["preprocess_run_id"] == by_step["preprocess"].info.run_id
    assert by_step["qa"].data.params["train_run_id"] == by_step["train"].info.run_id
    assert by_step["register"].data.params["qa_run_id"] == by_step["qa"].info.run_id
    assert by_step["serve"].data.params["model_uri"] == "models:/wine_model/1"
    # The summary table names every step with its run id and outcome.
    for child in children:
        step = child.data.tags["pipeline.step"]
        assert any(line.startswith(step) and child.info.run_id in line and " ran " in line
                   for line in result.stdout.splitlines()), result.stdout


def test_cold_run_registers_a_champion_with_lineage(store: Store, cold):
    _, parent = cold
    version = store.client.get_model_version_by_alias("wine_model", "champion")
    assert str(version.version) == "1"
    assert str(store.client.get_model_version_by_alias("wine_model", "challenger").version) == "1"
    children = {c.data.tags["pipeline.step"]: c for c in store.children(parent.info.run_id)}
    tags = version.tags
    for step in ("ingest", "preprocess", "train", "qa"):
        assert tags[f"lineage.{step}_run_id"] == children[step].info.run_id
    assert tags["lineage.data_digest"] == children["ingest"].data.tags["lineage.data_digest"]
    assert len(tags["lineage.train_code_digest"]) == 64
    assert float(tags["qa.accuracy"]) >= 0.7
    # The version points at the model train logged (a models:/m-... logged model).
    assert children["train"].data.tags["pipeline.model_uri"].startswith("models:/m-")


def test_steps_log_flat_params_config_yaml_and_datasets(store: Store, cold):
    _, parent = cold
    children = {c.data.tags["pipeline.step"]: c for c in store.children(parent.info.run_id)}
    train = children["train"]
    assert train.data.params["model.n_estimators"] == "100"
    assert train.data.params["data.source"] == "sklearn:wine"
    assert train.data.params["model._target_"] == "sklearn.ensemble.RandomForestClassifier"
    config_yaml = store.client.download_artifacts(train.info.run_id, "config/config.yaml", str(store.path))
    assert "n_estimators: 100" in open(config_yaml).read()
    ingest_artifacts = {a.path for a in store.client.list_artifacts(children["ingest"].info.run_id, "data")}
    assert ingest_artifacts == {"data/raw.parquet"}
    split_artifacts = {a.path for a in store.client.list_artifacts(children["preprocess"].info.run_id, "data")}
    assert split_artifacts == {"data/train.parquet", "data/validation.parquet", "data/test.parquet",
                               "data/drift_reference.parquet"}
    # Lineage in the UI: datasets logged as run inputs.
    ingest_inputs = children["ingest"].inputs.dataset_inputs
    assert [d.dataset.name for d in ingest_inputs] == ["wine"]
    contexts = {t.value for d in children["preprocess"].inputs.dataset_inputs for t in d.tags}
    assert {"train", "validation", "test"} <= contexts
    assert train.data.metrics["validation.accuracy"] > 0.7
    assert "cv.accuracy_mean" in train.data.metrics


def test_serve_smoke_answered_invocations(store: Store, cold):
    _, parent = cold
    serve = [c for c in store.children(parent.info.run_id) if c.data.tags["pipeline.step"] == "serve"][0]
    path = store.client.download_artifacts(serve.info.run_id, "smoke.json", str(store.path))
    smoke = json.load(open(path))
    assert smoke["status"] == 200
    assert len(smoke["predictions"]) == smoke["rows"] == 5


def test_rerun_reuses_every_step_and_links_them(store: Store, cold):
    _, first = cold
    before = {s: [r.info.run_id for r in store.step_runs(s)] for s in STEPS}
    result = store.mlflow_run(check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.run_id != first.info.run_id
    assert {s: [r.info.run_id for r in store.step_runs(s)] for s in STEPS} == before
    links = store.children(parent.info.run_id)
    assert [l.data.tags["pipeline.cached_step"] for l in links] == STEPS
    assert [l.data.tags["pipeline.reused_run_id"] for l in links] == [before[s][0] for s in STEPS]
    assert result.stdout.count(" cached ") == 6
    # Registering again would add a version: a cached register does not.
    assert len(store.client.search_model_versions("name='wine_model'")) == 1


def test_model_change_reruns_train_onwards_only(store: Store, cold):
    store.mlflow_run("-P", "overrides=model.n_estimators=50", check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    outcome = {l.data.tags.get("pipeline.cached_step") or l.data.tags["pipeline.step"]:
               "cached" if "pipeline.reused_run_id" in l.data.tags else "ran"
               for l in store.children(parent.info.run_id)}
    assert outcome == {"ingest": "cached", "preprocess": "cached", "train": "ran", "qa": "ran",
                       "register": "ran", "serve": "ran"}
    train = store.step_runs("train")[-1]
    assert train.data.params["model.n_estimators"] == "50"
    # A new version becomes challenger; it ties the champion's accuracy, so champion stays.
    register = store.step_runs("register")[-1]
    assert register.data.tags["registry.promoted"] == "false"
    assert "does not beat champion's" in register.data.tags["registry.reason"]
    assert str(store.client.get_model_version_by_alias("wine_model", "challenger").version) == "2"
    assert str(store.client.get_model_version_by_alias("wine_model", "champion").version) == "1"


def test_promotion_policy_always_moves_the_champion(store: Store, cold):
    store.mlflow_run("-P", "steps=register", "-P", "overrides=model.n_estimators=50 registry.promotion=always",
                     check=True)
    register = store.step_runs("register")[-1]
    assert register.data.tags["registry.promoted"] == "true"
    version = register.data.tags["registry.version"]
    assert str(store.client.get_model_version_by_alias("wine_model", "champion").version) == version != "1"


def test_selected_steps_use_matching_finished_upstream(store: Store, cold):
    _, first = cold
    preprocess = {c.data.tags["pipeline.step"]: c for c in store.children(first.info.run_id)}["preprocess"]
    result = store.mlflow_run("-P", "steps=train,qa", "-P", "overrides=model.n_estimators=30", check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    children = store.children(parent.info.run_id)
    assert [c.data.tags["pipeline.step"] for c in children] == ["train", "qa"]
    assert children[0].data.params["preprocess_run_id"] == preprocess.info.run_id
    assert f"preprocess: using finished run {preprocess.info.run_id}" in result.stderr


def test_non_contiguous_steps_are_refused(store: Store, cold):
    result = store.mlflow_run("-P", "steps=train,register")
    assert result.returncode != 0
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.status == "FAILED"
    assert "skips qa" in parent.data.tags["error.message"]
    assert "error: main: ConfigError: main.steps must be contiguous: train,register skips qa" in result.stderr


def test_force_reruns_the_named_step(store: Store, cold):
    before = len(store.step_runs("ingest"))
    result = store.mlflow_run("-P", "steps=ingest,preprocess", "-P", "overrides=main.force=[preprocess]", check=True)
    assert len(store.step_runs("ingest")) == before
    lines = {l.split()[0]: l for l in result.stdout.splitlines() if l.split() and l.split()[0] in STEPS}
    assert " cached " in lines["ingest"] and " ran " in lines["preprocess"]


def test_failed_run_is_never_reused(store: Store, cold):
    impossible = "overrides=qa.thresholds.classification.accuracy=1.01"
    first = store.mlflow_run("-P", "steps=qa", "-P", impossible)
    assert first.returncode != 0
    failed = store.step_runs("qa")[-1]
    assert failed.info.status == "FAILED" and failed.data.tags["pipeline.cache_key"]
    second = store.mlflow_run("-P", "steps=qa", "-P", impossible)
    assert second.returncode != 0
    again = store.step_runs("qa")[-1]
    assert again.info.run_id != failed.info.run_id
    assert again.data.tags["pipeline.cache_key"] == failed.data.tags["pipeline.cache_key"]
    assert "expected >= 1.01" in again.data.tags["error.message"]
