"""A team on one shared MLflow server with MLflow's basic-auth app, through the real commands:
`python -m mlpipe.team start|stop|as`, a member's pipeline by `mlflow run` under their login,
and denials over HTTP with real logins (SQLite backend; PostgreSQL in test_team_postgres.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from services import free_port
from support import ROOT, error_lines

MODEL = "iris_model"


class Team:
    """The demo team's server in a temp state dir on a free port, driven by the real CLI."""

    def __init__(self, state, port: int, *extra: str):
        self.state, self.port = state, port
        self.overrides = [f"team.server.state_dir={state}", f"team.server.port={port}", *extra]
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY", "MLFLOW_EXPERIMENT", "MLPIPE_TEAM"))}
        self.env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env["MLPIPE_SYSTEM_METRICS"] = "false"

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlpipe.team", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> subprocess.CompletedProcess:
        return self.cli("start", "--team", "demo", *self.overrides)

    def stop(self) -> subprocess.CompletedProcess:
        return self.cli("stop", "--team", "demo", *self.overrides)

    def as_member(self, member: str, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.cli("as", "--team", "demo", member, *self.overrides, "--", *command, timeout=timeout)

    def password(self, member: str) -> str:
        return json.loads((self.state / "credentials.json").read_text())[member]

    def client(self, member: str, monkeypatch, password: str | None = None) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or self.password(member))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        return MlflowClient(self.url, registry_uri=self.url)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    team = Team(tmp_path_factory.mktemp("team") / "state", free_port())
    started = team.start()
    assert started.returncode == 0, started.stderr[-3000:]
    team.started = started
    yield team
    assert team.stop().returncode == 0


@pytest.fixture(scope="module")
def alice_pipeline(team):
    """alice's pipeline through `mlflow run`, logged in as alice (no step reuses anything)."""
    result = team.as_member("alice", sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager",
                            "local", "-P", "steps=ingest,preprocess,train,qa,register",
                            "-P", "overrides=data=iris model=logistic_regression train.cv_folds=2")
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_start_prints_the_address_and_keeps_passwords_to_its_owner(team):
    out = team.started.stdout
    assert f"team demo: MLflow server started at {team.url}" in out
    assert "members: alice, bob, carol (lead: alice)" in out
    assert stat.S_IMODE(team.state.stat().st_mode) == 0o700
    for name in ("credentials.json", "basic_auth.ini", "flask_secret"):
        assert stat.S_IMODE((team.state / name).stat().st_mode) == 0o600
    passwords = json.loads((team.state / "credentials.json").read_text())
    assert sorted(passwords) == ["admin", "alice", "bob", "carol"] and len(set(passwords.values())) == 4
    assert "password1234" not in passwords.values()
    said = out + team.started.stderr + (team.state / "server.log").read_text()
    assert not [p for p in passwords.values() if p in said]
    again = team.start()  # a second start finds it running
    assert again.returncode == 0 and "already running" in again.stdout


