"""`main` under each env manager: the driver passes its own env manager to every child."""

from __future__ import annotations

import pytest

from support import Store


@pytest.mark.slow  # about 2 minutes each on a warm machine; `make test-all` runs them
@pytest.mark.parametrize("env_manager", ["uv", None])  # None: MLflow's default, virtualenv
def test_main_passes_its_env_manager_to_every_step(fresh_store: Store, env_manager):
    expected = env_manager or "virtualenv"
    fresh_store.mlflow_run(env_manager=env_manager, check=True, timeout=1800)
    parent = fresh_store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.env"] == expected
    children = fresh_store.children(parent.info.run_id)
    assert [c.data.tags["mlflow.project.entryPoint"] for c in children] == [
        "ingest", "preprocess", "train", "qa", "register", "serve"]
    assert {c.data.tags["mlflow.project.env"] for c in children} == {expected}
    # The warm helper runs in the driver's environment, which is the steps' one: every step forked.
    assert {c.data.tags["pipeline.process"] for c in children} == {"warm"}
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow
def test_local_env_manager_is_passed_too(fresh_store: Store):
    fresh_store.mlflow_run("-P", "steps=ingest", env_manager="local", check=True)
    parent = fresh_store.newest("tags.`pipeline.role` = 'pipeline'")
    child = fresh_store.children(parent.info.run_id)[0]
    # MLflow tags only virtualenv/uv/conda runs; a local child has no env tag, like its parent.
    assert "mlflow.project.env" not in parent.data.tags
    assert "mlflow.project.env" not in child.data.tags
