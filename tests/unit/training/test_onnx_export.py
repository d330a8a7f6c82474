"""mlpipe/training/onnx_export.py: every estimator in conf/model converts with the pipeline's own
preprocessing, on bundled data with a string column and missing values, and onnxruntime agrees
with scikit-learn on held-out rows (labels identical, probabilities and values within 1e-5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra.utils import instantiate
from sklearn.datasets import load_diabetes, load_wine

from mlpipe.config import CONF_DIR
from mlpipe.data import features
from mlpipe.training import estimators, onnx_export

PRE = {"numeric_impute": "median", "categorical_impute": "most_frequent", "scale_numeric": True,
       "min_category_frequency": 0.05}
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def messy(frame: pd.DataFrame, target: str, seed: int = 0) -> pd.DataFrame:
    """A string column with a rare category, and missing values in a numeric and the string column."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["colour"] = rng.choice(["red", "white", "rose", "orange"], len(out), p=[0.45, 0.45, 0.08, 0.02])
    numeric = [c for c in out.columns if c not in (target, "colour")][0]
    out.loc[rng.random(len(out)) < 0.1, numeric] = np.nan
    out.loc[rng.random(len(out)) < 0.1, "colour"] = np.nan
    return out


def fitted(name: str):
    cfg = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    cfg = {k: (42 if v == "${seed}" else v) for k, v in cfg.items()}
    estimator = instantiate(cfg)
    task = "classification" if hasattr(estimator, "predict_proba") else "regression"
    data = (load_wine if task == "classification" else load_diabetes)(as_frame=True).frame
    data = messy(data, "target")
    spec = features.feature_spec(data, "target", task)
    data = features.normalise_types(data, spec)
    train, test = data.iloc[::2], data.iloc[1::2]
    pre = features.fit_preprocessor(spec, PRE, train)
    model, _ = estimators.fit_model(pre, estimator, train[spec.columns], train["target"])
    return model, spec, task, test


@pytest.mark.parametrize("name", MODELS)
def test_every_configured_model_converts_and_agrees_with_scikit_learn(name):
    model, spec, task, test = fitted(name)
    graph, layout = onnx_export.convert(model, spec.numeric, spec.categorical, task, 18, 3)
    X = test[spec.columns].copy()
    X.loc[X.index[:3], "colour"] = "never-seen"  # an unknown category goes where scikit-learn sends it
    values, proba = onnx_export.run(onnx_export.session(graph), layout, layout.feeds(X))
    if task == "classification":
        assert (values == model.predict(X)).all()
        assert np.abs(proba - model.predict_proba(X)).max() < 1e-5
    else:
        assert np.abs(values - model.predict(X)).max() < 1e-5 * max(1.0, np.abs(model.predict(X)).max())
    assert layout.columns == spec.columns and layout.estimator == type(model.steps[-1][1]).__name__


def test_column_names_become_valid_distinct_input_names():
    names = onnx_export.input_names(["od280/od315_of_diluted_wines", "a b", "a_b", "ok", "é"])
    assert names == {"od280/od315_of_diluted_wines": "od280_od315_of_diluted_wines", "a b": "a_b", "a_b": "a_b_2",
                     "ok": "ok", "é": "_"}


def test_a_slash_in_a_column_name_still_feeds_its_column():
    model, spec, task, test = fitted("logistic_regression")
    column = "od280/od315_of_diluted_wines"  # wine's own column name
    graph, layout = onnx_export.convert(model, spec.numeric, spec.categorical, task, 18, 3)
    assert {"column": column, "name": "od280_od315_of_diluted_wines", "type": "double"} in layout.inputs
    X = test[spec.columns].copy()
    X[column] = X[column] * 3  # moves the probabilities only if this column reaches the graph
    assert np.abs(model.predict_proba(X) - model.predict_proba(test[spec.columns])).max() > 0.1
    values, proba = onnx_export.run(onnx_export.session(graph), layout, layout.feeds(X))
    assert np.abs(proba - model.predict_proba(X)).max() < 1e-5


def test_a_conversion_failure_names_the_estimator():
    from sklearn.neighbors import KNeighborsClassifier

    model, spec, task, _ = fitted("logistic_regression")
    model.steps[-1] = ("model", object.__new__(KNeighborsClassifier))  # unfitted: nothing to convert
    with pytest.raises(onnx_export.ConversionError) as info:
        onnx_export.convert(model, spec.numeric, spec.categorical, task, 18, 3)
    assert str(info.value).startswith("KNeighborsClassifier: ")


def test_the_empty_string_as_a_category_is_refused():
    model, spec, task, test = fitted("logistic_regression")
    encoder = model.steps[0][1].named_transformers_["categorical"].steps[-1][1]
    encoder.categories_[0] = np.array(["", *encoder.categories_[0][1:]], dtype=object)
    with pytest.raises(onnx_export.ConversionError, match="string column 'colour' has the empty string"):
        onnx_export.convert(model, spec.numeric, spec.categorical, task, 18, 3)


def test_the_layout_round_trips_and_refuses_unknown_input_types():
    layout = onnx_export.Layout([{"column": "a/b", "name": "a_b", "type": "double"}], ["variable"], "regression",
                                "Ridge", {"ai.onnx": 18})
    assert onnx_export.Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="type: double|string"):
        onnx_export.Layout.from_dict(layout.to_dict() | {"inputs": [{"column": "a", "name": "a", "type": "int"}]})


def test_missing_values_feed_as_nan_and_empty_string():
    assert np.isnan(onnx_export.column_array([1.0, None], "double")[1, 0])
    assert onnx_export.column_array(["x", None, np.nan, 3], "string").ravel().tolist() == ["x", "", "", "3"]
