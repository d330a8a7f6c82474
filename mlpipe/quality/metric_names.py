"""The qa gate's metric names and directions, as mlflow.models.evaluate reports them (pure)."""

from __future__ import annotations

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
# The config names that apply to each task.
TASK_METRICS = {"classification": ("accuracy", "f1_score", "roc_auc"), "regression": ("r2", "rmse", "mae")}


def evaluate_name(metric: str) -> str:
    if metric not in EVALUATE_NAMES:
        raise ConfigError(f"unknown qa metric {metric!r}; expected one of {', '.join(EVALUATE_NAMES)}")
    return EVALUATE_NAMES[metric]


def greater_is_better(metric: str) -> bool:
    return GREATER_IS_BETTER[evaluate_name(metric)]


def task_metrics(task: str, metrics, key: str) -> list[str]:
    """`metrics` (config names), each checked to exist and apply to `task`; `key` names the config key."""
    names = list(metrics)
    for metric in names:
        evaluate_name(metric)
        if metric not in TASK_METRICS[task]:
            raise ConfigError(f"{key}: {metric!r} does not apply to {task}; expected one of "
                              f"{', '.join(TASK_METRICS[task])}")
    return names