def test_a_members_pipeline_registers_into_their_own_model_tagged_with_their_name(team, alice_pipeline,
                                                                                monkeypatch):
    client = team.client("alice", monkeypatch)
    version = client.get_model_version_by_alias(f"{MODEL}.alice", "champion")
    assert version.tags["team.member"] == "alice" and version.tags["qa.passed"] == "true"
    experiment = client.get_experiment_by_name("demo/alice")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.step` = 'register'")
    assert runs and runs[0].data.tags["team.member"] == "alice" and runs[0].info.status == "FINISHED"
    passwords = json.loads((team.state / "credentials.json").read_text())
    assert not [p for p in passwords.values() if p in alice_pipeline.stdout + alice_pipeline.stderr]
    with pytest.raises(MlflowException):  # the team model itself is not hers to register into
        client.get_model_version_by_alias(MODEL, "champion")


def test_another_member_cannot_change_alices_model_or_the_team_champion(team, alice_pipeline, monkeypatch):
    """bob, logged in over HTTP: every change to alice's model or to the team model is refused
    with a 403, and nothing changed."""
    from mlpipe.errors import AccessDeniedError
    from mlpipe.registry import versions

    bob = team.client("bob", monkeypatch)
    name = f"{MODEL}.alice"
    champion = bob.get_model_version_by_alias(name, "champion")  # reading is allowed
    for call in (lambda: bob.set_registered_model_alias(name, "champion", champion.version),
                 lambda: bob.delete_model_version(name, champion.version),
                 lambda: bob.delete_registered_model_alias(name, "champion"),
                 lambda: bob.set_registered_model_alias(MODEL, "champion", "1")):
        with pytest.raises(MlflowException, match="403"):
            call()
    with pytest.raises(AccessDeniedError) as info:  # through the pipeline's own registry calls
        versions.set_alias(bob, name, "champion", champion.version)
    assert str(info.value) == (f"user 'bob' may not move {name}@champion: it needs EDIT on registered model {name}, "
                               "which the tracking server did not grant (HTTP 403); the alias was not moved")
    # (mlflow.set_registry_uri(None) would leave MLFLOW_REGISTRY_URI set for every later subprocess)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", team.url)
    with pytest.raises(AccessDeniedError, match=f"user 'bob' may not register a version of {name}: it needs EDIT on "
                                                f"registered model {name}.*; nothing registered"):
        versions.register(champion.source, name, {})
    alice = team.client("alice", monkeypatch)
    after = alice.get_model_version_by_alias(name, "champion")
    assert after.version == champion.version and len(alice.search_model_versions(f"name = '{name}'")) == 1


def test_a_member_serves_every_members_champion_as_an_arm_named_after_them(team, alice_pipeline, monkeypatch):
    result = team.as_member("alice", sys.executable, "-m", "mlflow", "run", ".", "-e", "serve", "--env-manager",
                            "local", "-P", "overrides=data=iris serve.mode=smoke serve.team_variants=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"no {MODEL}.<member>@champion yet for bob, carol: not served" in result.stderr
    alice = team.client("alice", monkeypatch)
    experiment = alice.get_experiment_by_name("demo/alice")
    (run,) = alice.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'serve'")
    assert run.info.status == "FINISHED" and run.data.tags["team.member"] == "alice"
    assert run.data.tags["serve.variant.alice"].startswith(f"models:/{MODEL}.alice@champion (version 1")
    assert not [key for key in run.data.tags if key.startswith("serve.variant.") and key != "serve.variant.alice"]


def test_a_wrong_password_is_one_clear_error_before_anything_runs(team, tmp_path):
    from mlpipe.team import members

    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "not-his",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = subprocess.run([sys.executable, "-c", f"from mlpipe.team import members; members.check_login({team.url!r})"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (f"AccessDeniedError: the MLflow server at {team.url} refused the login of user 'bob' (HTTP 401): wrong "
            "password or no such user") in result.stderr
    # `as` with a member who is not in the team: one line, nothing started
    result = team.as_member("dave", sys.executable, "-c", f"open({str(tmp_path / 'ran')!r}, 'w')")
    assert result.returncode != 0 and not (tmp_path / "ran").exists()
    assert error_lines(result.stderr) == [
        "error: team: ConfigError: team.member='dave' is not a member of team demo (conf/team/demo.yaml): "
        "alice, bob, carol"]
    assert members is not None


def test_stop_stops_the_server_and_frees_the_port(tmp_path_factory):
    import socket

    team = Team(tmp_path_factory.mktemp("team2") / "state", free_port())
    started = team.start()
    assert started.returncode == 0, started.stderr[-3000:]
    pid = int((team.state / "server.pid").read_text())
    result = team.stop()
    assert result.returncode == 0 and "server stopped" in result.stdout
    import psutil

    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        pass
    with socket.socket() as sock:  # a new server can listen there (as uvicorn does, with SO_REUSEADDR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", team.port))
        sock.listen(1)
