"""Artifacts on S3 (moto's server mode, a real HTTP endpoint in its own process), the probe, the
local fallback and its failures, through `mlflow run . -e main` against a SQLite store."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import mlflow
import pytest
from sklearn.datasets import load_wine

from services import CREDENTIALS, MotoS3, TcpProxy, free_port
from support import Store, error_lines

BUCKET = "team-artifacts"
LOCATION = f"s3://{BUCKET}/mlpipe/mlpipe"
# Quick steps: these tests are about where artifacts go, not about the model.
FAST = "model=logistic_regression train.cv_folds=2 monitor.system_metrics=false"
QUICK_RETRY = "storage.retry.initial_wait=0.1 storage.retry.max_wait=0.5 storage.retry.jitter=0.1"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    server.client().create_bucket(Bucket=BUCKET)
    frame = load_wine(as_frame=True).frame
    server.client().put_object(Bucket=BUCKET, Key="data/wine.csv", Body=frame.to_csv(index=False).encode())
    yield server
    server.stop()


def env_for(store: Store, endpoint: str) -> dict[str, str]:
    return {**store.env, **CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def pipeline(store: Store, endpoint: str, extra: str = "", steps: str = "ingest,preprocess,train", **kwargs):
    overrides = f"storage=s3 storage.bucket={BUCKET} {FAST} {QUICK_RETRY} {extra}"
    return store.mlflow_run("-P", f"steps={steps}", "-P", f"overrides={overrides}", env=env_for(store, endpoint),
                            **kwargs)


def ingest(store: Store, endpoint: str, extra: str, **kwargs):
    """`mlflow run . -e ingest` alone, in the S3 experiment (one process fewer than main)."""
    experiment(store)
    overrides = f"storage=s3 storage.bucket={BUCKET} {FAST} {QUICK_RETRY} {extra}"
    return store.mlflow_run("--experiment-name", "mlpipe", "-P", f"overrides={overrides}", entry="ingest",
                            env=env_for(store, endpoint), **kwargs)


def experiment(store: Store) -> str:
    """The S3 experiment, as main creates it (for tests that run a single step first)."""
    found = store.client.get_experiment_by_name("mlpipe")
    return found.experiment_id if found else store.client.create_experiment("mlpipe", artifact_location=LOCATION)


def step_runs(store: Store, step: str) -> list:
    experiment = store.client.get_experiment_by_name("mlpipe")
    return store.client.search_runs([experiment.experiment_id], f"tags.`pipeline.step` = '{step}'",
                                    order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def on_s3(store: Store, s3):
    """One pipeline (ingest, preprocess, train) whose data and artifacts are on S3."""
    result = pipeline(store, s3.url, f"data.source=s3://{BUCKET}/data/wine.csv data.target=target")
    assert result.returncode == 0, result.output[-4000:]
    return result


def test_every_step_stores_its_artifacts_in_the_bucket(store: Store, s3, on_s3):
    experiment = store.client.get_experiment_by_name("mlpipe")
    assert experiment.artifact_location == LOCATION
    keys = set(s3.keys(BUCKET, "mlpipe/mlpipe/"))
    for step in ("ingest", "preprocess", "train"):
        (run,) = step_runs(store, step)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri == f"{LOCATION}/{run.info.run_id}/artifacts"
        assert "storage.fallback" not in run.data.tags
        assert f"mlpipe/mlpipe/{run.info.run_id}/artifacts/card/card.html" in keys, step
    (ingest,) = step_runs(store, "ingest")
    assert f"mlpipe/mlpipe/{ingest.info.run_id}/artifacts/data/raw.parquet" in keys
    assert ingest.data.tags["lineage.data_source"] == f"s3://{BUCKET}/data/wine.csv"
    assert not [k for k in keys if ".mlpipe-probe-" in k], "the probe leaves nothing behind"
    assert "STORAGE FALLBACK" not in on_s3.stderr


def test_the_model_is_stored_on_s3_and_loads_from_there(store: Store, s3, on_s3, monkeypatch):
    for key, value in {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.url}.items():
        monkeypatch.setenv(key, value)
    (train,) = step_runs(store, "train")
    model_uri = train.data.tags["pipeline.model_uri"]
    model = store.client.get_logged_model(model_uri.split("/")[-1])
    assert model.artifact_location == f"{LOCATION}/models/{model.model_id}/artifacts"
    assert f"mlpipe/mlpipe/models/{model.model_id}/artifacts/MLmodel" in s3.keys(BUCKET, "mlpipe/mlpipe/models/")
    mlflow.set_tracking_uri(store.uri)
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    rows = load_wine(as_frame=True).frame.drop(columns="target").head(3)
    assert list(loaded.predict(rows)) == [0, 0, 0]


def test_s3_down_at_start_falls_back_to_local_disk_loudly(store: Store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fallback = tmp_path / "fallback"
    result = pipeline(store, dead, f"storage.fallback_dir={fallback}", steps="ingest,preprocess,train")
    assert result.returncode == 0, result.output[-4000:]
    assert result.stderr.count("STORAGE FALLBACK") == 3  # once per step, not once per write
    for step in ("ingest", "preprocess", "train"):
        run = step_runs(store, step)[-1]
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["storage.fallback"] == "true"
        assert "EndpointConnectionError" in tags["storage.fallback_reason"]
        assert "4 attempt(s)" in tags["storage.fallback_reason"]
        assert tags["storage.original_artifact_uri"] == f"{LOCATION}/{run.info.run_id}/artifacts"
        # The run says where its artifacts are, and they are there.
        local = fallback / run.info.experiment_id / run.info.run_id / "artifacts"
        assert run.info.artifact_uri == local.as_uri()
        assert (local / "card" / "card.html").is_file()
        assert store.client.list_artifacts(run.info.run_id)
    train = step_runs(store, "train")[-1]
    model_uri = train.data.tags["pipeline.model_uri"]
    model = store.client.get_logged_model(model_uri.split("/")[-1])
    assert model.artifact_location.startswith((fallback / train.info.experiment_id / "models").as_uri())
    mlflow.set_tracking_uri(store.uri)
    try:
        assert mlflow.sklearn.load_model(model_uri).predict(load_wine(as_frame=True).data.head(1)) is not None
    finally:
        mlflow.set_tracking_uri(None)
    # A fallback run is never a cache hit: the next pipeline runs ingest again.
    again = pipeline(store, dead, f"storage.fallback_dir={fallback}", steps="ingest", check=True)
    assert re.search(r"^ingest +\w+ +ran ", again.stdout, re.M), again.stdout
    assert len([r for r in step_runs(store, "ingest") if r.data.tags.get("storage.fallback")]) == 2


def test_s3_down_with_fallback_off_fails_the_step_and_writes_nothing(store: Store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    fallback = tmp_path / "fallback"
    result = ingest(store, dead, f"storage.fallback=false storage.fallback_dir={fallback}")
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    run = step_runs(store, "ingest")[-1]
    assert line.startswith(f"error: ingest: StorageError: S3 is unreachable for {LOCATION}/{run.info.run_id}/")
    assert "(storage.fallback=false)" in line and "EndpointConnectionError" in line
    assert run.info.status == "FAILED" and run.data.tags["error.type"] == "StorageError"
    assert not fallback.exists()


def test_invalid_credentials_are_a_clear_error_without_retries_or_fallback(store: Store, tmp_path):
    strict = MotoS3(tmp_path / "moto.log", auth=True)  # checks keys: ours are unknown to it
    try:
        started = time.monotonic()
        result = ingest(store, strict.url, f"storage.fallback_dir={tmp_path / 'fallback'}", timeout=300)
        elapsed = time.monotonic() - started
    finally:
        strict.stop()
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: ingest: StorageError: S3 refused {LOCATION}/")
    assert "InvalidAccessKeyId" in line and "check the credentials" in line
    assert not (tmp_path / "fallback").exists()
    assert "STORAGE FALLBACK" not in result.stderr
    assert step_runs(store, "ingest")[-1].info.status == "FAILED"
    print(f"invalid credentials failed in {elapsed:.1f} s")


def test_an_unwritable_fallback_folder_fails_the_step_and_writes_nothing(store: Store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "a-file").write_text("not a folder")
    result = ingest(store, dead, f"storage.fallback_dir={tmp_path / 'a-file' / 'fallback'}")
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: ingest: StorageError: fallback folder (storage.fallback_dir)")
    assert "is not writable: Not a directory" in line
    run = step_runs(store, "ingest")[-1]
    assert run.info.status == "FAILED"
    assert run.info.artifact_uri.startswith(LOCATION)  # not re-pointed at a folder that does not work


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a tiny tmpfs")
def test_a_full_fallback_disk_fails_the_step_it_is_never_reused(store: Store, tmp_path):
    """An 8 KB tmpfs as the fallback folder, mounted in a private mount namespace: the probe's
    small file fits, the step's artifacts do not."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm is not permitted here: {probe.stderr.decode().strip()}")
    mount = tmp_path / "small"
    mount.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    overrides = (f"storage=s3 storage.bucket={BUCKET} {FAST} {QUICK_RETRY} storage.fallback_dir={mount} "
                 "storage.min_free_mb=0")
    experiment(store)
    script = (f"mount -t tmpfs -o size=8k tmpfs {mount} && exec {store.python_exe} -m mlflow run . -e ingest "
              f"--env-manager local --experiment-name mlpipe -P 'overrides={overrides}'")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=store.root, env=env_for(store, dead),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    run = step_runs(store, "ingest")[-1]
    assert line.startswith("error: ingest: StorageError: writing artifacts failed"), line
    assert "No space left on device" in line
    assert run.info.status == "FAILED" and run.data.tags["storage.fallback"] == "true"


