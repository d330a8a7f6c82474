"""The team server on PostgreSQL: `python -m mlpipe.team start` with
team.server.backend_store_uri=postgresql://..., a member's run and model version through the
server, found in PostgreSQL's own tables. Skipped, with the reason, where there is no cluster."""

from __future__ import annotations

import postgres
from services import free_port
from test_team import Team

pytestmark = postgres.skip_without_cluster()
database = postgres.module_database("mlpipe_team_test")


def test_the_team_server_keeps_runs_and_models_in_postgresql(database, tmp_path, monkeypatch):
    import mlflow
    from sklearn.dummy import DummyClassifier

    team = Team(tmp_path / "state", free_port(), f"team.server.backend_store_uri={database.url}")
    started = team.start()
    try:
        assert started.returncode == 0, started.stderr[-3000:] + (tmp_path / "state" / "server.log").read_text()[-3000:]
        assert database.url not in started.stdout + started.stderr  # it holds a password
        alice = team.client("alice", monkeypatch)
        experiment = alice.get_experiment_by_name("demo/alice")
        mlflow.set_tracking_uri(None)  # forget a URI an earlier module set in-process (it unsets the variable)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", team.url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", team.url)
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.log_metric("accuracy", 0.9)
            info = mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), name="model",
                                            pip_requirements=["scikit-learn"])
        alice.create_model_version("iris_model.alice", info.model_uri, run_id=run.info.run_id, model_id=info.model_id)
    finally:
        assert team.stop().returncode == 0
    assert database.query(f"SELECT status FROM runs WHERE run_uuid = '{run.info.run_id}'") == [("FINISHED",)]
    assert ("iris_model.alice", 1) in database.query("SELECT name, version FROM model_versions")
    assert {"demo/alice", "demo/bob", "demo/carol"} <= {n for (n,) in database.query("SELECT name FROM experiments")}
