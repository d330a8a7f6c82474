"""mlpipe/pipeline/backends.py and the driver's Kubernetes path: the backend config, the checks
before any step, what `mlflow.run` is given, and how a step that could not start (or whose pod
ran other code) is reported. MLflow's own rendering of the Job is in tests/unit/deploy/."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from mlflow.entities import Run, RunData, RunInfo, RunTag
from mlflow.exceptions import ExecutionException

from mlpipe.config import PROJECT_ROOT, compose
from mlpipe.errors import ConfigError, StepFailedError
from mlpipe.pipeline import backends, driver, launch


@pytest.fixture(scope="module")
def kube_cfg():
    return compose(["main.backend=kubernetes"])


# -- main.backend_config ----------------------------------------------------------------------


def test_the_projects_backend_config_is_read_with_an_absolute_template_path():
    config = backends.kubernetes_config("deploy/kubernetes/kubernetes_config.json")
    assert config["kube-job-template-path"] == str(PROJECT_ROOT / "deploy/kubernetes/kubernetes_job_template.yaml")
    assert config["repository-uri"] and config["kube-context"]


@pytest.mark.parametrize("content, words", [
    (None, ["no such file"]),
    ("{not json", ["not readable JSON"]),
    ("[]", ["holds a list"]),
    ('{"kube-job-template-path": "deploy/kubernetes/kubernetes_job_template.yaml"}', ["no repository-uri"]),
    ('{"repository-uri": "r/x"}', ["no kube-job-template-path"]),
    ('{"repository-uri": "r/x", "kube-job-template-path": "nope.yaml"}', ["kube-job-template-path nope.yaml is no file"]),
])
def test_a_bad_backend_config_is_a_config_error_naming_the_key(tmp_path, content, words):
    path = tmp_path / "kube.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        backends.kubernetes_config(str(path))
    assert f"main.backend_config={path}" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_mlflow_run_args_per_backend(kube_cfg):
    local = backends.mlflow_run_args(compose([]), "uv")
    assert local == {"uri": str(PROJECT_ROOT), "env_manager": "uv", "synchronous": True}
    kube = backends.mlflow_run_args(kube_cfg, "uv")
    assert kube["uri"] == str(PROJECT_ROOT / "deploy" / "kubernetes")
    assert (kube["backend"], kube["build_image"], kube["synchronous"]) == ("kubernetes", True, False)
    assert kube["backend_config"]["kube-job-template-path"].startswith("/")
    assert "env_manager" not in kube  # the image is the environment


# -- the tracking store the pods get ----------------------------------------------------------


@pytest.mark.parametrize("driver_uri, pod_uri", [
    ("http://mlflow.mlpipe:5000", None),
    ("https://mlflow.example.com", None),
    ("http://127.0.0.1:5000", "http://mlflow.mlpipe.svc:5000"),  # a port-forward here, the service there
    ("postgresql://mlflow@db.internal:5432/mlflow", None),
])
def test_a_store_the_pods_reach_passes(driver_uri, pod_uri):
    backends.check_tracking_uris(driver_uri, pod_uri)


@pytest.mark.parametrize("driver_uri, pod_uri, words", [
    ("sqlite:////tmp/x/mlflow.db", None, ["sqlite:////tmp/x/mlflow.db is a file on this machine", "MLFLOW_TRACKING_URI"]),
    ("sqlite:////tmp/x/mlflow.db", "http://mlflow.mlpipe:5000", ["is a file on this machine"]),
    ("/tmp/mlruns", None, ["is a file on this machine"]),
    ("http://127.0.0.1:5050", None, ["http://127.0.0.1:5050 (MLFLOW_TRACKING_URI)", "KUBE_MLFLOW_TRACKING_URI"]),
    ("http://mlflow.mlpipe:5000", "http://localhost:5000", ["http://localhost:5000 (KUBE_MLFLOW_TRACKING_URI)"]),
    ("http://mlflow.mlpipe:5000", "sqlite:////srv/mlflow.db", ["(KUBE_MLFLOW_TRACKING_URI)"]),
])
def test_a_store_the_pods_cannot_reach_is_refused(driver_uri, pod_uri, words):
    with pytest.raises(ConfigError) as caught:
        backends.check_tracking_uris(driver_uri, pod_uri)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_login_in_the_tracking_uri_is_not_repeated():
    with pytest.raises(ConfigError) as caught:
        backends.check_tracking_uris("http://alice:s3cret@127.0.0.1:5050", None)
    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)


# -- Docker and the kubernetes package on the submitting side ----------------------------------


def test_no_docker_daemon_is_one_clear_config_error(monkeypatch):
    from mlflow.projects import docker

    def no_daemon():
        raise ExecutionException("Ran `docker info` to ensure docker daemon is running but it failed with the "
                                 "following output:\nClient:\n Version: 28.2.2\n\nServer:\nCannot connect to the "
                                 "Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n")

    monkeypatch.setattr(docker, "validate_docker_installation", no_daemon)
    with pytest.raises(ConfigError) as caught:
        backends.check_submitter()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("main.backend=kubernetes: building each step's image needs a running Docker daemon")
    assert "(Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?)" in message
    assert "main.backend=local" in message


def test_without_the_kubernetes_package_the_error_names_its_pin(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    with pytest.raises(ConfigError, match="needs the `kubernetes` package.*requirements-dev.txt"):
        backends.check_submitter()


def test_not_submitted_is_one_bounded_line():
    message = backends.not_submitted(RuntimeError("push denied\n" + "x" * 5000))
    assert "\n" not in message and len(message) < 1000
    assert "RuntimeError: push denied x" in message and message.endswith("see docs/kubernetes.md")


# -- MLflow's quoting of the entry point's words -------------------------------------------------


# -- the driver --------------------------------------------------------------------------------


def _run(run_id: str, tags: dict[str, str]) -> Run:
    info = RunInfo(run_id=run_id, experiment_id="0", user_id="u", status="FINISHED", start_time=0, end_time=None,
                   lifecycle_stage="active")
    return Run(info, RunData(tags=[RunTag(k, v) for k, v in tags.items()]))


def test_a_driver_in_the_step_image_runs_its_steps_there(monkeypatch):
    """`mlflow run deploy/kubernetes -e main -b kubernetes`: MLflow tags the driver's run with the
    env `docker`, not an env manager `mlflow.run` accepts."""
    class Client:
        def __init__(self, env):
            self.env = env

        def get_run(self, run_id):
            return _run(run_id, {backends.ENV_MANAGER_TAG: self.env})

    cfg = compose([])
    assert backends.env_manager_for(cfg, Client("docker"), "r") == "local"
    assert backends.env_manager_for(cfg, Client("uv"), "r") == "uv"
    assert backends.env_manager_for(cfg, Client("uv"), None) == "local"  # no run of its own: this Python
    assert backends.env_manager_for(compose(["main.env_manager=virtualenv"]), Client("uv"), "r") == "virtualenv"


def test_a_step_whose_pod_ran_other_code_fails_the_pipeline(kube_cfg):
    pipeline = driver.Driver(kube_cfg, [], "parent", "0", "local")
    pipeline._check_same_code("train", _run("r1", {"pipeline.cache_key": "a" * 64}), "a" * 64)
    pipeline._check_same_code("train", _run("r1", {"pipeline.cache_key": "b" * 64}), None)  # no key of its own
    with pytest.raises(StepFailedError) as caught:
        pipeline._check_same_code("train", _run("r1", {"pipeline.cache_key": "b" * 64}), "a" * 64)
    assert "step train (run r1) ran in its pod with other code or config than this checkout" in str(caught.value)
    assert "bbbbbbbbbbbb… is not the driver's aaaaaaaaaaaa…" in str(caught.value)
    assert "deploy/kubernetes/Dockerfile" in str(caught.value)
    local = driver.Driver(compose([]), [], "parent", "0", "local")
    local._check_same_code("train", _run("r1", {"pipeline.cache_key": "b" * 64}), "a" * 64)


@pytest.fixture
def store(tmp_path, _empty_store, monkeypatch):
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("unit", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id
    yield client, experiment_id, parent
    mlflow.set_tracking_uri(None)


def _fake_mlflow_run(monkeypatch, client, experiment_id, parent, fail=None, finished=True):
    """mlflow.run as MLflow's Kubernetes branch behaves: the child run exists before the image
    is built; then either the build/push/Job creation raises, or the Job is waited for."""
    calls = []

    class Submitted:
        def __init__(self, run_id):
            self.run_id = run_id

        def wait(self):
            return finished

    def run(**kwargs):
        calls.append(kwargs)
        child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent,
                                                       "mlflow.project.entryPoint": kwargs["entry_point"]})
        if fail:
            raise fail
        return Submitted(child.info.run_id)

    monkeypatch.setattr(mlflow, "run", run)
    return calls


def test_a_step_that_could_not_be_submitted_fails_as_not_started(store, kube_cfg, monkeypatch):
    client, experiment_id, parent = store
    calls = _fake_mlflow_run(monkeypatch, client, experiment_id, parent,
                             fail=RuntimeError("denied: requested access to the resource is denied"))
    pipeline = driver.Driver(kube_cfg, [], parent, experiment_id, "local")
    with pytest.raises(StepFailedError) as caught:
        pipeline._launch("ingest", {"overrides": "main.backend=kubernetes"})
    (child,) = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert child.info.status == "FAILED"
    assert child.data.tags["error.type"] == "StepNotStarted"
    assert "the step was not started on Kubernetes" in child.data.tags["error.message"]
    assert "RuntimeError: denied: requested access to the resource is denied" in child.data.tags["error.message"]
    assert str(caught.value).startswith(f"step ingest failed (run {child.info.run_id}, StepNotStarted): ")
    (call,) = calls
    assert call["uri"].endswith("deploy/kubernetes") and call["backend"] == "kubernetes"
    assert call["parameters"] == {"overrides": "main.backend=kubernetes"} and call["run_name"] == "ingest"


def test_a_job_that_failed_without_a_word_from_its_step_names_the_pod(store, kube_cfg, monkeypatch):
    client, experiment_id, parent = store
    _fake_mlflow_run(monkeypatch, client, experiment_id, parent, finished=False)
    pipeline = driver.Driver(kube_cfg, [], parent, experiment_id, "local")
    with pytest.raises(StepFailedError, match="StepDied"):
        pipeline._launch("ingest", {"overrides": ""})
    (child,) = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert child.info.status == "FAILED"
    assert child.data.tags["error.message"] == launch.DIED_IN_POD


def test_the_checks_before_any_step_stop_at_a_file_store(store, kube_cfg, monkeypatch):
    """Docker answers (stubbed), the store is SQLite: refused before a step is started."""
    from mlflow.projects import docker

    client, experiment_id, parent = store
    calls = _fake_mlflow_run(monkeypatch, client, experiment_id, parent)
    monkeypatch.setattr(docker, "validate_docker_installation", lambda: None)
    monkeypatch.delenv(backends.KUBE_TRACKING_ENV, raising=False)
    pipeline = driver.Driver(kube_cfg, [], parent, experiment_id, "local")
    with pytest.raises(ConfigError, match="is a file on this machine"):
        pipeline.run(["ingest"])
    assert calls == []


def test_the_checks_read_main_backend_config(tmp_path, kube_cfg):
    bad = tmp_path / "kube.json"
    bad.write_text(json.dumps({"repository-uri": "r/x"}))
    cfg = compose(["main.backend=kubernetes", f"main.backend_config={bad}"])
    with pytest.raises(ConfigError, match="main.backend_config=.*no kube-job-template-path"):
        driver.Driver(cfg, [], "parent", "0", "local").run(["ingest"])


def test_ctrl_c_while_waiting_deletes_the_job(store, kube_cfg, monkeypatch):
    client, experiment_id, parent = store
    cancelled = []

    class Submitted:
        run_id = "r"

        def wait(self):
            raise KeyboardInterrupt

        def cancel(self):
            cancelled.append(True)

    monkeypatch.setattr(mlflow, "run", lambda **kwargs: Submitted())
    with pytest.raises(KeyboardInterrupt):
        launch.start(kube_cfg, "local", "ingest", {"overrides": ""}, experiment_id)
    assert cancelled == [True]
