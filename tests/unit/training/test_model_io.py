"""mlpipe/training/model_io.py: serialization formats, logged-model pins, the types skops must trust."""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from mlpipe.data.features import build_preprocessor, feature_spec, normalise_types
from mlpipe.errors import ConfigError
from mlpipe.training import model_io
from mlpipe.training.estimators import fit_model


@pytest.mark.parametrize("fmt", ["cloudpickle", "skops"])
def test_check_format_accepts(fmt):
    assert model_io.check_format(fmt) == fmt


@pytest.mark.parametrize("fmt", ["pickle", "Skops", ""])
def test_check_format_rejects(fmt):
    with pytest.raises(ConfigError) as info:
        model_io.check_format(fmt)
    message = str(info.value)
    assert f"serialization={fmt!r}" in message
    assert "cloudpickle, skops" in message


def test_pip_requirements_cloudpickle():
    pins = model_io.pip_requirements("cloudpickle")
    assert [p.split("==")[0] for p in pins] == ["mlflow", "scikit-learn", "numpy", "pandas", "scipy", "cloudpickle"]
    assert f"scikit-learn=={version('scikit-learn')}" in pins
    assert all(p.count("==") == 1 and p.split("==")[1] for p in pins)


def test_pip_requirements_skops_adds_skops():
    pins = model_io.pip_requirements("skops")
    assert pins[:-1] == model_io.pip_requirements("cloudpickle")
    assert pins[-1] == f"skops=={version('skops')}"


@pytest.fixture(scope="module")
def fitted_model(preprocess_cfg):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "kind": rng.choice(["p", "q"], size=60).astype(object),
                          "target": rng.choice([0, 1], size=60)})
    spec = feature_spec(frame, "target", "classification")
    frame = normalise_types(frame, spec)
    pre = build_preprocessor(spec, preprocess_cfg).fit(frame[spec.columns])
    return fit_model(pre, LogisticRegression(), frame[spec.columns], frame["target"])[0], frame[spec.columns]


def test_trusted_types_let_skops_load_the_model(fitted_model):
    import skops.io as sio

    model, X = fitted_model
    trusted = model_io.trusted_types(model)
    assert trusted  # a fitted pipeline holds types skops does not trust by default
    assert all(t.startswith(model_io.TRUSTED_PREFIXES) for t in trusted)
    payload = sio.dumps(model)
    loaded = sio.loads(payload, trusted=trusted)
    assert loaded.predict(X).tolist() == model.predict(X).tolist()
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
        sio.loads(payload)


def test_trusted_types_leave_out_foreign_types():
    import skops.io as sio

    obj = FunctionTransformer(func=json.dumps)
    assert "json.dumps" in sio.get_untrusted_types(data=sio.dumps(obj))
    assert "json.dumps" not in model_io.trusted_types(obj)
