"""The closed loop through the real interfaces: a model registered by `mlflow run`, a real server
(`mlflow run -e serve`) keeping its input rows, labels sent to /feedback, and `mlflow run -e
monitor` reading the records: quiet on the training distribution, a trigger after the labels turn
against the model, and another after an input column shifts; a trigger that retrains on the
served rows and registers a challenger only, and a retrain that fails; a store it cannot read is a
FAILED run that says why."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from services import free_port
from support import MODEL, Store, error_lines
from test_serving import Server, http, label, records_body

MONITOR = "loop.performance.baseline_rows=100 loop.inputs.min_rows=100 serve.experiment=loop loop.retrain.enabled=false"


@pytest.fixture(scope="module")
def served(store: Store, tmp_path_factory):
    """wine_model v1 from a pipeline run, served with its records kept; the reference rows its
    preprocess run logged (the training distribution) to send."""
    store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", check=True)
    version = store.client.get_model_version_by_alias(MODEL, "champion")
    folder = tmp_path_factory.mktemp("loop")
    reference = pd.read_parquet(store.client.download_artifacts(version.tags["lineage.preprocess_run_id"],
                                                                "data/drift_reference.parquet", str(folder)))
    port, records = free_port(), folder / "records.db"
    server = Server(store, folder / "server.log", ["run", ".", "-e", "serve", "--env-manager", "local", "-P",
                                                   f"overrides=serve.port={port} serve.records={records} "
                                                   "serve.experiment=loop serve.records_flush_ms=50"], port)
    yield {"server": server, "records": records, "reference": reference}
    server.stop()


def _traffic(served, rows: pd.DataFrame, labels: str | None, requests: int = 40, size: int = 5) -> None:
    """`requests` requests of `size` rows drawn from `rows`; labels: "right" (the answers), "wrong"
    (every one wrong) or None (no feedback)."""
    url = served["server"].url
    for i in range(requests):
        batch = rows.sample(size, replace=True, random_state=i)
        status, headers, body = http(f"{url}/invocations", records_body(batch))
        assert status == 200, body
        answers = json.loads(body)["predictions"]
        if labels:
            truth = answers if labels == "right" else [(a + 1) % 3 for a in answers]
            assert label(url, headers, truth) == 200


def _monitor(store: Store, served, extra: str = ""):
    result = store.mlflow_run("-P", f"overrides={MONITOR} serve.records={served['records']} {extra}", entry="monitor")
    runs = store.client.search_runs([store.client.get_experiment_by_name("Default").experiment_id],
                                    "tags.`pipeline.step` = 'monitor'", order_by=["attributes.start_time DESC"])
    return result, runs[0]


def test_the_monitor_is_quiet_then_triggers_on_labels_then_on_a_shifted_column(store: Store, served):
    reference = served["reference"]
    _traffic(served, reference, "right")  # 200 labelled rows from the training distribution
    quiet, run = _monitor(store, served)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert run.data.tags["loop.trigger"] == "false" and run.data.tags["loop.version"] == "1"
    assert "no trigger; 200 labelled rows, 200 served rows read" in quiet.stdout
    assert run.data.metrics["monitor.accuracy"] == 1.0 and run.data.metrics["monitor.columns_drifted"] == 0

    _traffic(served, reference, "wrong")  # the labels turn against the model
    alarmed, run = _monitor(store, served)
    assert alarmed.returncode == 0, alarmed.stderr[-3000:]
    assert run.data.tags["loop.trigger"] == "true"
    assert run.data.tags["loop.reason"].startswith("performance: accuracy fell: CUSUM over h=13.8 after ")
    assert "TRIGGER: performance: accuracy fell" in alarmed.stdout
    assert json.loads(run.data.tags["loop.state"])["runs"] == 2  # carried from the first run

    column = reference.select_dtypes("number").columns[0]
    shifted = reference.assign(**{column: reference[column] + 5 * reference[column].std()})
    _traffic(served, shifted, None)
    moved, run = _monitor(store, served)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert run.data.tags["loop.reason"].startswith(f"inputs: 1 of {len(reference.columns)} columns drifted on 200 "
                                                   "served rows (test 3 at alpha ")
    assert f"{column} (psi " in run.data.tags["loop.reason"]
    quiet_again, run = _monitor(store, served, "loop.trigger=[performance]")  # nothing new: nothing decided
    assert run.data.tags["loop.trigger"] == "false", quiet_again.stderr[-3000:]


def test_a_monitor_that_cannot_read_the_records_fails_saying_why(store: Store, served, tmp_path):
    result, run = _monitor(store, served, f"serve.records={tmp_path / 'nowhere.db'}")
    assert result.returncode != 0 and run.info.status == "FAILED"
    (line,) = error_lines(result.stderr)
    assert "nowhere.db" in line, line


def test_a_trigger_retrains_on_the_rows_served_since_the_change_and_registers_a_challenger_only(
        store: Store, served, tmp_path):
    """The labels follow a new rule (each answer + 1, mod 3) from here on: the trigger's retrain
    trains on the labelled rows served since the change (loop.retrain.original=false: the old
    rule's data left out), passes the gate and registers version 2 as challenger; version 1 stays
    champion. Every run of the retrain, and version 2, name the monitor run that started it."""
    _traffic(served, served["reference"], "wrong")
    result, run = _monitor(store, served, "loop.retrain.enabled=true loop.retrain.original=false "
                                          f"loop.retrain.min_rows=50 loop.retrain.snapshot_dir={tmp_path} train.cv_folds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    tags, client = run.data.tags, store.client
    assert tags["loop.trigger"] == "true" and tags["loop.challenger"] == "2", result.stdout[-2000:]
    assert "the retrain registered wine_model v2 as challenger" in result.stdout
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(challenger.version) == "2" and challenger.tags["loop.monitor_run_id"] == run.info.run_id
    assert client.get_model_version_by_alias(MODEL, "champion").version == 1
    retrain = client.get_run(tags["loop.retrain_run_id"])
    assert retrain.info.status == "FINISHED" and retrain.data.tags["loop.monitor_run_id"] == run.info.run_id
    snapshot = pd.read_parquet(client.download_artifacts(run.info.run_id, tags["loop.snapshot"], str(tmp_path)))
    assert len(snapshot) == int(tags["loop.snapshot_rows"]) >= 50 and not snapshot.duplicated().any()
    ingest = client.search_runs([run.info.experiment_id], "tags.`pipeline.step` = 'ingest' and "
                                f"tags.`loop.monitor_run_id` = '{run.info.run_id}'")[0]
    assert ingest.data.tags["lineage.data_source"].endswith(tags["loop.snapshot"].split("/")[-1])


def test_a_retrain_that_fails_leaves_the_champion_serving_and_says_why(store: Store, served, tmp_path):
    _traffic(served, served["reference"], "wrong")
    result, run = _monitor(store, served, "loop.retrain.enabled=true loop.retrain.min_rows=50 "
                                          f"loop.retrain.snapshot_dir={tmp_path} \"loop.retrain.overrides='data.min_rows=100000'\"")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.data.tags["loop.trigger"] == "true" and run.data.tags["loop.challenger"] == ""
    assert "the retrain failed (exit " in result.stdout and "data.min_rows" in result.stdout, result.stdout[-2000:]
    assert "wine_model@champion keeps serving" in result.stdout
    assert store.client.get_model_version_by_alias(MODEL, "champion").version == 1
