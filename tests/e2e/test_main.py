"""`mlflow run . -e main`: the whole pipeline, its caching and step selection, its report cards
and the drift gate, end to end. The card and drift tests come last: they read the cold run's
steps and add a failing qa run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from support import Store, error_lines

STEPS = ["ingest", "preprocess", "train", "qa", "register", "serve"]


@pytest.fixture(scope="module")
def cold(store: Store):
    result = store.mlflow_run(check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    return result, parent


def test_cold_run_nests_one_finished_child_per_step(store: Store, cold):
    result, parent = cold
    assert parent.info.status == "FINISHED"
    # named in MLflow's UI after what it ran, not with random words
    assert re.fullmatch(r"main wine RandomForestClassifier \d\d-\d\d \d\d:\d\d", parent.info.run_name), parent.info.run_name
    children = store.children(parent.info.run_id)
    assert [c.data.tags["mlflow.project.entryPoint"] for c in children] == STEPS
    assert all(c.info.status == "FINISHED" for c in children)
    # Each forked by the driver's warm helper (main.warm_steps, on by default), each its own run.
    assert [c.data.tags["pipeline.process"] for c in children] == ["warm"] * 6
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
    # named in MLflow's UI after its data and estimator, not "model"
    model_id = children["train"].data.tags["pipeline.model_uri"].removeprefix("models:/")
    assert store.client.get_logged_model(model_id).name == "wine-RandomForestClassifier"


def test_the_terminal_shows_one_line_per_step_the_table_and_no_mlflow_chatter(cold):
    result, _ = cold
    for step in STEPS:
        assert f"[mlpipe] {step} ran in " in result.stdout
    assert "step        run id" in result.stdout
    # main.log=quiet: MLflow's own lines from the driver and the steps are left out (the outer
    # `mlflow run` process says its own two lines before the driver starts)
    for chatter in ("Running command 'python -m steps.ingest", "INFO mlflow.tracking.fluent", "Active model is set",
                    "WARNING mlflow.sklearn", "Successfully registered model"):
        assert chatter not in result.output, chatter


@pytest.mark.slow
def test_main_log_full_shows_mlflow_lines_too(fresh_store: Store):
    # its own store: a run here must not change what this module's other tests find cached
    result = fresh_store.mlflow_run("-P", "steps=ingest", "-P", "overrides=main.log=full", check=True)
    assert "Running command 'python -m steps.ingest" in result.output
    assert "[mlpipe] ingest " in result.stdout


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
    # The model's run says which data made it and which judged it: the same splits, same digests.
    digests = {(d.dataset.name, d.dataset.digest) for d in children["preprocess"].inputs.dataset_inputs}
    for step, context, split in (("train", "training", "train"), ("qa", "evaluation", "test")):
        # (qa's mlflow.models.evaluate also logs its own unnamed "dataset", without a context)
        [used] = [d for d in children[step].inputs.dataset_inputs
                  if [t.value for t in d.tags if t.key == "mlflow.data.context"] == [context]]
        assert (used.dataset.name, used.dataset.digest) == (f"wine-{split}", children["preprocess"].data.tags[f"data.{split}_digest"])
        assert (used.dataset.name, used.dataset.digest) in digests
    assert children["preprocess"].data.tags["preprocess.fitted_in"] == "step"  # wine: below fit_worker_min_mb
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
    assert re.findall(r"^\w+ +\w{32} +(ran|cached) ", result.stdout, re.M) == ["cached"] * 6
    # Registering again would add a version: a cached register does not.
    assert len(store.client.search_model_versions("name='wine_model'")) == 1


@pytest.mark.slow
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


@pytest.mark.slow
def test_promotion_policy_always_moves_the_champion(store: Store, cold):
    store.mlflow_run("-P", "steps=register", "-P", "overrides=model.n_estimators=50 registry.promotion=always",
                     check=True)
    register = store.step_runs("register")[-1]
    assert register.data.tags["registry.promoted"] == "true"
    version = register.data.tags["registry.version"]
    assert str(store.client.get_model_version_by_alias("wine_model", "champion").version) == version != "1"


@pytest.mark.slow
def test_selected_steps_use_matching_finished_upstream(store: Store, cold):
    _, first = cold
    preprocess = {c.data.tags["pipeline.step"]: c for c in store.children(first.info.run_id)}["preprocess"]
    result = store.mlflow_run("-P", "steps=train,qa", "-P", "overrides=model.n_estimators=30", check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    children = store.children(parent.info.run_id)
    assert [c.data.tags["pipeline.step"] for c in children] == ["train", "qa"]
    assert children[0].data.params["preprocess_run_id"] == preprocess.info.run_id
    assert f"preprocess: using finished run {preprocess.info.run_id}" in result.stderr


@pytest.mark.slow
def test_non_contiguous_steps_are_refused(store: Store, cold):
    result = store.mlflow_run("-P", "steps=train,register")
    assert result.returncode != 0
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.status == "FAILED"
    assert "skips qa" in parent.data.tags["error.message"]
    assert "error: main: ConfigError: main.steps must be contiguous: train,register skips qa" in result.stderr


@pytest.mark.slow
def test_force_reruns_the_named_step(store: Store, cold):
    before = len(store.step_runs("ingest"))
    result = store.mlflow_run("-P", "steps=ingest,preprocess", "-P", "overrides=main.force=[preprocess]", check=True)
    assert len(store.step_runs("ingest")) == before
    lines = {l.split()[0]: l for l in result.stdout.splitlines() if l.split() and l.split()[0] in STEPS}
    assert " cached " in lines["ingest"] and " ran " in lines["preprocess"]


@pytest.mark.slow
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


# -- report cards and drift ----------------------------------------------------------------------


def artifact(store: Store, run_id: str, path: str) -> Path:
    return Path(store.client.download_artifacts(run_id, path, str(store.path)))


def cold_steps(store: Store, cold) -> dict:
    """The cold pipeline's step runs (later tests in this module add newer ones)."""
    return {c.data.tags["pipeline.step"]: c for c in store.children(cold[1].info.run_id)}


