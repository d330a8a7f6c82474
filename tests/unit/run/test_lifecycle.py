"""mlpipe/run/lifecycle.py: the process settings around MLflow."""

import sys

import pytest


def test_rest_requests_try_no_databricks_imports_outside_databricks(monkeypatch):
    """lifecycle.skip_databricks_checks: MLflow's request headers are resolved without asking any
    import finder (MLflow's import-hook finder among them: the deadlock it avoids)."""
    from mlflow.tracking.request_header.databricks_request_header_provider import DatabricksRequestHeaderProvider
    from mlflow.tracking.request_header.registry import resolve_request_headers

    from mlpipe.run import lifecycle

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.setattr(DatabricksRequestHeaderProvider, "in_context", DatabricksRequestHeaderProvider.in_context)
    asked = []

    class Finder:
        def find_spec(self, name, path=None, target=None):
            asked.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    resolve_request_headers()
    if not asked:
        pytest.skip("this MLflow's request headers import nothing: nothing to skip")
    asked.clear()
    lifecycle.skip_databricks_checks()
    resolve_request_headers()
    assert asked == []


def test_the_store_a_command_names_is_one_a_user_can_find_again():
    from mlpipe.run.lifecycle import store_address

    assert store_address("sqlite:///mlflow.db", "/home/u/proj") == "sqlite:////home/u/proj/mlflow.db"
    assert store_address("sqlite:////abs/mlflow.db", "/x") == "sqlite:////abs/mlflow.db"
    assert store_address("mlruns", "/home/u") == "/home/u/mlruns"
    assert store_address("file://./mlruns", "/home/u") == "file:///home/u/mlruns"
    assert store_address("http://127.0.0.1:5050", "/x") == "http://127.0.0.1:5050"
    assert store_address("postgresql://db/mlflow", "/x") == "postgresql://db/mlflow"
    # never a password on the terminal
    assert store_address("postgresql://u:s3cret@db:5432/mlflow", "/x") == "postgresql://u:***@db:5432/mlflow"
    assert store_address("https://alice:pw@mlflow.example/", "/x") == "https://alice:***@mlflow.example/"
    assert store_address("postgresql://u:p@ss@db/m", "/x") == "postgresql://u:***@db/m"  # an @ in the password
    assert store_address("postgresql://db/m?user=u&password=pw&x=1", "/x") == "postgresql://db/m?user=u&password=***&x=1"
