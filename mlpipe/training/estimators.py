"""Building the estimator from config, cross-validation, fitting and scoring."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.metrics import get_scorer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline

from mlpipe.errors import ConfigError, DataError, one_line
from mlpipe.training import metric_names



def build_estimator(model_cfg: dict[str, Any], task: str):
    """Instantiate `model` config (`_target_` + constructor args) and check it fits the task."""
    from hydra.utils import instantiate

    from mlpipe.config import check_model_params

    target = model_cfg.get("_target_")
    check_model_params(model_cfg)
    try:
        estimator = instantiate(model_cfg)
    except Exception as exc:
        raise ConfigError(f"cannot build model {target!r}: {one_line(exc)}") from exc
    kind = "classification" if is_classifier(estimator) else "regression" if is_regressor(estimator) else None
    if kind is None:
        raise ConfigError(f"model {target!r} is neither a classifier nor a regressor")
    if kind != task:
        what = "a classifier" if task == "classification" else "a regressor"
        raise ConfigError(f"model {target!r} does a {kind} task but the data's task is {task}; choose {what} "
                          f"({', '.join(model_choices(task))})")
    return estimator


def model_choices(task: str) -> list[str]:
    """The model configs in conf/model whose estimator does `task` (for error hints)."""
    import yaml
    from hydra.utils import get_class

    from mlpipe.config import CONF_DIR

    names = []
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        try:
            estimator = get_class(yaml.safe_load(path.read_text())["_target_"])()
        except Exception:  # noqa: BLE001 - a config we cannot read is no suggestion
            continue
        if (is_classifier(estimator) if task == "classification" else is_regressor(estimator)):
            names.append(path.stem)
    return names


def metric_name(task: str, configured: str | None) -> str:
    """`train.metric`, or the task's default, checked against the metric table."""
    return metric_names.cv_metric(task, configured).name


def score(task: str, y_true, y_pred) -> dict[str, float]:
    """The metrics we log for a split."""
    from sklearn import metrics

    if task == "classification":
        return {
            "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
            "f1_score": float(metrics.f1_score(y_true, y_pred, average="macro")),
        }
    mse = float(metrics.mean_squared_error(y_true, y_pred))
    return {
        "r2": float(metrics.r2_score(y_true, y_pred)),
        "rmse": float(np.sqrt(mse)),
        "mae": float(metrics.mean_absolute_error(y_true, y_pred)),
    }


def cross_validate(preprocessor, estimator, X: pd.DataFrame, y: pd.Series, task: str,
                   folds: int, metric: str, seed: int) -> np.ndarray:
    """CV scores of an unfitted preprocessor+estimator on the training split (no leakage)."""
    if folds < 2:
        return np.array([])
    if task == "classification":
        smallest = int(y.value_counts().min())
        if smallest < folds:
            raise DataError(f"the smallest class has {smallest} training rows; train.cv_folds={folds} needs {folds}")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    pipe = Pipeline([("preprocess", clone(preprocessor)), ("model", clone(estimator))])
    scorer_name = metric_names.METRICS[metric].cv_scorer
    scorer = get_scorer(scorer_name)
    scores = []
    # cross_val_score's folds and scores, with one part of a fold in memory at a time
    # (cross_val_score copies a fold's fitting and scoring rows together).
    for fit_rows, score_rows in splitter.split(X, y):
        fitted = clone(pipe).fit(X.iloc[fit_rows], y.iloc[fit_rows])
        scores.append(scorer(fitted, X.iloc[score_rows], y.iloc[score_rows]))
    scores = np.array(scores)
    return -scores if scorer_name.startswith("neg_") else scores


def transform(preprocessor, X: pd.DataFrame, chunk_rows: int = 65536):
    """`preprocessor.transform(X)` a block of rows at a time, into one array: the same values
    (every transformer here works row by row), with scikit-learn's temporary copies of the
    numeric block (about two at once) held for one block instead of for all the rows."""
    first = preprocessor.transform(X.iloc[:chunk_rows])  # dense (features.build_preprocessor)
    if len(X) <= chunk_rows:
        return first
    out = np.empty((len(X), first.shape[1]), dtype=first.dtype)
    out[:chunk_rows] = first
    del first
    for start in range(chunk_rows, len(X), chunk_rows):
        out[start:start + chunk_rows] = preprocessor.transform(X.iloc[start:start + chunk_rows])
    return out


def fit_model(preprocessor, estimator, X: pd.DataFrame, y: pd.Series) -> tuple[Pipeline, np.ndarray]:
    """Fit the estimator on the already-fitted preprocessor's output; the model takes raw rows.

    Also returns the model's predictions for X, from the transform the fit used (what
    `model.predict(X)` gives, without transforming X a second time)."""
    return fit_transformed(preprocessor, estimator, transform(preprocessor, X), y)


def fit_transformed(preprocessor, estimator, transformed, y: pd.Series) -> tuple[Pipeline, np.ndarray]:
    """`fit_model` given `preprocessor.transform(X)`, so a caller can let the raw rows go first."""
    fitted = clone(estimator).fit(transformed, y)
    return Pipeline([("preprocess", preprocessor), ("model", fitted)]), fitted.predict(transformed)
