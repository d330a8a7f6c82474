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


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """An empty SQLite tracking store with MLflow's tables made once (about 1.5 s), copied per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry(tmp_path, _empty_store, monkeypatch):
    """A real SQLite-backed registry: model `m`, version 1 (a logged DummyClassifier, validated by
    a qa run as the pipeline's register leaves it) holding alias `champion`, artifacts in
    tmp_path. Returns .client, .version, .model_uri (the logged model's URI), .qa_run_id,
    .experiment_id, .X, .log_model(labels) (another model) and .record_qa_run(model_uri, ...)."""
    import shutil
    from types import SimpleNamespace

    import mlflow
    from mlflow import MlflowClient
    from sklearn.dummy import DummyClassifier

    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment_id = client.create_experiment("unit", artifact_location=str(tmp_path / "artifacts"))
    # the active experiment, undone after the test (MLflow keeps it in a global and in the environment)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    X = pd.DataFrame({"x0": [0.0, 1.0]})

    def log_model(labels):
        """A DummyClassifier fitted on X and `labels`, logged in a run of its own; its ModelInfo.
        The input example gives it a signature: one column, x0."""
        with mlflow.start_run():
            return mlflow.sklearn.log_model(DummyClassifier(strategy="most_frequent").fit(X, labels), name="model",
                                            input_example=X, pip_requirements=["scikit-learn"])

    info = log_model([0, 1])
    client.create_registered_model("m")
    qa_run_id = record_qa_run(client, info.model_uri, experiment_id=experiment_id)
    version = client.create_model_version("m", info.model_uri, model_id=info.model_id,
                                          tags={"lineage.qa_run_id": qa_run_id})
    client.set_registered_model_alias("m", "champion", version.version)
    # the `trust` group of a config whose gate is GATE_KEY (its private key is nowhere on disk)
    tcfg = {"signing_key": str(tmp_path / "no-such.key"), "signers": KEYRING.texts(), "revoked": []}
    yield SimpleNamespace(client=client, version=version, model_uri=info.model_uri, qa_run_id=qa_run_id, X=X,
                          experiment_id=experiment_id, log_model=log_model, keyring=KEYRING, tcfg=tcfg,
                          record_qa_run=lambda *args, **kw: record_qa_run(client, *args, experiment_id=experiment_id,
                                                                          **kw))
    mlflow.set_tracking_uri(None)


def record_qa_run(client, model_uri: str, passed: bool = True, digest: str | None = None,
                  status: str = "FINISHED", experiment_id: str = "0", key=None) -> str:
    """A qa run as the qa step leaves it: its QaOutput tags, the digest of the model's files now,
    and its verdict signed with `key` (default GATE_KEY, the key KEYRING trusts)."""
    from mlpipe import signing
    from mlpipe.registry.provenance import SIGNATURE_TAG, VERDICT_TAG
    from mlpipe.run import outputs
    from mlpipe.training import model_io

    output = outputs.QaOutput(passed=passed, model_uri=model_uri, task="classification", primary_metric="accuracy",
                              failed_checks="" if passed else "baseline", champion_replaced=False,
                              model_digest=digest or model_io.model_digest(model_uri))
    run = client.create_run(experiment_id, tags={outputs.STEP_TAG: "qa"} | output.tags())
    verdict = signing.Verdict(model_uri=model_uri, digest=output.model_digest, qa_run_id=run.info.run_id,
                              experiment_id=experiment_id, passed=passed, failed_checks=output.failed_checks,
                              config_digest="c", code_digest="d", signed_at="2026-12-07T00:00:00+00:00")
    statement, signature = signing.sign(verdict, key or GATE_KEY)
    client.set_tag(run.info.run_id, VERDICT_TAG, statement)
    client.set_tag(run.info.run_id, SIGNATURE_TAG, signature)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _gate_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


GATE_KEY = _gate_key()  # the unit tests' gate: record_qa_run signs with it, KEYRING trusts it


def _keyring():
    from mlpipe import signing

    return signing.Keyring.from_texts([signing.public_text(GATE_KEY.public_key())], [])


KEYRING = _keyring()
