"""Real models for the serving unit tests: logistic regression on iris, with a signature; the
pipeline's own (preprocessing + estimator) with its ONNX conversion, for both runtimes."""

from pathlib import Path

import mlflow
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlpipe.data import features
from mlpipe.training import estimators, onnx_export

PREPROCESS = {"numeric_impute": "median", "categorical_impute": "most_frequent", "scale_numeric": True,
              "min_category_frequency": 0.01}


def save_served_model(path: Path, estimator, X, y) -> None:
    """Pipeline(preprocess, estimator) fitted on X, y and saved as train logs it: the
    scikit-learn model with its signature, plus model.onnx and onnx.json beside its MLmodel."""
    frame = X.assign(target=y)
    spec = features.feature_spec(frame, "target", "classification")
    preprocessor = features.fit_preprocessor(spec, PREPROCESS, frame)
    model, _ = estimators.fit_model(preprocessor, estimator, X[spec.columns], y)
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                              pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
    for name, content in onnx_export.logged_files(model, spec.numeric, spec.categorical, "classification",
                                                  18, 3).items():
        (Path(path) / name).write_bytes(content)


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    path = tmp_path_factory.mktemp("m") / "iris"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                            pip_requirements=["scikit-learn"])
    return mlflow.pyfunc.load_model(str(path)), X
