"""main.backend=kubernetes where Docker does not answer (no daemon on these machines; DOCKER_HOST
points at a socket nobody serves, so the test means the same where one runs): `mlflow run . -e
main` stops before any step with one line that says why, and the driver's run is FAILED with it."""

from __future__ import annotations

import shutil

from support import Store, error_lines

NO_DAEMON = "unix:///nonexistent/docker.sock"


def test_without_a_docker_daemon_the_pipeline_stops_before_any_step(store: Store):
    result = store.mlflow_run("-P", "overrides=main.backend=kubernetes", env={**store.env, "DOCKER_HOST": NO_DAEMON})
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    prefix = "error: main: ConfigError: main.backend=kubernetes: building each step's image needs a running Docker daemon"
    assert lines[0].startswith(prefix), lines[0]
    if shutil.which("docker"):  # else MLflow's "Could not find Docker executable" is the reason
        assert f"(Cannot connect to the Docker daemon at {NO_DAEMON}." in lines[0]
    assert lines[0].endswith("run the driver where `docker info` works, or set main.backend=local")
    (run,) = store.runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.tags["error.type"] == "ConfigError"
    assert lines[0] == f"error: main: ConfigError: {run.data.tags['error.message']}"
