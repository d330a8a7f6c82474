"""mlpipe/evaluation.py: the qa gate's checks against mlflow.models.evaluate metric names."""

from __future__ import annotations

import math

import pytest
import yaml

from mlpipe import evaluation
from mlpipe.errors import ConfigError
from mlpipe.evaluation import Check, failures, greater_is_better, threshold_checks


def test_every_config_metric_has_a_direction():
    for metric, name in evaluation.EVALUATE_NAMES.items():
        assert name in evaluation.GREATER_IS_BETTER, metric


@pytest.mark.parametrize(("metric", "expected"), [("accuracy", True), ("f1_score", True), ("roc_auc", True),
                                                  ("r2", True), ("rmse", False), ("mae", False)])
def test_greater_is_better(metric, expected):
    assert greater_is_better(metric) is expected


def test_evaluate_name():
    assert evaluation.evaluate_name("accuracy") == "accuracy_score"
    assert evaluation.evaluate_name("rmse") == "root_mean_squared_error"


def test_unknown_metric():
    with pytest.raises(ConfigError) as info:
        greater_is_better("precision")
    message = str(info.value)
    assert "unknown qa metric 'precision'" in message
    assert "accuracy, f1_score, roc_auc, r2, rmse, mae" in message


def test_threshold_checks_classification():
    checks = threshold_checks({"accuracy_score": 0.95, "f1_score": 0.5, "log_loss": 0.2},
                              {"accuracy": 0.7, "f1_score": 0.6})
    assert checks == [Check("accuracy", 0.95, 0.7, True), Check("f1_score", 0.5, 0.6, True)]
    assert [c.passed for c in checks] == [True, False]
    assert failures(checks) == [checks[1]]


def test_threshold_checks_lower_is_better():
    checks = threshold_checks({"root_mean_squared_error": 3.0, "mean_absolute_error": 1.0, "r2_score": 0.5},
                              {"rmse": 2.5, "mae": 1.0, "r2": 0.2})
    assert [(c.metric, c.greater_is_better, c.passed) for c in checks] == [
        ("rmse", False, False), ("mae", False, True), ("r2", True, True)]
    assert [c.metric for c in failures(checks)] == ["rmse"]


def test_threshold_checks_boundary_passes():
    assert threshold_checks({"accuracy_score": 0.7}, {"accuracy": 0.7})[0].passed
    assert threshold_checks({"root_mean_squared_error": 2.0}, {"rmse": 2})[0].passed


def test_missing_or_nan_metric_fails():
    checks = threshold_checks({"accuracy_score": math.nan}, {"accuracy": 0.7, "f1_score": 0.6})
    assert checks[1].value is None
    assert failures(checks) == checks
    assert not Check("rmse", math.nan, 1.0, False).passed


def test_threshold_checks_unknown_metric():
    with pytest.raises(ConfigError, match="unknown qa metric 'precision'"):
        threshold_checks({"accuracy_score": 0.9}, {"precision": 0.5})


def test_threshold_checks_cast_to_float():
    check = threshold_checks({"accuracy_score": 1}, {"accuracy": 1})[0]
    assert isinstance(check.value, float) and isinstance(check.threshold, float)


def test_describe():
    assert Check("accuracy", 0.91234, 0.7, True).describe() == "accuracy=0.9123 (expected >= 0.7)"
    assert Check("rmse", 3.0, 2.5, False).describe() == "rmse=3.0000 (expected <= 2.5)"
    assert Check("f1_score", None, 0.6, True).describe() == "f1_score=missing (expected >= 0.6)"


def test_no_failures_when_all_pass():
    assert failures([Check("r2", 0.5, 0.2, True), Check("mae", 0.1, 1.0, False)]) == []
    assert failures([]) == []


def test_default_qa_thresholds_are_known_metrics(project_root):
    qa = yaml.safe_load((project_root / "conf" / "qa" / "default.yaml").read_text())
    for task, thresholds in qa["thresholds"].items():
        checks = threshold_checks({}, thresholds)
        assert len(checks) == len(thresholds) > 0, task
