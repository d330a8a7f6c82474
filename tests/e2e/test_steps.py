"""Single steps through `mlflow run . -e <step>`: upstream ids given, picked, or missing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from support import ROOT, Store, error_lines


@pytest.mark.slow
def test_step_without_any_upstream_names_the_step_to_run_first(fresh_store: Store):
    result = fresh_store.mlflow_run(entry="train")
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        "error: train: UpstreamError: no finished preprocess run in experiment 0; run it first: "
        "mlflow run . -e preprocess (or pass -P preprocess_run_id=<id>)"
    ]
    run = fresh_store.newest("tags.`mlflow.project.entryPoint` = 'train'")
    assert run.info.status == "FAILED"


@pytest.fixture(scope="module")
def prepared(store: Store):
    store.mlflow_run(entry="ingest", check=True)
    ingest = store.step_runs("ingest")[-1]
    # fit_worker_min_mb=0: the transformer is fitted in preprocess's worker process even for wine
    store.mlflow_run("-P", f"ingest_run_id={ingest.info.run_id}", "-P", "overrides=preprocess.fit_worker_min_mb=0",
                     entry="preprocess", check=True)
    return ingest, store.step_runs("preprocess")[-1]


def test_steps_chain_by_run_id(store: Store, prepared):
    ingest, preprocess = prepared
    assert preprocess.data.params["ingest_run_id"] == ingest.info.run_id
    assert preprocess.data.tags["lineage.ingest_run_id"] == ingest.info.run_id
    assert preprocess.data.tags["preprocess.fitted_in"] == "worker"
    store.mlflow_run("-P", f"preprocess_run_id={preprocess.info.run_id}", entry="train", check=True)
    train = store.step_runs("train")[-1]
    assert train.info.status == "FINISHED"
    assert train.data.params["preprocess_run_id"] == preprocess.info.run_id
    assert train.data.metrics["validation.accuracy"] > 0.7  # the worker's transformer serves the model


@pytest.mark.slow
def test_step_without_id_uses_newest_finished_upstream_and_says_which(store: Store, prepared):
    _, preprocess = prepared
    result = store.mlflow_run(entry="train", check=True)
    assert f"using the newest finished preprocess run {preprocess.info.run_id}" in result.stderr
    train = store.step_runs("train")[-1]
    assert train.data.tags["pipeline.preprocess_run_id"] == preprocess.info.run_id


@pytest.mark.slow
def test_upstream_id_of_the_wrong_step_is_refused(store: Store, prepared):
    ingest, _ = prepared
    result = store.mlflow_run("-P", f"preprocess_run_id={ingest.info.run_id}", entry="train")
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        f"error: train: UpstreamError: preprocess_run_id={ingest.info.run_id} is a run of step 'ingest', not 'preprocess'"
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_alone_serves_the_champion_until_interrupted(store: Store, prepared):
    # the same preprocess config as `prepared`, so main finds its run
    store.mlflow_run("-P", "steps=train,qa,register", "-P", "overrides=preprocess.fit_worker_min_mb=0", check=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager", "local",
           "-P", f"overrides=serve.port={port}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=store.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not answer /ping"
                time.sleep(0.5)
        row = {"columns": ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
                           "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                           "od280/od315_of_diluted_wines", "proline"],
               "data": [[13.2, 1.78, 2.14, 11.2, 100.0, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050.0]]}
        req = urllib.request.Request(f"{base}/invocations", data=json.dumps({"dataframe_split": row}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["predictions"] == [0]
        bad = urllib.request.Request(f"{base}/invocations", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    serve = store.newest("tags.`mlflow.project.entryPoint` = 'serve'")
    assert serve.data.tags["pipeline.model_uri"] == "models:/wine_model@champion"
    assert "pipeline.cache_key" not in serve.data.tags


def test_make_run_keeps_each_datasets_runs_in_an_experiment_of_its_name(fresh_store: Store):
    """`make run` names the experiment after the dataset (OVERRIDES' data=, else the default), and
    its store line then has no hint; MLFLOW_EXPERIMENT_NAME still wins."""
    env = {k: v for k, v in fresh_store.env.items() if not k.startswith(("MLFLOW_EXPERIMENT_", "MAKE", "MFLAGS"))}

    def make_run(overrides: str, **extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["make", "--no-print-directory", "run", f"OVERRIDES={overrides}"], cwd=ROOT,
                                env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    iris = make_run("data=iris main.steps=[ingest]")
    wine = make_run("main.steps=[ingest]")
    chosen = make_run("data=iris main.steps=[ingest]", MLFLOW_EXPERIMENT_NAME="mine")
    for result, name in ((iris, "iris"), (wine, "wine"), (chosen, "mine")):
        experiment = fresh_store.client.get_experiment_by_name(name)
        (parent,) = fresh_store.client.search_runs([experiment.experiment_id], "tags.`pipeline.role` = 'pipeline'")
        (where,) = [line for line in result.stderr.splitlines() if line.startswith("[mlpipe] tracking store ")]
        assert where.startswith(f'[mlpipe] tracking store {fresh_store.uri}, experiment "{name}" '
                                f"(id {experiment.experiment_id}), run {parent.info.run_id}"), where
        assert "Default holds" not in where
        assert parent.data.params["data.name"] == ("wine" if result is wine else "iris")


def test_steps_run_alone_from_another_folder_say_where_they_logged_and_print_what_main_prints(fresh_store: Store,
                                                                                            tmp_path):
    """No MLFLOW_TRACKING_URI: MLflow makes ./mlflow.db in the folder `mlflow run` started from;
    the step's first line names that file and says it is new. A step alone prints its one line,
    as `main` does for it, without MLflow's INFO/WARNING lines and download bars (main.log=quiet);
    main.log=full brings them back."""
    env = {k: v for k, v in fresh_store.env.items() if k != "MLFLOW_TRACKING_URI"}

    def step(entry: str, *params: str) -> subprocess.CompletedProcess:
        result = subprocess.run([fresh_store.python_exe, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager",
                                 "local", *params], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    ingest = step("ingest", "-P", "overrides=data=iris")
    (where,) = [line for line in ingest.stderr.splitlines() if line.startswith("[mlpipe] tracking store ")]
    assert where.startswith(f'[mlpipe] tracking store sqlite:///{tmp_path}/mlflow.db, experiment "Default" (id 0), '
                            "run "), where
    assert where.endswith("; a new store: no run before this one (set MLFLOW_TRACKING_URI to use another); Default "
                          "holds every dataset's runs: --experiment-name iris keeps these apart (make run does)"), where
    assert re.fullmatch(r"\[mlpipe\] ingest ran in [\d.]+ s: rows=150 task=classification\n", ingest.stdout), ingest.stdout
    step("preprocess", "-P", "overrides=data=iris")
    train = step("train", "-P", "overrides=data=iris model=logistic_regression")
    assert re.fullmatch(r"\[mlpipe\] train ran in [\d.]+ s: validation\.accuracy=[\d.]+\n", train.stdout), train.stdout
    assert "a new store" not in train.stderr  # the same store, found again
    ours = [line for line in train.stderr.splitlines() if " mlflow." not in line]  # `mlflow run`'s own INFO lines aside
    assert not [line for line in ours if "Downloading artifacts" in line or "WARNING" in line], ours
    full = step("train", "-P", "overrides=data=iris model=logistic_regression main.log=full")
    assert "WARNING mlflow.sklearn: Saving scikit-learn models in the pickle" in full.stderr