def card(store: Store, run) -> dict:
    return json.loads(artifact(store, run.info.run_id, "card/summary.json").read_text())


def test_every_step_logs_a_card_and_a_summary(store: Store, cold):
    steps = cold_steps(store, cold)
    for step in STEPS:
        run = steps[step]
        data = card(store, run)
        assert data["step"] == step and data["status"] == "FINISHED" and data["run_id"] == run.info.run_id
        assert data["checks_failed"] == [], (step, data["checks_failed"])
        html = artifact(store, run.info.run_id, "card/card.html").read_text()
        assert html.startswith("<!doctype html>") and f"<h1>{step} " in html
        assert not re.search(r'(src|href)="(https?:)?//', html), step  # opens offline
    qa = card(store, steps["qa"])
    names = {c["name"] for c in qa["checks"]}
    assert {"baseline.p_value", "inference.serving_input", "inference.cpu_p95_ms", "drift.test"} <= names
    assert "inference.latency_p95_ms" not in names  # wall-clock: reported (qa.latency_p95_ms), not gated by default
    assert {"qa.latency_p95_ms", "qa.cpu_p95_ms"} <= set(steps["qa"].data.metrics)
    assert {"confusion matrix", "drift: test", "roc curve plot"} <= set(qa["sections"])
    assert any(s.startswith("permutation importance: the drop in accuracy when a column is shuffled")
               for s in qa["sections"]), qa["sections"]
    assert "feature importances" in card(store, steps["train"])["sections"]
    assert "class balance" in card(store, steps["ingest"])["sections"]


def test_the_test_split_does_not_drift(store: Store, cold):
    qa = cold_steps(store, cold)["qa"]
    assert qa.data.metrics["qa.drift.test.columns_drifted"] == 0
    report = json.loads(artifact(store, qa.info.run_id, "qa_report.json").read_text())
    assert report["drift"]["test"]["columns"] == 13
    ranked = [f["importance"] for f in report["importance"]]  # every model's global importance (qa.importance)
    assert len(ranked) == 13 and ranked == sorted(ranked, reverse=True) and ranked[0] > 0


def test_the_parent_links_every_card(store: Store, cold):
    from mlpipe.reports import cards

    pipeline = cold[1].info.run_id
    index = json.loads(artifact(store, pipeline, "cards/index.json").read_text())
    assert [row["step"] for row in index] == STEPS
    html = artifact(store, pipeline, "cards/index.html").read_text()
    for i, step in enumerate(STEPS, 1):
        name = f"{i:02d}-{step}.html"
        assert f'<a href="#{name[:-5]}">{name}</a>' in html  # in-page: MLflow's viewer cannot follow a file link
        copied = artifact(store, pipeline, f"cards/{name}").read_text()
        assert copied == artifact(store, index[i - 1]["run_id"], "card/card.html").read_text()
        assert cards.card_body(copied) in html


def wine_batch(path: Path, shift: dict[str, float] | None = None, drop: str | None = None) -> Path:
    """Wine's feature rows (no target), with columns shifted by a number of standard deviations."""
    frame = load_wine(as_frame=True).frame.drop(columns=["target"])
    for col, sds in (shift or {}).items():
        frame[col] = frame[col] + sds * frame[col].std()
    if drop:
        frame = frame.drop(columns=[drop])
    frame.to_csv(path, index=False)
    return path


def test_a_drifted_batch_fails_the_gate_and_nothing_is_registered(store: Store, cold, tmp_path):
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
    parent = store.newest("tags.`pipeline.role` = 'pipeline'").info.run_id
    index = json.loads(artifact(store, parent, "cards/index.json").read_text())
    # (train may rerun: test_force_reruns_the_named_step made a newer preprocess run)
    assert [r["step"] for r in index] == ["ingest", "preprocess", "train", "qa"]
    assert index[0]["outcome"] == index[1]["outcome"] == "cached" and index[-1]["outcome"] == "ran"
    assert index[-1]["status"] == "FAILED" and index[-1]["href"] == "04-qa.html"
