"""mlpipe/serving/server.py without a server: schema checks, loading, the spec from config.
Real pyfunc models saved to tmp_path."""

from types import SimpleNamespace

import mlflow
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlpipe.config import compose, to_container
from mlpipe.errors import ServingError
from mlpipe.serving import server


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    X, y = load_iris(return_X_y=True, as_frame=True)
    X = X.iloc[:, :2]
    model = LogisticRegression(max_iter=500).fit(X, y)
    path = tmp_path_factory.mktemp("m") / "two"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                            pip_requirements=["scikit-learn"])
    return mlflow.pyfunc.load_model(str(path))


def test_variants_with_different_schemas_are_refused(iris_model, other_model):
    with pytest.raises(ServingError, match="variants 'a' and 'b' take different inputs"):
        server.check_schemas([("a", iris_model[0]), ("b", other_model)])
    server.check_schemas([("a", iris_model[0]), ("b", iris_model[0])])


def test_a_model_that_cannot_load_names_the_variant(tmp_path):
    with pytest.raises(ServingError, match=r"variant 'b': cannot load model .*nowhere"):
        server.load_model(str(tmp_path / "nowhere"), "b", SimpleNamespace(serialization="cloudpickle", trusted_types=[]))


def test_spec_from_the_default_config():
    scfg = to_container(compose([]))["serve"]
    spec = server.ServeSpec.from_config(scfg, "models:/m@champion", "/tmp/r.db", "cloudpickle", [])
    assert spec.variants == [{"name": "default", "model_uri": "models:/m@champion", "weight": 1.0}]
    assert server.ServeSpec.from_json(spec.to_json()) == spec
