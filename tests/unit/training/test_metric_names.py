"""mlpipe/training/metric_names.py: the qa gate's metric names and directions (mlflow.models.evaluate names)."""

from __future__ import annotations

import pytest
import yaml

from mlpipe.errors import ConfigError
from mlpipe.training import metric_names
from mlpipe.training.metric_names import greater_is_better, task_metrics


def test_one_table_serves_qa_and_train():
    assert metric_names.TASK_METRICS == {"classification": ("accuracy", "f1_score", "roc_auc"),
                                         "regression": ("r2", "rmse", "mae")}
    # train's CV scores hard predictions: every qa metric but roc_auc
    assert metric_names.CV_METRICS == {"classification": ("accuracy", "f1_score"), "regression": ("r2", "rmse", "mae")}
    for task, default in metric_names.DEFAULT_METRIC.items():
        assert default in metric_names.CV_METRICS[task]


def test_every_cv_scorer_exists_and_its_sign_matches_the_direction():
    from sklearn.metrics import get_scorer

    for metric in metric_names.METRICS.values():
        if metric.cv_scorer:
            get_scorer(metric.cv_scorer)
            assert metric.cv_scorer.startswith("neg_") is (not metric.greater_is_better), metric.name


def test_cv_metric():
    assert metric_names.cv_metric("regression", None).name == "r2"
    assert metric_names.cv_metric("classification", "f1_score").cv_scorer == "f1_macro"
    with pytest.raises(ConfigError, match=r"train.metric='roc_auc' does not apply to classification; "
                                          r"expected one of accuracy, f1_score"):
        metric_names.cv_metric("classification", "roc_auc")


@pytest.mark.parametrize(("metric", "expected"), [("accuracy", True), ("f1_score", True), ("roc_auc", True),
                                                  ("r2", True), ("rmse", False), ("mae", False)])
def test_greater_is_better(metric, expected):
    assert greater_is_better(metric) is expected


def test_evaluate_name():
    assert metric_names.evaluate_name("accuracy") == "accuracy_score"
    assert metric_names.evaluate_name("rmse") == "root_mean_squared_error"


def test_unknown_metric():
    with pytest.raises(ConfigError) as info:
        greater_is_better("precision")
    message = str(info.value)
    assert "unknown qa metric 'precision'" in message
    assert "accuracy, f1_score, roc_auc, r2, rmse, mae" in message


def test_task_metrics():
    assert task_metrics("classification", {"accuracy": None, "roc_auc": 0.8}, "k") == ["accuracy", "roc_auc"]
    with pytest.raises(ConfigError, match="qa.thresholds.regression: 'accuracy' does not apply to regression"):
        task_metrics("regression", ["accuracy"], "qa.thresholds.regression")
    with pytest.raises(ConfigError, match="unknown qa metric 'precision'"):
        task_metrics("classification", ["precision"], "k")


def test_default_qa_config_names_known_metrics_and_sets_no_absolute_threshold(project_root):
    """Absolute pass marks depend on the dataset: none is on by default (see conf/qa)."""
    qa = yaml.safe_load((project_root / "conf" / "qa" / "default.yaml").read_text())
    for task, thresholds in qa["thresholds"].items():
        assert task_metrics(task, thresholds, task) and all(v is None for v in thresholds.values()), task
    for task, metrics in qa["champion"]["metrics"].items():
        assert task_metrics(task, metrics, task), task
