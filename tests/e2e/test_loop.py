"""The closed loop through the real interfaces: a model registered by `mlflow run`, a real server
(`mlflow run -e serve`) keeping its input rows, labels sent to /feedback, and `mlflow run -e
monitor` reading the records: quiet on the training distribution, a trigger after the labels turn
against the model, and another after an input column shifts; a retrain that fails, and a trigger
that retrains on the served rows and registers a challenger only; the server's canary arm on the
challenger, promoted when it wins the sequential A/B test, and a deliberately worse retrain's
challenger (trained on a labelling incident's rows) rolled back when it loses; a store
the monitor cannot read is a FAILED run that says why."""

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
    """wine_model v1 from a pipeline run, served with its records kept and a canary arm on the
    challenger alias (half the requests while it exists); the reference rows its preprocess run
    logged (the training distribution) to send."""
    store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", check=True)
    version = store.client.get_model_version_by_alias(MODEL, "champion")
    folder = tmp_path_factory.mktemp("loop")
    reference = pd.read_parquet(store.client.download_artifacts(version.tags["lineage.preprocess_run_id"],
                                                                "data/drift_reference.parquet", str(folder)))
    port, records = free_port(), folder / "records.db"
    server = Server(store, folder / "server.log", ["run", ".", "-e", "serve", "--env-manager", "local", "-P",
                                                   f"overrides=serve.port={port} serve.records={records} "
                                                   "serve.experiment=loop serve.records_flush_ms=50 "
                                                   "serve.canary.alias=challenger serve.canary.weight=0.5 "
                                                   "serve.refresh_seconds=1"], port)
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
    card = json.loads(open(store.client.download_artifacts(run.info.run_id, "card/summary.json", str(store.path))).read())
    (title,) = [s for s in card["sections"] if s.startswith("Permutation importance, the drop in accuracy")]
    assert "vs the newest 200 labelled served rows; largest change first" in title, title

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


def test_a_retrain_that_fails_leaves_the_champion_serving_and_says_why(store: Store, served, tmp_path):
    _traffic(served, served["reference"], "wrong")
    result, run = _monitor(store, served, "loop.retrain.enabled=true loop.retrain.min_rows=50 "
                                          f"loop.retrain.snapshot_dir={tmp_path} \"loop.retrain.overrides='data.min_rows=100000'\"")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.data.tags["loop.trigger"] == "true" and run.data.tags["loop.challenger"] == ""
    assert "the retrain failed (exit " in result.stdout and "data.min_rows" in result.stdout, result.stdout[-2000:]
    assert "wine_model@champion keeps serving" in result.stdout
    assert store.client.get_model_version_by_alias(MODEL, "champion").version == 1


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


def _variants(served) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads(http(f"{served['server'].url}/variants")[2])["variants"]}


