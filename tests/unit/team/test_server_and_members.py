"""mlpipe/team without a server: the server's command line, private files, a member's
environment (real config composition)."""

import json
import stat

import pytest

from mlpipe.config import compose
from mlpipe.errors import ConfigError
from mlpipe.team import members, server


def _team(tmp_path, *overrides):
    return compose(["team=demo", "team.member=alice", f"team.server.state_dir={tmp_path / 'state'}",
                    *overrides]).team


def test_the_server_command_uses_sqlite_in_the_state_dir_or_the_given_store(tmp_path):
    team = _team(tmp_path)
    where = server.paths(team.server)
    assert stat.S_IMODE(where.root.stat().st_mode) == 0o700
    cmd, env = server.command(team.server, where)
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(where.auth_ini) and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "state" / "artifacts")
    assert cmd[cmd.index("--host") + 1:cmd.index("--host") + 4] == ["127.0.0.1", "--port", "5050"]
    pg = _team(tmp_path, "team.server.backend_store_uri=postgresql://u:p@127.0.0.1:5432/db",
               "team.server.artifacts_destination=s3://bucket/team")
    cmd, env = server.command(pg.server, where)
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://u:p@127.0.0.1:5432/db"  # not on the command line
    assert not [arg for arg in cmd if "postgresql" in arg]
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://bucket/team"


def test_private_files_are_never_readable_by_others(tmp_path):
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    server.write_private(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_members_environment_logs_them_in_to_their_experiment(tmp_path):
    team = _team(tmp_path)
    where = server.paths(team.server)
    with pytest.raises(ConfigError, match="no password for bob in .*credentials.json: start the team server first"):
        members.member_env(team, "bob")
    server.save_credentials(where, {"admin": "a", "bob": "b-secret"})
    assert json.loads(where.credentials.read_text())["bob"] == "b-secret"
    assert members.member_env(team, "bob") == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5050", "MLFLOW_REGISTRY_URI": "http://127.0.0.1:5050",
        "MLFLOW_TRACKING_USERNAME": "bob",
        "MLFLOW_TRACKING_PASSWORD": "b-secret", "MLFLOW_EXPERIMENT_NAME": "demo/bob", "MLPIPE_TEAM": "demo"}
    with pytest.raises(ConfigError, match="'dave' is not a member of team demo"):
        members.member_env(team, "dave")


def test_the_read_only_identity_logs_in_to_its_own_experiment(tmp_path):
    team = _team(tmp_path)
    server.save_credentials(server.paths(team.server), {"admin": "a", "reader": "r-secret"})
    env = members.member_env(team, "reader")
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"], env["MLFLOW_EXPERIMENT_NAME"]) == (
        "reader", "r-secret", "demo/reader")
    assert members.identities(team) == ["alice", "bob", "carol", "reader"]
    with pytest.raises(ConfigError, match="'dave' is not a member of team demo .*; or reader, its READ-only identity"):
        members.member_env(team, "dave")


def test_logged_in_restores_the_previous_login(monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with members.logged_in("admin", "pw"):
        assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("admin", "pw")
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "carol" and "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_a_taken_port_is_a_config_error_naming_the_key(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        team = _team(tmp_path, f"team.server.port={sock.getsockname()[1]}")
        with pytest.raises(ConfigError, match=r"team server: 127.0.0.1:\d+ is taken .*set team.server.port=<port>"):
            server.start(team.server)


def test_the_team_variants_are_every_members_champion_named_after_them(registry, capsys):
    from types import SimpleNamespace

    team = SimpleNamespace(name="demo", shared_model="m", members=[{"name": "alice"}, {"name": "bob"}])
    with pytest.raises(ConfigError, match="no member of team demo has a m.<member>@champion yet"):
        members.champions(registry.client, team, "champion")
    registry.client.create_registered_model("m.alice")
    version = registry.client.create_model_version("m.alice", registry.model_uri, model_id=registry.version.model_id)
    registry.client.set_registered_model_alias("m.alice", "champion", version.version)
    assert members.champions(registry.client, team, "champion") == [
        {"name": "alice", "model_uri": "models:/m.alice@champion", "weight": 1.0}]
    assert "no m.<member>@champion yet for bob: not served" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs a team"):
        members.champions(registry.client, SimpleNamespace(name=None), "champion")


def test_setup_on_a_server_that_runs_elsewhere_needs_the_admin_password_first(tmp_path, monkeypatch, capsys):
    """`python -m mlpipe.team setup`: the members on a server this machine did not start (a
    cluster's, deploy/team), reached at team.server's address."""
    from mlpipe.team.__main__ import main

    state = f"team.server.state_dir={tmp_path / 'state'}"
    assert main(["setup", "--team", "demo", state]) == ConfigError.exit_code
    assert "no admin password in" in capsys.readouterr().err
    server.save_credentials(server.paths(_team(tmp_path).server), {"admin": "from-the-cluster"})
    seen = []
    monkeypatch.setattr(members, "setup", lambda team: seen.append((team.name, team.server.port)))
    monkeypatch.setattr(server, "probe", lambda scfg, address=None: seen.append(("probed", scfg.port)))
    assert main(["setup", "--team", "demo", state, "team.server.port=5099"]) == 0
    assert seen == [("probed", 5099), ("demo", 5099)]
    assert "set up on http://127.0.0.1:5099" in capsys.readouterr().out
