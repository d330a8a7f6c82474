"""mlpipe/quality/model_checks.py: the champion comparison's skip rules and threshold validation (no store)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
from mlflow.exceptions import MlflowException

from mlpipe.quality import model_checks


class FakeClient:
    def __init__(self, version=None):
        self.version = version

    def get_model_version_by_alias(self, name, alias):
        if self.version is None:
            raise MlflowException(f"no alias {alias} on {name}")
        return self.version


def champion(client, task="classification"):
    return model_checks.champion_checks(client, "m", "champion", "models:/m-new", None, pd.DataFrame(), "y", task,
                                        ["accuracy"], 0.05, 40)


def test_no_champion_is_a_note():
    assert champion(FakeClient()) == ([], {"note": "no m@champion yet: nothing to compare"})


def test_champion_of_another_task_is_skipped_with_a_note():
    version = SimpleNamespace(version="3", source="models:/m-old", tags={"qa.metric": "r2"})
    checks, info = champion(FakeClient(version))
    assert checks == [] and info["version"] == "3"
    assert info["note"] == "skipped: the champion was validated on r2, not a classification metric"


def test_the_candidate_itself_is_not_compared():
    version = SimpleNamespace(version="1", source="models:/m-new", tags={})
    assert champion(FakeClient(version))[1]["note"] == "the candidate is the champion"


def test_thresholds_through_validate_evaluation_results():
    from mlflow.models import EvaluationResult

    result = EvaluationResult(metrics={"accuracy_score": 0.8, "root_mean_squared_error": 2.0}, artifacts={})
    checks = model_checks.threshold_checks(result, {"accuracy": 0.9, "f1_score": None, "rmse": 2.5, "roc_auc": 0.5})
    assert [(c.name, c.passed, c.value, c.expected) for c in checks] == [
        ("threshold.accuracy", False, 0.8, ">= 0.9"), ("threshold.rmse", True, 2.0, "<= 2.5"),
        ("threshold.roc_auc", False, None, ">= 0.5")]
    assert checks[0].describe() == "threshold.accuracy=0.8 (expected >= 0.9)"
