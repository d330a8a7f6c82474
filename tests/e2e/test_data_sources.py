"""Real-world files and regression through `mlflow run . -e main` with Hydra overrides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from support import Store


def messy_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Numeric and string columns, missing values everywhere, string labels that depend on the data."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, rows)
    city = rng.choice(["paris", "lyon", "nice"], rows)
    age = rng.integers(18, 80, rows).astype(float)
    score = income / 10 + (city == "paris") * 3 + rng.normal(0, 1, rows)
    label = np.where(score > np.median(score), "yes", "no")
    frame = pd.DataFrame({"income": income, "city": city, "age": age, "label": label})
    frame.loc[rng.choice(rows, 40, replace=False), "income"] = np.nan
    frame.loc[rng.choice(rows, 40, replace=False), "city"] = None
    frame.loc[rng.choice(rows, 40, replace=False), "age"] = np.nan
    return frame


@pytest.fixture(scope="module")
def csv_run(store: Store, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "customers.csv"
    messy_frame().to_csv(path, index=False)
    # serialization=skops: the whole pipeline (a categorical column, gradient boosting) past the
    # trust boundary, every file checked against skops_trusted_types before it loads
    result = store.mlflow_run("-P", f"overrides=model=gradient_boosting data.source={path} data.target=label "
                                    "serialization=skops", check=True)
    return path, result, store.newest("tags.`pipeline.role` = 'pipeline'")


def test_overrides_reach_every_step(store: Store, csv_run):
    path, _, parent = csv_run
    children = store.children(parent.info.run_id)
    assert len(children) == 6
    for child in children:
        assert child.data.params["data.source"] == str(path)
        assert child.data.params["data.target"] == "label"
        assert child.data.params["model._target_"] == "sklearn.ensemble.HistGradientBoostingClassifier"
        assert "model=gradient_boosting" in child.data.params["overrides"]


def test_file_model_is_registered_under_the_file_name_and_serves_raw_rows(store: Store, csv_run):
    _, _, parent = csv_run
    champion = store.client.get_model_version_by_alias("customers_model", "champion")
    assert champion.tags["lineage.data_source"].endswith("customers.csv")
    # The served model takes raw rows: strings, and missing values in any column.
    serve = [c for c in store.children(parent.info.run_id) if c.data.tags["pipeline.step"] == "serve"][0]
    smoke = json.load(open(store.client.download_artifacts(serve.info.run_id, "smoke.json", str(store.path))))
    assert smoke["status"] == 200 and set(smoke["predictions"]) <= {"yes", "no"}
    import mlflow.pyfunc

    mlflow.set_tracking_uri(store.uri)
    try:
        model = mlflow.pyfunc.load_model("models:/customers_model@champion")
    finally:  # a tracking URI set in-process outlives the test: later modules in this worker would use it
        mlflow.set_tracking_uri(None)
    assert model.metadata.flavors["sklearn"]["serialization_format"] == "skops"
    raw = pd.DataFrame({"income": [np.nan, 80.0], "city": [None, "marseille"], "age": [30.0, np.nan]})
    assert set(model.predict(raw)) <= {"yes", "no"}


@pytest.mark.slow
def test_new_content_at_the_same_path_is_new_data(store: Store, csv_run):
    path, _, first = csv_run
    before = {c.data.tags["pipeline.step"]: c.info.run_id for c in store.children(first.info.run_id)}
    messy_frame(seed=1).to_csv(path, index=False)
    store.mlflow_run("-P", f"overrides=model=gradient_boosting data.source={path} data.target=label",
                     "-P", "steps=ingest,preprocess", check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    children = store.children(parent.info.run_id)
    assert [c.data.tags.get("pipeline.step") for c in children] == ["ingest", "preprocess"]
    assert children[0].info.run_id != before["ingest"]
    assert children[0].data.tags["lineage.data_digest"] != store.client.get_run(before["ingest"]).data.tags["lineage.data_digest"]
    assert children[1].data.params["ingest_run_id"] == children[0].info.run_id


@pytest.mark.slow
def test_regression_on_diabetes(store: Store):
    store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", "-P", "overrides=data=diabetes", check=True)
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    children = {c.data.tags["pipeline.step"]: c for c in store.children(parent.info.run_id)}
    assert children["ingest"].data.tags["data.task"] == "regression"
    assert children["train"].data.params["model._target_"] == "sklearn.ensemble.RandomForestRegressor"
    assert children["qa"].data.tags["qa.primary_metric"] == "r2"
    assert "qa.r2" in children["qa"].data.metrics
    assert "root_mean_squared_error" in children["qa"].data.metrics
    champion = store.client.get_model_version_by_alias("diabetes_model", "champion")
    assert float(champion.tags["qa.r2"]) == pytest.approx(children["qa"].data.metrics["qa.r2"])


@pytest.fixture(scope="module")
def s3(store: Store):
    """A real S3 endpoint over HTTP on 127.0.0.1 (moto's server mode) and a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {**store.env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}"}
    client = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="mlpipe-data")
    yield client, env
    server.stop()


@pytest.mark.slow
def test_s3_source_is_read_and_its_content_digested(store: Store, s3, tmp_path):
    client, env = s3
    uri = "s3://mlpipe-data/sets/customers.csv"
    overrides = f"overrides=data.source={uri} data.target=label"
    client.put_object(Bucket="mlpipe-data", Key="sets/customers.csv", Body=messy_frame().to_csv(index=False))
    store.mlflow_run("-P", "steps=ingest", "-P", overrides, env=env, check=True)
    first = store.step_runs("ingest")[-1]
    assert first.data.tags["lineage.data_source"] == uri
    assert first.data.metrics["data.rows"] == 400
    # Same key, new content: a new ingest run.
    client.put_object(Bucket="mlpipe-data", Key="sets/customers.csv",
                      Body=messy_frame(rows=300).to_csv(index=False))
    store.mlflow_run("-P", "steps=ingest", "-P", overrides, env=env, check=True)
    second = store.step_runs("ingest")[-1]
    assert second.info.run_id != first.info.run_id
    assert second.data.metrics["data.rows"] == 300
    assert second.data.tags["lineage.data_digest"] != first.data.tags["lineage.data_digest"]
    # A key that does not exist is a clear DataError.
    result = store.mlflow_run("-P", "steps=ingest", "-P", "overrides=data.source=s3://mlpipe-data/nope.csv",
                              env=env)
    assert result.returncode != 0
    assert "step ingest failed" in result.stderr and "s3://mlpipe-data/nope.csv: cannot" in result.stderr
