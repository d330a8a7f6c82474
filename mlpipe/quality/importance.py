"""Global feature importance by permutation (pure: a predict function, rows and their labels in):
how much the model's score drops when one input column's values are shuffled across the rows,
on the raw columns the model is served (the whole pipeline, preprocessing included), the way
scikit-learn's `permutation_importance` measures it. It needs only predictions, so it runs on the
served ONNX model too, with nothing unpickled. qa's card shows it on the test split; the
monitor's card compares it on the training rows and on the labelled served rows (docs/loop.md)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd


def score_of(task: str) -> tuple[str, Callable]:
    """(name, score) the drop is measured in: accuracy for classification, R^2 for regression."""
    from sklearn.metrics import accuracy_score, r2_score

    return ("accuracy", accuracy_score) if task == "classification" else ("r2", r2_score)


def permutation(predict: Callable, rows: pd.DataFrame, truth, task: str, repeats: int, seed: int) -> list[dict]:
    """Per column, the mean and standard deviation over `repeats` shuffles of the score's drop,
    most important first. Fewer than two rows: none."""
    if len(rows) < 2:
        return []
    name, score = score_of(task)
    truth = np.asarray(truth)
    base = score(truth, np.asarray(predict(rows)))
    rng = np.random.default_rng(seed)
    found = []
    for column in rows.columns:
        drops = []
        for _ in range(repeats):
            shuffled = rows.copy()
            shuffled[column] = rng.permutation(rows[column].to_numpy())
            drops.append(base - score(truth, np.asarray(predict(shuffled))))
        found.append({"column": str(column), "importance": float(np.mean(drops)), "std": float(np.std(drops)),
                      "score": name, "base": float(base), "rows": int(len(rows))})
    return sorted(found, key=lambda f: -f["importance"])


def compared(training: list[dict], served: list[dict]) -> list[list]:
    """[column, importance on the training rows, on the served rows, change], the largest change first."""
    before = {f["column"]: f["importance"] for f in training}
    after = {f["column"]: f["importance"] for f in served}
    rows = [[c, before.get(c, float("nan")), after.get(c, float("nan")), after.get(c, 0.0) - before.get(c, 0.0)]
            for c in dict.fromkeys([*before, *after])]
    return sorted(rows, key=lambda r: -abs(r[3]))
