"""hydra/launcher=ray: a 4-job sweep on a two-node Ray cluster (two `ray start` processes on
127.0.0.1, one CPU each). The nodes share nothing with the driver but a real `mlflow server`
whose artifacts are on moto's S3 server: no process but moto's and the server's holds AWS
credentials, and the nodes run and compose from Ray's copy of the project, not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from services import RAY_ENV, RayNode, tracking_server_fixture
from support import BIN, ROOT

BUCKET = "ray-sweep"

server = tracking_server_fixture(BUCKET)


@pytest.fixture(scope="module")
def cluster():
    # Ray's socket paths must stay short: not under pytest's deep temp folders.
    folder = Path(tempfile.mkdtemp(prefix="mlpipe-ray-"))
    head = RayNode("head", folder / "ray")
    nodes = [head]
    try:
        wait_for_nodes(head, 1)
        nodes.append(RayNode("node", folder / "ray", address=head.address))
        wait_for_nodes(head, 2)
        yield head
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(folder, ignore_errors=True)  # Ray's session, with its copies of the code


def wait_for_nodes(head: RayNode, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([str(BIN / "ray"), "status", f"--address={head.address}"], capture_output=True,
                                text=True, env={**os.environ, **RAY_ENV})
        if status.stdout.count(" 1 node_") >= count:  # `ray status`: one line per active node
            return
        assert head.proc.poll() is None, (head.log.name, Path(head.log.name).read_text()[-2000:])
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {head.address} did not reach {count} nodes in {timeout} s")


@pytest.fixture(scope="module")
def ray_sweep(server, cluster):
    mlflow_server, s3 = server
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_")) and k != "MLPIPE_WARM_SOCKET"}
    env |= {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLPIPE_SYSTEM_METRICS": "false", **RAY_ENV,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    result = subprocess.run(
        [str(BIN / "python"), "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local", "-P",
         f"overrides=-m hydra/launcher=ray hydra.launcher.address={cluster.address} model.max_depth=2 "
         "model.n_estimators=5,10,20,40"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    client = MlflowClient(mlflow_server.url)
    (parent,) = client.search_runs(["0"], "tags.`pipeline.role` = 'sweep'")
    jobs = client.search_runs(["0"], f"tags.`pipeline.sweep_run_id` = '{parent.info.run_id}'")
    return client, s3, parent, jobs, result


def step_runs(client: MlflowClient, step: str) -> list:
    return client.search_runs(["0"], f"tags.`pipeline.step` = '{step}'")


def test_jobs_spread_over_both_nodes(ray_sweep):
    _, _, parent, jobs, result = ray_sweep
    assert parent.info.status == "FINISHED"
    assert len(jobs) == 4 and all(j.info.status == "FINISHED" for j in jobs)
    nodes = {j.data.tags["pipeline.node"] for j in jobs}
    assert len(nodes) == 2, nodes
    spans = sorted((j.info.start_time, j.info.end_time) for j in jobs)
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:])), spans  # two at a time
    assert "Ray cluster at" in result.stdout + result.stderr and "2 node(s), 2 CPUs" in result.stdout + result.stderr


def test_the_nodes_ran_the_code_ray_shipped_not_the_checkout(ray_sweep, cluster):
    client, _, _, jobs, _ = ray_sweep
    trains = step_runs(client, "train")
    assert len(trains) == 4
    for run in trains:
        source = run.data.tags["mlflow.source.name"]
        assert "runtime_resources/working_dir_files" in source and not source.startswith(str(ROOT)), source
    # each job composed its config from the node's copy, and wrote its Hydra folder there
    written = {p.resolve() for p in  # session_latest links the session itself
               cluster.temp_dir.glob("session_*/runtime_resources/working_dir_files/*/multirun/*/*/*/.hydra/hydra.yaml")}
    assert len(written) == 4, written
    for path in written:
        sources = yaml.safe_load(path.read_text())["hydra"]["runtime"]["config_sources"]
        (main,) = [s["path"] for s in sources if s["provider"] == "main"]
        assert main == f"{path.parents[5]}/conf", main


def test_shared_steps_ran_once_and_only_the_best_job_registers(ray_sweep):
    client, _, parent, jobs, _ = ray_sweep
    assert [len(step_runs(client, s)) for s in ("ingest", "preprocess", "train", "qa", "register")] == [1, 1, 4, 4, 1]
    best = max(jobs, key=lambda j: j.data.metrics["pipeline.score"])
    assert parent.data.tags["sweep.best_job_run_id"] == best.info.run_id
    champion = client.get_model_version_by_alias("wine_model", "champion")
    assert champion.tags["lineage.qa_run_id"] == best.data.tags["pipeline.qa_run_id"]


def test_every_job_wrote_its_artifacts_to_the_bucket_through_the_server(ray_sweep):
    client, s3, _, _, _ = ray_sweep
    keys = s3.keys(BUCKET, "artifacts/")
    for run in step_runs(client, "qa"):
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert any(k.endswith(f"{run.info.run_id}/artifacts/qa_report.json") for k in keys), run.info.run_id
