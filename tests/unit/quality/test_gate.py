"""mlpipe/quality/gate.py: the baseline tests, gap checks, per-class checks (pure, no MLflow)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from mlpipe.quality import gate
from mlpipe.quality.gate import Check

ALPHA = 0.05


def labels_with_accuracy(truth: np.ndarray, accuracy: float, rng) -> np.ndarray:
    """Predictions that are right on exactly round(accuracy * n) random rows (binary labels)."""
    right = np.zeros(len(truth), dtype=bool)
    right[rng.choice(len(truth), round(accuracy * len(truth)), replace=False)] = True
    return np.where(right, truth, 1 - truth)


def test_baseline_predictions_classification_most_frequent_train_class():
    y_train = pd.Series(["b", "a", "b", "c"])
    assert gate.baseline_predictions("classification", y_train, 3).tolist() == ["b", "b", "b"]
    # Ties go to the smallest label, as DummyClassifier(strategy="most_frequent") does.
    assert gate.baseline_predictions("classification", pd.Series([2, 1, 2, 1]), 2).tolist() == [1, 1]


def test_baseline_predictions_regression_train_mean():
    assert gate.baseline_predictions("regression", pd.Series([1.0, 2.0, 6.0]), 2).tolist() == [3.0, 3.0]


def test_chance_model_that_looks_better_on_40_rows_fails():
    """A coin flip that happens to score 0.60 against a 0.50 baseline on 40 rows is stopped."""
    rng = np.random.default_rng(0)
    truth = np.array([0, 1] * 20)
    baseline = np.zeros(40, dtype=int)
    model = labels_with_accuracy(truth, 0.60, rng)
    result = gate.paired_classification_test(truth, model, baseline, ALPHA)
    assert result.model_value == pytest.approx(0.60) and result.baseline_value == pytest.approx(0.50)
    assert result.lift == pytest.approx(0.10)
    assert result.p_value > ALPHA
    assert result.lift_lower_bound < 0
    check = gate.baseline_check(result, ALPHA)
    assert not check.passed
    assert check.name == "baseline.p_value" and check.expected == "< 0.05"


def test_small_real_lift_on_3000_rows_passes():
    """0.56 against 0.50 on 3000 rows is a real lift: it passes, with a positive lower bound."""
    rng = np.random.default_rng(1)
    truth = np.array([0, 1] * 1500)
    baseline = np.zeros(3000, dtype=int)
    model = labels_with_accuracy(truth, 0.56, rng)
    result = gate.paired_classification_test(truth, model, baseline, ALPHA)
    assert result.lift == pytest.approx(0.06)
    assert result.p_value < 0.001
    assert 0 < result.lift_lower_bound < result.lift
    assert gate.baseline_check(result, ALPHA).passed


def test_exact_mcnemar_counts_only_discordant_rows():
    truth = np.array([1, 1, 1, 1, 0, 0])
    baseline = np.array([1, 1, 1, 1, 1, 1])  # right on the four 1s
    model = np.array([1, 1, 1, 1, 0, 1])     # right where the baseline is, plus one more row
    result = gate.paired_classification_test(truth, model, baseline, ALPHA)
    assert result.p_value == pytest.approx(0.5)  # 1 win, 0 losses: P(X >= 1 | n=1) = 0.5
    identical = gate.paired_classification_test(truth, baseline, baseline, ALPHA)
    assert identical.p_value == 1.0 and identical.lift == 0.0


def test_worse_than_baseline_fails():
    truth = np.array([0] * 80 + [1] * 20)
    result = gate.paired_classification_test(truth, 1 - truth, np.zeros(100, dtype=int), ALPHA)
    assert result.lift == pytest.approx(-0.8)
    assert not gate.baseline_check(result, ALPHA).passed


def test_string_labels():
    truth = np.array(["yes", "no"] * 50)
    result = gate.paired_classification_test(truth, truth, np.array(["no"] * 100), ALPHA)
    assert result.model_value == 1.0 and result.p_value < ALPHA


def test_regression_noise_model_fails_and_real_model_passes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=2000)
    y = 0.3 * x + rng.normal(size=2000)            # R2 about 0.08: a small real signal
    baseline = np.full(2000, y.mean())
    real = gate.paired_regression_test(y, 0.3 * x, baseline, ALPHA)
    assert real.p_value < ALPHA and 0 < real.lift_lower_bound < real.lift
    assert real.lift == pytest.approx(real.model_value - real.baseline_value)
    # A model whose predictions ignore the truth, on 40 rows, does not beat the mean.
    small = slice(0, 40)
    noise = gate.paired_regression_test(y[small], y.mean() + rng.normal(0, 0.1, 40), baseline[small], ALPHA)
    assert noise.p_value > ALPHA
    assert not gate.baseline_check(noise, ALPHA).passed


def test_regression_r2_units_match_sklearn():
    from sklearn.metrics import r2_score

    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    model = np.array([1.1, 1.9, 3.2, 3.8, 5.1])
    result = gate.paired_regression_test(y, model, np.full(5, 3.0), ALPHA)
    assert result.model_value == pytest.approx(r2_score(y, model))
    assert result.baseline_value == pytest.approx(0.0)


def test_regression_identical_to_baseline_has_p_one():
    y = np.array([1.0, 2.0, 3.0])
    assert gate.paired_regression_test(y, np.full(3, 2.0), np.full(3, 2.0), ALPHA).p_value == 1.0


def test_limit_check():
    assert gate.limit_check("x", 0.7, 0.7, True).passed
    assert not gate.limit_check("x", 0.69, 0.7, True).passed
    assert gate.limit_check("x", 2.0, 2.0, False).passed
    assert not gate.limit_check("x", math.nan, 1.0, False).passed
    assert not gate.limit_check("x", None, 1.0, True).passed
    assert gate.limit_check("latency", 12.5, 500, False).expected == "<= 500"


def test_check_describe():
    assert Check("threshold.accuracy", False, 0.91234, ">= 0.95").describe() == "threshold.accuracy=0.9123 (expected >= 0.95)"
    assert Check("a", False, None, ">= 1", "why").describe() == "a=missing (expected >= 1): why"
    assert gate.failures([Check("a", True, 1.0, ""), Check("b", False, 0.0, "")]) == [Check("b", False, 0.0, "")]


TRAIN = {"train.accuracy": 1.0, "validation.accuracy": 0.9, "cv.accuracy_std": 0.08}


def test_gaps_are_measured_and_only_set_limits_checked():
    gaps, checks = gate.gap_checks("accuracy", True, TRAIN, 0.8, {"max_train_test_gap": 0.1, "max_cv_std": None})
    assert gaps == pytest.approx({"train_test_gap": 0.2, "train_validation_gap": 0.1, "validation_test_gap": 0.1,
                                  "cv_std": 0.08})
    assert [(c.name, c.passed) for c in checks] == [("overfitting.train_test_gap", False)]


def test_gap_limits_pass_and_cv_spread_fails():
    limits = {"max_train_test_gap": 0.25, "max_train_validation_gap": 0.1, "max_validation_test_gap": 0.1,
              "max_cv_std": 0.05}
    _, checks = gate.gap_checks("accuracy", True, TRAIN, 0.8, limits)
    assert {c.name: c.passed for c in checks} == {
        "overfitting.train_test_gap": True, "overfitting.train_validation_gap": True,
        "overfitting.validation_test_gap": True, "overfitting.cv_std": False}


def test_gaps_for_lower_is_better_metrics():
    gaps, checks = gate.gap_checks("rmse", False, {"train.rmse": 1.0, "validation.rmse": 1.5}, 2.0,
                                   {"max_train_test_gap": 0.5})
    assert gaps["train_test_gap"] == pytest.approx(1.0) and gaps["validation_test_gap"] == pytest.approx(0.5)
    assert not checks[0].passed


def test_gap_limit_on_a_metric_train_did_not_log_fails():
    gaps, checks = gate.gap_checks("roc_auc", True, TRAIN, 0.9, {"max_train_test_gap": 0.1})
    assert gaps == {}
    assert not checks[0].passed and "no roc_auc" in checks[0].note


def test_per_class_and_min_recall():
    truth = ["a", "a", "a", "a", "b", "b", "c", "c"]
    pred = ["a", "a", "a", "b", "b", "b", "a", "c"]
    report = gate.per_class(truth, pred)
    assert report["labels"] == ["a", "b", "c"]
    assert report["recall"] == pytest.approx({"a": 0.75, "b": 1.0, "c": 0.5})
    assert report["precision"]["b"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert gate.class_recall_checks(report, None) == []
    checks = gate.class_recall_checks(report, 0.6)
    assert [(c.name, c.passed) for c in checks] == [("class_recall.a", True), ("class_recall.b", True),
                                                    ("class_recall.c", False)]


def test_class_never_in_the_test_rows_is_not_checked():
    report = gate.per_class([0, 0, 1], [0, 2, 1])
    assert [c.name for c in gate.class_recall_checks(report, 0.9)] == ["class_recall.0", "class_recall.1"]


def test_metric_safe_and_p95():
    assert gate.metric_safe("a+b (x)") == "a_b _x_"
    assert gate.p95_ms([0.001] * 19 + [0.1]) == pytest.approx(5.95)


def test_default_qa_config_has_a_level_and_every_limit(project_root):
    qa = yaml.safe_load((project_root / "conf" / "qa" / "default.yaml").read_text())
    assert qa["baseline"]["enabled"] is True and 0 < qa["baseline"]["alpha"] < 0.5
    assert set(qa["overfitting"]) == {"max_train_test_gap", "max_train_validation_gap", "max_validation_test_gap",
                                      "max_cv_std"}
    assert qa["inference"]["latency_rows"] > 0 and qa["inference"]["cpu_p95_budget_ms"] > 0
    assert qa["inference"]["p95_budget_ms"] is None  # wall-clock moves with the machine's load: report only


CHECK_NAMES = ["baseline.p_value", "threshold.accuracy", "threshold.roc_auc", "champion.accuracy", "champion.compatible",
               "overfitting.train_test_gap", "overfitting.train_validation_gap", "overfitting.validation_test_gap",
               "overfitting.cv_std", "class_recall.2", "inference.serving_input", "inference.latency_p95_ms",
               "inference.cpu_p95_ms", "drift.test", "drift.batch"]


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_every_model_check_names_an_override_that_exists(name):
    """The key a failed check names composes against conf/ (its <placeholder> replaced by a value)."""
    from mlpipe.config import compose

    key, _, value = gate.relax_hint(name, "classification").partition("=")
    value = {"<count>": "1", "<ms>": "100"}.get(value, "0.5" if value.startswith("<") else value)
    compose([f"{key}={value}"])  # a ConfigError for a key that does not exist


def test_the_failure_line_says_how_to_change_each_check():
    checks = [gate.Check("baseline.p_value", False, 0.41, "< 0.05"), gate.Check("drift.batch", False, 2.0, "<= 0")]
    assert gate.failure_line(checks, "regression") == (
        "baseline.p_value=0.41 (expected < 0.05) (to change: qa.baseline.alpha=<alpha>); "
        "drift.batch=2 (expected <= 0) (to change: qa.drift.max_drifted_columns=<count>)")