def test_s3_lost_mid_pipeline_fails_clearly_then_main_resumes(store: Store, s3):
    """The endpoint goes away once preprocess has finished: train cannot read its input, fails
    with the reason; with S3 back, the next main reuses ingest and preprocess and runs the rest."""
    proxy = TcpProxy(s3.port)
    try:
        overrides = f"storage=s3 storage.bucket={BUCKET} {FAST} {QUICK_RETRY} data=iris"
        cmd = [store.python_exe, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
               "-P", "steps=ingest,preprocess,train", "-P", f"overrides={overrides}"]
        proc = subprocess.Popen(cmd, cwd=store.root, env=env_for(store, proxy.url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not [r for r in step_runs_or_none(store, "preprocess")
                       if r.info.status == "FINISHED" and r.data.tags.get("lineage.data_source") == "sklearn:iris"]:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "preprocess did not finish"
                time.sleep(0.2)
            proxy.down()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0
        (line,) = error_lines(err)
        preprocess = [r for r in step_runs(store, "preprocess") if r.data.tags.get("lineage.data_source") == "sklearn:iris"][-1]
        assert "step train failed" in line and "StorageError" in line
        assert f"of run {preprocess.info.run_id} from {LOCATION}/{preprocess.info.run_id}/artifacts" in line
        assert "EndpointConnectionError" in line
        failed_train = step_runs(store, "train")[-1]
        assert failed_train.info.status == "FAILED"

        proxy.up()
        resumed = subprocess.run(cmd, cwd=store.root, env=env_for(store, proxy.url), capture_output=True,
                                 text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        outcomes = dict(re.findall(r"^(\w+) +\w{32} +(ran|cached) ", resumed.stdout, re.M))
        assert outcomes == {"ingest": "cached", "preprocess": "cached", "train": "ran"}, resumed.stdout
        train = step_runs(store, "train")[-1]
        assert train.info.run_id != failed_train.info.run_id and train.info.status == "FINISHED"
        assert train.data.tags["pipeline.preprocess_run_id"] == preprocess.info.run_id
        assert "storage.fallback" not in train.data.tags
        assert train.info.artifact_uri.startswith(LOCATION)
    finally:
        proxy.down()


def step_runs_or_none(store: Store, step: str) -> list:
    return step_runs(store, step) if store.client.get_experiment_by_name("mlpipe") else []
