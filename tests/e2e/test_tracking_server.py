"""Tracking-server mode: a real `mlflow server` (SQLite backend, artifacts proxied to S3 on moto's
server) that the pipeline reaches through MLFLOW_TRACKING_URI alone. The clients hold no AWS
credentials. The server is restarted between two steps and the pipeline carries on."""

from __future__ import annotations

import os
import re
import subprocess
import time

from mlflow.tracking import MlflowClient

from services import tracking_server_fixture
from support import BIN, ROOT

BUCKET = "team-server"

server = tracking_server_fixture(BUCKET)


def client_env(url: str) -> dict[str, str]:
    """A client that knows only the server's URL: no AWS variables, no S3 endpoint."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    return {**env, "MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true", "MLPIPE_SYSTEM_METRICS": "false",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def runs_of(client: MlflowClient, step: str) -> list:
    try:
        return client.search_runs(["0"], f"tags.`pipeline.step` = '{step}'")
    except Exception:  # noqa: BLE001 - the server is restarting
        return []


def test_the_pipeline_runs_unchanged_against_a_server_restarted_between_steps(server):
    mlflow_server, s3 = server
    client = MlflowClient(mlflow_server.url)
    cmd = [str(BIN / "python"), "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
           "-P", "steps=ingest,preprocess,train",
           "-P", "overrides=data=iris model=logistic_regression train.cv_folds=2 monitor.system_metrics=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=client_env(mlflow_server.url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not [r for r in runs_of(client, "ingest") if r.info.status == "FINISHED"]:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "ingest did not finish"
            time.sleep(0.2)
        mlflow_server.stop()  # between ingest and preprocess: the clients retry with backoff
        mlflow_server.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    assert mlflow_server.starts == 2
    outcomes = dict(re.findall(r"^(\w+) +\w{32} +(ran|cached) ", out, re.M))
    assert outcomes == dict.fromkeys(["ingest", "preprocess", "train"], "ran"), out
    keys = set(s3.keys(BUCKET, "artifacts/"))
    for step in ("ingest", "preprocess", "train"):
        (run,) = runs_of(client, step)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert any(k.endswith(f"{run.info.run_id}/artifacts/card/card.html") for k in keys), step
    model_id = runs_of(client, "train")[0].data.tags["pipeline.model_uri"].split("/")[-1]
    assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in keys), sorted(keys)[:20]


def test_a_registry_that_stops_answering_fails_register_and_moves_no_alias(server):
    """The registry (MLFLOW_REGISTRY_URI, through a TCP proxy to the same server) stops answering
    between qa and register: register fails with one line naming the lookup, `champion` stays,
    and main, once the registry is back, reuses ingest..qa and finishes from register."""
    from services import TcpProxy

    mlflow_server, _ = server
    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    client.create_experiment("registry-outage")
    proxy = TcpProxy(mlflow_server.port)
    env = client_env(mlflow_server.url) | {"MLFLOW_REGISTRY_URI": proxy.url}
    overrides = ("model=logistic_regression train.cv_folds=2 monitor.system_metrics=false "
                 "storage.http.max_retries=1 storage.http.backoff_factor=0")
    cmd = [str(BIN / "python"), "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local",
           "--experiment-name", "registry-outage"]

    def main(steps: str, promotion: str = "always") -> subprocess.CompletedProcess:
        # promotion=always after the first run: a register that would move champion (a new key, so it runs)
        return subprocess.run([*cmd, "-P", f"steps={steps}", "-P", f"overrides={overrides} registry.promotion={promotion}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    try:
        first = main("ingest,preprocess,train,qa,register", promotion="better")
        assert first.returncode == 0, first.stderr[-3000:]
        assert str(client.get_model_version_by_alias("wine_model", "champion").version) == "1"

        proxy.down()
        failed = main("register")
        assert failed.returncode != 0, failed.stdout[-3000:] + failed.stderr[-3000:]
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, failed.stderr[-3000:]
        assert "step register failed" in errors[0] and "StorageError" in errors[0]
        assert "the model registry did not answer the lookup of wine_model@champion" in errors[0]
        assert "no alias was moved" in errors[0]
        assert str(client.get_model_version_by_alias("wine_model", "champion").version) == "1"
        assert len(client.search_model_versions("name='wine_model'")) == 1

        proxy.up()
        again = main("ingest,preprocess,train,qa,register")
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        proxy.down()
    outcomes = dict(re.findall(r"^(\w+) +\w{32} +(ran|cached) ", again.stdout, re.M))
    assert outcomes == {"ingest": "cached", "preprocess": "cached", "train": "cached", "qa": "cached",
                        "register": "ran"}, again.stdout
    assert str(client.get_model_version_by_alias("wine_model", "champion").version) == "2"
