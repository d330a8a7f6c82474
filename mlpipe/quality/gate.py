"""The qa gate's statistics and checks: pure functions over arrays and dicts, no MLflow calls.

Each check is a `Check` (name, passed, value, expected) that qa writes to `qa_report.json`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Check:
    """One gate check as the report shows it; `value` None means it could not be measured."""

    name: str
    passed: bool
    value: float | None
    expected: str
    note: str = ""

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}={shown} (expected {self.expected})" + (f": {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


def as_number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def limit_check(name: str, value: float | None, limit: float, greater_is_better: bool, note: str = "") -> Check:
    """`value` at least (or at most) `limit`; a missing or NaN value fails."""
    value = as_number(value)
    passed = value is not None and (value >= limit if greater_is_better else value <= limit)
    return Check(name, passed, value, f"{'>=' if greater_is_better else '<='} {limit:g}", note)


# --- the trivial baseline ----------------------------------------------------------------

def baseline_predictions(task: str, y_train: pd.Series, rows: int) -> np.ndarray:
    """What a model that ignores the features predicts: the most frequent training class
    (ties: the smallest label, as scikit-learn's DummyClassifier) or the training mean."""
    if task == "classification":
        counts = y_train.value_counts()
        top = sorted(counts[counts == counts.max()].index, key=str)[0]
        return np.full(rows, top, dtype=object if isinstance(top, str) else np.asarray(y_train).dtype)
    return np.full(rows, float(np.mean(y_train)))


@dataclass(frozen=True)
class BaselineTest:
    """The model against the baseline on the same test rows, in the units of `metric`."""

    metric: str
    model_value: float
    baseline_value: float
    lift: float
    lift_lower_bound: float
    p_value: float
    rows: int
    test: str


def _lower_bound(diffs: np.ndarray, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on the mean of paired differences (t)."""
    from scipy import stats

    if len(diffs) < 2:
        return -math.inf
    se = float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs))
    return float(np.mean(diffs) - stats.t.ppf(1 - alpha, len(diffs) - 1) * se)


def paired_classification_test(y_true, y_model, y_baseline, alpha: float) -> BaselineTest:
    """Exact one-sided McNemar test: among rows where exactly one of the two is right, is the
    model right more often than chance? Lift and its bound are in accuracy units."""
    from scipy import stats

    truth = np.asarray(y_true)
    model_right = np.asarray(y_model) == truth
    base_right = np.asarray(y_baseline) == truth
    wins = int(np.sum(model_right & ~base_right))
    losses = int(np.sum(~model_right & base_right))
    p_value = float(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0
    diffs = model_right.astype(float) - base_right.astype(float)
    return BaselineTest("accuracy", float(model_right.mean()), float(base_right.mean()), float(diffs.mean()),
                        _lower_bound(diffs, alpha), p_value, len(truth), "exact one-sided McNemar")


def paired_regression_test(y_true, y_model, y_baseline, alpha: float) -> BaselineTest:
    """One-sided paired t-test on per-row squared errors (baseline minus model). Lift and its
    bound are in R2 units: R2 = 1 - MSE / Var(y), so an MSE difference over Var(y) is an R2 lift."""
    from scipy import stats

    truth = np.asarray(y_true, dtype=float)
    diffs = (np.asarray(y_baseline, dtype=float) - truth) ** 2 - (np.asarray(y_model, dtype=float) - truth) ** 2
    variance = float(np.var(truth))
    scale = variance if variance > 0 else math.nan
    p_value = as_number(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue) if len(diffs) > 1 else None
    mse_model = float(np.mean((np.asarray(y_model, dtype=float) - truth) ** 2))
    mse_base = float(np.mean((np.asarray(y_baseline, dtype=float) - truth) ** 2))
    return BaselineTest("r2", 1 - mse_model / scale, 1 - mse_base / scale, float(diffs.mean()) / scale,
                        _lower_bound(diffs, alpha) / scale, 1.0 if p_value is None else p_value, len(truth),
                        "one-sided paired t-test on squared errors")


def baseline_check(result: BaselineTest, alpha: float) -> Check:
    """The model must beat the baseline significantly at level `alpha` (p-value below it)."""
    note = (f"{result.test} on {result.rows} rows: {result.metric} {result.model_value:.4f} vs baseline "
            f"{result.baseline_value:.4f}, lift {result.lift:+.4f} (lower bound {result.lift_lower_bound:+.4f})")
    return Check("baseline.p_value", result.p_value < alpha, result.p_value, f"< {alpha:g}", note)


def relax_hint(name: str, task: str) -> str:
    """The override that changes the check `name` (as qa_report.json names it) for `task`."""
    group, _, rest = name.partition(".")
    hints = {
        "baseline": "qa.baseline.alpha=<alpha>",
        "threshold": f"qa.thresholds.{task}.{rest}=<value>",
        "champion": "qa.champion.on_incompatible=replace" if rest == "compatible" else "qa.champion.tolerance=<tolerance>",
        "overfitting": f"qa.overfitting.max_{rest}=<limit>",
        "class_recall": "qa.min_class_recall=<recall>",
        "inference": {"latency_p95_ms": "qa.inference.p95_budget_ms=<ms>",
                      "cpu_p95_ms": "qa.inference.cpu_p95_budget_ms=<ms>"}.get(rest, "registry.allow_unvalidated=true"),
        "drift": "qa.drift.max_drifted_columns=<count>",
        "onnx": "runtime=sklearn serves the scikit-learn model instead of an ONNX conversion",
    }
    return hints.get(group, "registry.allow_unvalidated=true")


def failure_line(checks: list[Check], task: str) -> str:
    """Every failed check, what was expected, and the override that changes it."""
    return "; ".join(f"{c.describe()} (to change: {relax_hint(c.name, task)})" for c in checks)


# --- overfitting ---------------------------------------------------------------------------

def gap_checks(metric: str, greater_is_better: bool, train_metrics: dict[str, float], test_value: float | None,
               limits: dict[str, float | None]) -> tuple[dict[str, float], list[Check]]:
    """Score gaps (how much worse the later split is) and the CV spread, from the train run's
    `train.<metric>`, `validation.<metric>`, `cv.<metric>_std`; a limit of None only reports."""
    sign = 1.0 if greater_is_better else -1.0
    train, validation = as_number(train_metrics.get(f"train.{metric}")), as_number(train_metrics.get(f"validation.{metric}"))
    test = as_number(test_value)
    measured = {
        "train_test_gap": None if train is None or test is None else sign * (train - test),
        "train_validation_gap": None if train is None or validation is None else sign * (train - validation),
        "validation_test_gap": None if validation is None or test is None else sign * (validation - test),
        "cv_std": as_number(train_metrics.get(f"cv.{metric}_std")),
    }
    checks = []
    for name, value in measured.items():
        limit = limits.get(f"max_{name}")
        if limit is not None:
            checks.append(limit_check(f"overfitting.{name}", value, float(limit), False,
                                      "" if value is not None else f"the train run has no {metric} for it"))
    return {k: v for k, v in measured.items() if v is not None}, checks


# --- per class ---------------------------------------------------------------------------

def metric_safe(label) -> str:
    """A class label as it can appear in an MLflow metric name."""
    return re.sub(r"[^\w\-. /]", "_", str(label))


def per_class(y_true, y_pred) -> dict[str, Any]:
    """Per-class precision/recall/support and the confusion matrix (rows: truth, columns: predicted)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = sorted(set(pd.Series(y_true).tolist()) | set(pd.Series(y_pred).tolist()), key=str)
    precision, recall, _, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "labels": [str(label) for label in labels],
        "precision": {str(label): float(p) for label, p in zip(labels, precision)},
        "recall": {str(label): float(r) for label, r in zip(labels, recall)},
        "support": {str(label): int(s) for label, s in zip(labels, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def class_recall_checks(report: dict[str, Any], min_recall: float | None) -> list[Check]:
    """Every class present in the test rows reaches `min_recall` (None: report only)."""
    if min_recall is None:
        return []
    return [limit_check(f"class_recall.{label}", report["recall"][label], float(min_recall), True)
            for label in report["labels"] if report["support"][label] > 0]


# --- inference ---------------------------------------------------------------------------

def p95_ms(seconds: list[float]) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, 95))
