"""Shared fixtures for the unit tests: the project root, real config slices, small frames."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# `pytest` run from anywhere (not only `python -m pytest` from the root) must import mlpipe.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def preprocess_cfg() -> dict:
    """The real conf/preprocess/default.yaml, as the preprocess step receives it (do not mutate)."""
    return yaml.safe_load((ROOT / "conf" / "preprocess" / "default.yaml").read_text())


@pytest.fixture(scope="session")
def _wine() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame


@pytest.fixture
def wine(_wine) -> pd.DataFrame:
    """scikit-learn's wine data (178 rows, 13 numeric features, 3 classes in `target`)."""
    return _wine.copy()


@pytest.fixture
def mixed() -> pd.DataFrame:
    """Numeric, string, boolean and all-empty columns, with missing values and one rare category."""
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({
        "num": rng.normal(size=n),
        "count": rng.integers(0, 10, size=n),
        "cat": rng.choice(["a", "b", "c"], size=n).astype(object),
        "flag": rng.choice([True, False], size=n),
        "empty": [np.nan] * n,
        "target": rng.choice(["yes", "no"], size=n),
    })
    frame.loc[0, "num"] = np.nan
    frame.loc[1, "cat"] = np.nan
    frame.loc[2, "cat"] = "rare"  # 1 of 200 rows: below min_category_frequency=0.01
    return frame


@pytest.fixture
def registry(tmp_path):
    """A real SQLite-backed registry: model `m`, version 1 (a logged DummyClassifier) holding
    alias `champion`. Returns .client, .version and .model_uri (the logged model's URI)."""
    from types import SimpleNamespace

    import mlflow
    from mlflow import MlflowClient
    from sklearn.dummy import DummyClassifier

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    X = pd.DataFrame({"x0": [0.0, 1.0]})
    with mlflow.start_run():  # the input example gives the model a signature: one column, x0
        info = mlflow.sklearn.log_model(DummyClassifier().fit(X, [0, 1]), name="model", input_example=X)
    client.create_registered_model("m")
    version = client.create_model_version("m", info.model_uri, model_id=info.model_id)
    client.set_registered_model_alias("m", "champion", version.version)
    yield SimpleNamespace(client=client, version=version, model_uri=info.model_uri)
    mlflow.set_tracking_uri(None)
