"""mlpipe/run/handoff.py: reading runs back from a real SQLite store."""

from __future__ import annotations

import shutil

from mlflow import MlflowClient

from mlpipe.run import handoff


def test_every_run_a_search_matches_is_read_past_a_page(tmp_path, _empty_store, monkeypatch):
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("pages", artifact_location=str(tmp_path / "a"))
    made = [client.create_run(experiment, tags={"k": "v"}).info.run_id for _ in range(5)]
    client.create_run(experiment, tags={"k": "other"})
    monkeypatch.setattr(handoff, "SEARCH_PAGE", 2)
    found = handoff.all_runs(client, [experiment], "tags.k = 'v'", order_by=["attributes.start_time ASC"])
    assert sorted(r.info.run_id for r in found) == sorted(made)
    assert handoff.all_runs(client, [experiment], "tags.k = 'none'") == []
