"""mlpipe/quality/importance.py: permutation importance on a model whose inputs matter unequally."""

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge

from mlpipe.quality import importance


def test_the_column_the_model_reads_is_the_important_one():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"signal": rng.normal(0, 1, 600), "noise": rng.normal(0, 1, 600)})
    truth = (rows["signal"] > 0).astype(int)
    model = LogisticRegression().fit(rows, truth)
    found = importance.permutation(model.predict, rows, truth, "classification", repeats=3, seed=0)
    assert [f["column"] for f in found] == ["signal", "noise"]
    assert found[0]["importance"] > 0.3 and abs(found[1]["importance"]) < 0.02 and found[0]["score"] == "accuracy"


def test_regression_drops_are_in_r2_and_two_lists_compare_by_change():
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.normal(0, 1, 300)})
    truth = 3 * rows["a"] + 0.1 * rng.normal(0, 1, 300)
    found = importance.permutation(Ridge().fit(rows, truth).predict, rows, truth, "regression", 2, 0)
    assert found[0]["column"] == "a" and found[0]["score"] == "r2" and found[0]["importance"] > 1.0
    table = importance.compared([{"column": "a", "importance": 0.5}, {"column": "b", "importance": 0.0}],
                                [{"column": "a", "importance": 0.1}, {"column": "b", "importance": 0.3}])
    assert [r[0] for r in table] == ["a", "b"] and table[0][3] == -0.4
    assert importance.permutation(Ridge().fit(rows, truth).predict, rows.head(1), truth.head(1), "regression", 2, 0) == []
