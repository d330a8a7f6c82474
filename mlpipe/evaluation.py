"""The qa gate's decisions: which metrics to check and whether they pass (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

from mlpipe.errors import ConfigError

# Direction of the metrics that mlflow.models.evaluate reports and we gate on.
GREATER_IS_BETTER = {
    "accuracy_score": True, "accuracy": True, "f1_score": True, "precision_score": True,
    "recall_score": True, "roc_auc": True, "r2_score": True, "r2": True,
    "root_mean_squared_error": False, "rmse": False, "mean_absolute_error": False, "mae": False,
    "mean_squared_error": False,
}
# Our config names -> the names mlflow.models.evaluate logs.
EVALUATE_NAMES = {"accuracy": "accuracy_score", "f1_score": "f1_score", "roc_auc": "roc_auc",
                  "r2": "r2_score", "rmse": "root_mean_squared_error", "mae": "mean_absolute_error"}


@dataclass(frozen=True)
class Check:
    metric: str
    value: float | None
    threshold: float
    greater_is_better: bool

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.greater_is_better else self.value <= self.threshold

    def describe(self) -> str:
        op = ">=" if self.greater_is_better else "<="
        shown = "missing" if self.value is None else f"{self.value:.4f}"
        return f"{self.metric}={shown} (expected {op} {self.threshold})"


def evaluate_name(metric: str) -> str:
    if metric not in EVALUATE_NAMES:
        raise ConfigError(f"unknown qa metric {metric!r}; expected one of {', '.join(EVALUATE_NAMES)}")
    return EVALUATE_NAMES[metric]


def greater_is_better(metric: str) -> bool:
    return GREATER_IS_BETTER[evaluate_name(metric)]


def threshold_checks(metrics: dict[str, float], thresholds: dict[str, float]) -> list[Check]:
    """One Check per configured threshold, against the metrics mlflow.models.evaluate returned."""
    checks = []
    for metric, threshold in thresholds.items():
        name = evaluate_name(metric)
        value = metrics.get(name)
        checks.append(Check(metric, None if value is None else float(value), float(threshold),
                            GREATER_IS_BETTER[name]))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]
