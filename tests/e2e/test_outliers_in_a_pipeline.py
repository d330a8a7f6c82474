"""Outliers through `mlflow run . -e main -P steps=ingest,preprocess`: reported per column, dropped
from the training split only (validation and test rows are never changed)."""

from __future__ import annotations

import pytest

import json

import numpy as np
import pandas as pd

from support import Store


@pytest.mark.slow
def test_drop_removes_outliers_from_the_training_split_only(store: Store, tmp_path):
    rng = np.random.default_rng(0)
    rows = 200
    frame = pd.DataFrame({"income": rng.normal(50, 5, rows).round(2), "age": rng.integers(20, 70, rows),
                          "label": rng.choice(["yes", "no"], rows)})
    frame.loc[::10, "income"] = 1000.0  # 20 rows far outside the IQR bounds
    path = tmp_path / "spiky.csv"
    frame.to_csv(path, index=False)
    store.mlflow_run("-P", "steps=ingest,preprocess", "-P",
                     f"overrides=data.source={path} data.target=label preprocess.outliers.action=drop", check=True)
    run = store.newest("tags.`pipeline.step` = 'preprocess'")
    client = store.client
    report = json.load(open(client.download_artifacts(run.info.run_id, "outliers.json", str(tmp_path))))
    parts = {name: pd.read_parquet(client.download_artifacts(run.info.run_id, f"data/{name}.parquet", str(tmp_path)))
             for name in ("train", "validation", "test")}

    assert report["method"] == "iqr" and report["action"] == "drop"
    assert set(report["columns"]) == {"income", "age"}
    in_train = report["columns"]["income"]["count"]
    assert in_train > 0 and report["columns"]["age"]["count"] == 0
    assert len(parts["train"]) == report["rows"] - in_train
    assert (parts["train"]["income"] < 1000).all()
    held_out = sum(int((parts[name]["income"] == 1000).sum()) for name in ("validation", "test"))
    assert held_out == 20 - in_train  # the held-out splits keep theirs
    assert run.data.metrics["outliers.train_rows_dropped"] == in_train
    assert run.data.metrics["outliers.train_values"] == in_train
