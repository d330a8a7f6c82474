"""The one table of metrics: for each name used in config (`train.metric`, `qa.*`), the task it
applies to, its direction, the name mlflow.models.evaluate logs it under, and the scikit-learn
scorer train's cross-validation uses (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from mlpipe.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    greater_is_better: bool
    evaluate_name: str  # as mlflow.models.evaluate logs it
    cv_scorer: str | None  # scikit-learn scorer for train's CV; None: qa only


METRICS = {m.name: m for m in (
    Metric("accuracy", "classification", True, "accuracy_score", "accuracy"),
    Metric("f1_score", "classification", True, "f1_score", "f1_macro"),
    # needs predicted probabilities, which train's scoring of hard predictions does not have
    Metric("roc_auc", "classification", True, "roc_auc", None),
    Metric("r2", "regression", True, "r2_score", "r2"),
    Metric("rmse", "regression", False, "root_mean_squared_error", "neg_root_mean_squared_error"),
    Metric("mae", "regression", False, "mean_absolute_error", "neg_mean_absolute_error"),
)}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}
# The config names that apply to each task (qa), and those train's CV can score.
TASK_METRICS = {task: tuple(m.name for m in METRICS.values() if m.task == task) for task in DEFAULT_METRIC}
CV_METRICS = {task: tuple(m.name for m in METRICS.values() if m.task == task and m.cv_scorer)
              for task in DEFAULT_METRIC}


def _metric(name: str) -> Metric:
    if name not in METRICS:
        raise ConfigError(f"unknown qa metric {name!r}; expected one of {', '.join(METRICS)}")
    return METRICS[name]


def evaluate_name(metric: str) -> str:
    return _metric(metric).evaluate_name


def greater_is_better(metric: str) -> bool:
    return _metric(metric).greater_is_better


def task_metrics(task: str, metrics, key: str) -> list[str]:
    """`metrics` (config names), each checked to exist and apply to `task`; `key` names the config key."""
    names = list(metrics)
    for metric in names:
        if _metric(metric).task != task:
            raise ConfigError(f"{key}: {metric!r} does not apply to {task}; expected one of "
                              f"{', '.join(TASK_METRICS[task])}")
    return names


def cv_metric(task: str, configured: str | None) -> Metric:
    """`train.metric` (or the task's default), checked to be one train's CV can score for `task`."""
    name = configured or DEFAULT_METRIC[task]
    if name not in CV_METRICS[task]:
        raise ConfigError(f"train.metric={name!r} does not apply to {task}; expected one of "
                          f"{', '.join(CV_METRICS[task])}")
    return METRICS[name]
