"""`sklearn:synthetic?rows=...&columns=...&task=...`: generated data of any size, no download.

The source string carries every parameter, so it is its own content digest: the same string
(and scikit-learn version) always generates the same rows.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from mlpipe.errors import ConfigError

TASKS = ("classification", "regression")
DEFAULTS: dict[str, object] = {"task": "classification", "rows": 10_000, "columns": 20, "informative": 10,
                               "classes": 2, "noise": 10.0, "seed": 0}
MAX_ROWS = 100_000_000


def parse(query: str) -> dict[str, object]:
    """`rows=1000&task=regression` -> every parameter, checked, defaults filled in."""
    params = dict(DEFAULTS)
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in DEFAULTS:
            raise ConfigError(f"sklearn:synthetic: unknown parameter {key!r}; expected {', '.join(DEFAULTS)}")
        kind = type(DEFAULTS[key])
        try:
            params[key] = kind(raw) if kind is not int else int(float(raw))
        except ValueError as exc:
            what = {"int": "an integer", "float": "a number"}.get(kind.__name__, kind.__name__)
            raise ConfigError(f"sklearn:synthetic: {key}={raw!r} is not {what}") from exc
    if params["task"] not in TASKS:
        raise ConfigError(f"sklearn:synthetic: task={params['task']!r}; expected {' or '.join(TASKS)}")
    if not 20 <= int(params["rows"]) <= MAX_ROWS:
        raise ConfigError(f"sklearn:synthetic: rows={params['rows']}; expected 20 to {MAX_ROWS:,}")
    if not 1 <= int(params["informative"]) <= int(params["columns"]):
        raise ConfigError(f"sklearn:synthetic: informative={params['informative']} must be 1..columns "
                          f"({params['columns']})")
    if params["task"] == "classification" and not 2 <= int(params["classes"]) <= 50:
        raise ConfigError(f"sklearn:synthetic: classes={params['classes']}; expected 2 to 50")
    return params


def canonical(params: dict[str, object]) -> str:
    return "&".join(f"{k}={params[k]}" for k in DEFAULTS)


def column_names(columns: int) -> list[str]:
    width = len(str(columns - 1))
    return [f"x{i:0{width}d}" for i in range(columns)]


def generate(params: dict[str, object]) -> pd.DataFrame:
    """The frame: float64 features x00..xNN and `target`, built without a second copy of X."""
    from sklearn.datasets import make_classification, make_regression

    rows, columns, informative = int(params["rows"]), int(params["columns"]), int(params["informative"])
    seed = int(params["seed"])
    if params["task"] == "classification":
        classes = int(params["classes"])
        X, y = make_classification(n_samples=rows, n_features=columns, n_informative=informative,
                                   n_redundant=0, n_classes=classes, n_clusters_per_class=1 if classes > 2 else 2,
                                   random_state=seed)
    else:
        X, y = make_regression(n_samples=rows, n_features=columns, n_informative=informative,
                               noise=float(params["noise"]), random_state=seed)
    frame = pd.DataFrame(X, columns=column_names(columns), copy=False)
    frame["target"] = y.astype(np.int64) if params["task"] == "classification" else y
    return frame
