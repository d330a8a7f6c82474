"""`sklearn:synthetic?rows=...&columns=...&task=...`: generated data of any size, no download.

The source string carries every parameter, so it is its own content digest: the same string
(and NumPy version: its random generator) always generates the same rows.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from mlpipe.errors import ConfigError

TASKS = ("classification", "regression")
# What a source string that leaves a parameter out means. Part of the source format, not config:
# the string is its own digest, so its meaning must not move with conf/ (conf/data/synthetic.yaml
# writes every parameter into the string it builds).
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
    """The frame: float64 features x00..xNN (the first `informative` carry the signal) and `target`.

    Drawn column by column into one preallocated block that the DataFrame wraps without a copy,
    so generating n rows x p columns costs about the frame's own size (scikit-learn's
    make_classification holds several copies of X: 4.5x the frame's size at 1M x 20, measured).
    classification: Gaussian clusters around a random centroid per class, 1% of labels flipped;
    regression: y = X_informative @ w + N(0, noise), w ~ U(0, 100) as in make_regression."""
    rows, columns, informative = int(params["rows"]), int(params["columns"]), int(params["informative"])
    rng = np.random.default_rng(int(params["seed"]))
    block = np.empty((columns, rows))  # C order: block[j] is column j, contiguous
    for j in range(columns):
        rng.standard_normal(out=block[j])
    if params["task"] == "classification":
        classes = int(params["classes"])
        y = rng.integers(0, classes, rows)
        centroids = rng.normal(0.0, 1.0, (classes, informative))
        for j in range(informative):
            block[j] += centroids[y, j]
        flip = rng.random(rows) < 0.01
        y[flip] = rng.integers(0, classes, int(flip.sum()))
        target = y.astype(np.int64)
    else:
        weights = rng.uniform(0.0, 100.0, informative)
        target = rng.normal(0.0, float(params["noise"]), rows)
        for j in range(informative):
            target += weights[j] * block[j]
    frame = pd.DataFrame(block.T, columns=column_names(columns), copy=False)
    frame["target"] = target
    return frame
