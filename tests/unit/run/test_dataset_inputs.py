"""A dataset input that another run inserted first (sweep jobs scoring one test split) is linked,
not refused (mlpipe/run/context.py's log_input_once).

MLflow's SQL store looks the dataset up, then inserts it: a run that inserts the same dataset in
between makes the insert hit the unique constraint. The tests put that run exactly there: a
second connection to the same SQLite file commits the row just before the store's INSERT
(SQLAlchemy's before_cursor_execute), so the race happens every time, not only when the timing
of parallel processes allows it."""

from __future__ import annotations

import shutil
import sqlite3
import uuid

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event

from mlpipe.run import context


@pytest.fixture
def raced(tmp_path, _empty_store, monkeypatch):
    """A store whose next dataset insert is beaten by a concurrent run; yields (client, experiment
    id, the uuid the concurrent run gave the dataset)."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    engine = mlflow.tracking._get_store().engine
    concurrent: list[str] = []

    def concurrent_run_inserts_first(conn, cursor, statement, parameters, ctx, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not concurrent:
            row = list(parameters[0] if executemany else parameters)
            row[0] = uuid.uuid4().hex  # the other run's own dataset row
            concurrent.append(row[0])
            with sqlite3.connect(tmp_path / "mlflow.db", timeout=10) as side:
                side.execute(statement, row)

    event.listen(engine, "before_cursor_execute", concurrent_run_inserts_first)
    yield client, experiment_id, concurrent
    event.remove(engine, "before_cursor_execute", concurrent_run_inserts_first)
    mlflow.set_tracking_uri(None)


def _dataset():
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    return mlflow.data.from_pandas(frame, source="test.parquet", targets="y", name="test", digest="d1")


def test_a_dataset_a_concurrent_run_inserted_first_is_linked_not_refused(raced):
    client, experiment_id, concurrent = raced
    with mlflow.start_run(experiment_id=experiment_id) as run:
        context.log_input_once(_dataset(), "test")
    assert len(concurrent) == 1  # the concurrent insert did happen
    (linked,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert (linked.dataset.name, linked.dataset.digest) == ("test", "d1")
    assert [t.value for t in linked.tags if t.key == "mlflow.data.context"] == ["test"]


def test_without_the_retry_the_store_refuses_the_slower_run(raced):
    """The store's own race, which log_input_once answers (MLflow 3.17's SQL store). If this starts
    passing, MLflow fixed it and the retry can go."""
    client, experiment_id, concurrent = raced
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with pytest.raises(mlflow.exceptions.MlflowException) as refused:
            mlflow.log_input(_dataset(), context="test")
    assert context.duplicate_dataset(refused.value)
    assert client.get_run(run.info.run_id).inputs.dataset_inputs == []


def test_evaluate_on_a_dataset_a_concurrent_run_inserted_first_scores_and_links_it(raced):
    """mlflow.models.evaluate logs its data as a dataset input itself: a parallel sweep job's qa
    inserting the same test split first failed qa with the unique constraint (seen in a joblib
    sweep). evaluate_logged logs it first, with the retry, and evaluate then finds the row."""
    client, experiment_id, concurrent = raced
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [0, 1, 0, 1]})
    with mlflow.start_run(experiment_id=experiment_id) as run:
        result = context.evaluate_logged(lambda df: (df["x"] % 2).astype(int), frame, "y", "classifier")
    assert len(concurrent) == 1 and result.metrics["accuracy_score"] == 1.0
    (linked,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert linked.dataset.name == "dataset" and not linked.tags  # as evaluate alone logs it


def test_duplicate_dataset_is_only_the_unique_constraint_on_datasets():
    assert context.duplicate_dataset(Exception(
        "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest"))
    assert context.duplicate_dataset(Exception(
        'duplicate key value violates unique constraint "dataset_pk" ... INSERT INTO datasets'))
    assert not context.duplicate_dataset(Exception("UNIQUE constraint failed: runs.run_uuid"))
    assert not context.duplicate_dataset(Exception("connection refused"))