def _until(served, check, timeout: float = 20.0) -> dict[str, dict]:
    """The server's variants once `check` holds of them (the alias pick-up runs every second)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = _variants(served)
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _canary_traffic(served, rows: pd.DataFrame, right_arm: str, requests: int = 60, size: int = 5) -> None:
    """Labels by the rule `right_arm` answers by: its answers are right, the other arm's are
    shifted by one class (the new rule is the old model's answer + 1)."""
    url = served["server"].url
    for i in range(requests):
        status, headers, body = http(f"{url}/invocations", records_body(rows.sample(size, replace=True, random_state=i)))
        assert status == 200, body
        answers = json.loads(body)["predictions"]
        right = headers["X-Variant"] == right_arm
        truth = answers if right else [(a + 1) % 3 if right_arm == "canary" else (a - 1) % 3 for a in answers]
        assert label(url, headers, truth) == 200


def test_the_canary_wins_the_sequential_test_and_is_promoted(store: Store, served):
    """The server picked version 2 up as its canary arm; labels by the new rule: the next monitor
    run reads the A/B test since version 2 was registered, promotes it (its evidence on the
    version), removes the challenger alias; the server then serves version 2 and the canary is off."""
    client = store.client
    arms = _until(served, lambda v: v["canary"]["model_version"] == "2")
    assert arms["canary"]["model_version"] == "2" and arms["canary"]["weight"] == 0.5, arms
    _canary_traffic(served, served["reference"], "canary")
    result, run = _monitor(store, served, "serve.ab.min_samples=30")
    assert result.returncode == 0, result.stderr[-3000:]
    tags = run.data.tags
    assert (tags["loop.decision"], tags["loop.promoted"], tags["loop.replaced"]) == ("promote", "2", "1"), tags
    assert "canary v2 wins: promote canary: better than default" in result.stdout
    assert client.get_model_version_by_alias(MODEL, "champion").version == 2
    assert "challenger" not in client.get_registered_model(MODEL).aliases
    assert json.loads(client.get_model_version(MODEL, "2").tags["ab.evidence"])["winner"] == "canary"
    assert tags["loop.version"] == "2"  # this run already watches the new champion (a new baseline)
    arms = _until(served, lambda v: v["default"]["model_version"] == "2" and v["canary"]["weight"] == 0)
    assert (arms["default"]["model_version"], arms["canary"]["weight"]) == ("2", 0), arms


def test_a_deliberately_worse_retrain_is_canaried_and_rolled_back(store: Store, served, tmp_path):
    """A labelling incident: for 40 requests every label is off by one class from version 2's
    rule. Version 2's accuracy falls, the trigger's retrain learns the incident's rule from those
    rows, passes the gate on them (version 2 is wrong on its test split) and registers version 3
    as challenger. The labels then follow version 2's rule again: the canary loses the sequential
    test, the monitor rolls it back (the challenger alias removed, the champion unchanged) and
    the server's canary arm goes back to weight 0."""
    client = store.client
    _traffic(served, served["reference"], "right")  # version 2's baseline (100 labelled rows)
    _traffic(served, served["reference"], "wrong")  # the incident
    result, run = _monitor(store, served, "loop.retrain.enabled=true loop.retrain.original=false "
                                          f"loop.retrain.min_rows=50 loop.retrain.snapshot_dir={tmp_path} train.cv_folds=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.data.tags["loop.version"] == "2" and run.data.tags["loop.challenger"] == "3", result.stdout[-2000:]
    worse = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(worse.version) == "3" and worse.tags["loop.monitor_run_id"] == run.info.run_id
    arms = _until(served, lambda v: v["canary"]["model_version"] == "3" and v["canary"]["weight"] > 0)
    assert (arms["canary"]["model_version"], arms["canary"]["weight"]) == ("3", 0.5), arms
    _canary_traffic(served, served["reference"], "default")
    result, run = _monitor(store, served, "serve.ab.min_samples=30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.data.tags["loop.decision"] == "rollback", run.data.tags
    assert "canary v3 loses: keep default: canary significantly worse" in result.stdout
    assert client.get_model_version_by_alias(MODEL, "champion").version == 2
    assert "challenger" not in client.get_registered_model(MODEL).aliases
    assert _until(served, lambda v: v["canary"]["weight"] == 0)["canary"]["weight"] == 0


def test_the_local_loop_runs_a_tick_every_interval_and_stops_cleanly_on_ctrl_c(store: Store, served, tmp_path):
    """`python -m mlpipe.loop --every 1`: a line per tick; the first Ctrl-C lets the tick in
    progress finish and exits 0. A tick that cannot read the records is said, and the loop goes on."""
    import signal
    import subprocess
    import sys

    from support import ROOT

    loop = [sys.executable, "-m", "mlpipe.loop"]
    failing = subprocess.run([*loop, "--every", "1", "--ticks", "1", "--", *MONITOR.split(),
                              f"serve.records={tmp_path / 'nowhere.db'}"], cwd=ROOT, env=store.env,
                             capture_output=True, text=True, timeout=300)
    assert failing.returncode == 0, failing.stderr[-3000:]
    assert "[loop] tick 1: tick failed (exit " in failing.stdout and "nowhere.db" in failing.stdout, failing.stdout
    assert "the champion keeps serving" in failing.stdout and "[loop] stopped after 1 tick" in failing.stdout

    proc = subprocess.Popen([*loop, "--every", "1", "--", *MONITOR.split(), f"serve.records={served['records']}"],
                            cwd=ROOT, env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # bounded: each tick is a monitor run of a few seconds
        lines.append(line.rstrip())
        if line.startswith("[loop] tick 2: "):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    lines += rest.splitlines()
    assert proc.returncode == 0, err[-3000:]
    assert lines[0].startswith("[loop] tick 1: monitor ran in ") and "wine_model v2: no trigger" in lines[0], lines
    assert lines[-1].startswith("[loop] stopped after ") and "Traceback" not in err, lines


def test_a_monitor_that_cannot_read_the_records_fails_saying_why(store: Store, served, tmp_path):
    result, run = _monitor(store, served, f"serve.records={tmp_path / 'nowhere.db'}")
    assert result.returncode != 0 and run.info.status == "FAILED"
    (line,) = error_lines(result.stderr)
    assert "nowhere.db" in line, line
