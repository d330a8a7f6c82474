"""mlpipe/quality/model_checks.py: the champion comparison against a real SQLite registry (skip rules, a registry that does not answer) and threshold validation."""

from __future__ import annotations

import pandas as pd
import pytest

from mlpipe.quality import model_checks


def champion(client, candidate="models:/m-new", task="classification", on_incompatible="fail", test=None):
    return model_checks.champion_checks(client, "m", "champion", candidate, None,
                                        pd.DataFrame() if test is None else test, "y", task,
                                        ["accuracy"], 0.05, 40, ("cloudpickle", []), on_incompatible)


def test_no_champion_is_a_note(registry):
    registry.client.delete_registered_model_alias("m", "champion")
    assert champion(registry.client) == ([], {"note": "no m@champion yet: nothing to compare"})


def test_a_champion_of_another_task_fails_qa_unless_replacing_is_allowed(registry):
    registry.client.set_model_version_tag("m", registry.version.version, "qa.metric", "r2")
    (check,), info = champion(registry.client)
    assert (check.name, check.passed, check.expected) == ("champion.compatible", False, "a champion this data can score")
    assert check.note == ("the champion was validated on r2, not a classification metric; "
                          "to let this model take over: qa.champion.on_incompatible=replace")
    assert info["replaced"] is False and str(info["version"]) == "1"
    (check,), info = champion(registry.client, on_incompatible="replace")
    assert check.passed and info["replaced"] is True
    assert check.note == "replaced: the champion was validated on r2, not a classification metric " \
                         "(qa.champion.on_incompatible=replace)"


def test_a_champion_needing_columns_this_data_lacks_is_incompatible(registry):
    """The registry's champion takes one column `x0` (a DummyClassifier fitted on [[0], [1]])."""
    (check,), info = champion(registry.client, test=pd.DataFrame({"other": [1.0, 2.0], "y": [0, 1]}))
    assert not check.passed and "input schema needs columns this data lacks" in check.note


def test_a_champion_no_qa_run_vouches_for_is_refused_not_loaded(registry):
    """Moving the alias to a version with the champion's tags copied onto it fails qa; the
    champion's files changed after qa fail it too."""
    from pathlib import Path

    from mlpipe.errors import UntrustedModelError

    info = registry.log_model([1, 1])
    other = registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=registry.version.tags)
    registry.client.set_registered_model_alias("m", "champion", other.version)
    with pytest.raises(UntrustedModelError, match=r"models:/m/2 \(version 2 of m\): its source models:/m-\w+ is not the "
                                                  r"model qa run \w+ validated .*; refused, nothing loaded; move "
                                                  r"m@champion to a version qa validated"):
        champion(registry.client)
    registry.client.set_registered_model_alias("m", "champion", registry.version.version)
    mlmodel = Path(registry.client.get_model_version_download_uri("m", "1")) / "MLmodel"
    mlmodel.write_text(mlmodel.read_text() + "# swapped\n")
    with pytest.raises(UntrustedModelError, match="models:/m/1: its files changed since qa validated them"):
        champion(registry.client)


def test_the_candidate_itself_is_not_compared(registry):
    assert champion(registry.client, candidate=registry.model_uri)[1]["note"] == "the candidate is the champion"


def test_a_registry_that_does_not_answer_fails_the_champion_check(monkeypatch):
    import socket

    from mlflow import MlflowClient

    from mlpipe.errors import StorageError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageError, match="the model registry did not answer the lookup of m@champion"):
        champion(MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}"))


def test_thresholds_through_validate_evaluation_results():
    from mlflow.models import EvaluationResult

    result = EvaluationResult(metrics={"accuracy_score": 0.8, "root_mean_squared_error": 2.0}, artifacts={})
    checks = model_checks.threshold_checks(result, {"accuracy": 0.9, "f1_score": None, "rmse": 2.5, "roc_auc": 0.5})
    assert [(c.name, c.passed, c.value, c.expected) for c in checks] == [
        ("threshold.accuracy", False, 0.8, ">= 0.9"), ("threshold.rmse", True, 2.0, "<= 2.5"),
        ("threshold.roc_auc", False, None, ">= 0.5")]
    assert checks[0].describe() == "threshold.accuracy=0.8 (expected >= 0.9)"
