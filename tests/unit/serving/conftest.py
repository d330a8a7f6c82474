"""A real pyfunc model for the serving unit tests: logistic regression on iris, with a signature."""

import mlflow
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    path = tmp_path_factory.mktemp("m") / "iris"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                            pip_requirements=["scikit-learn"])
    return mlflow.pyfunc.load_model(str(path)), X
