"""mlpipe/serving/variants.py without a server: schema checks, loading past the trust boundary,
the alias pick-up. Real pyfunc models saved to tmp_path."""

from types import SimpleNamespace

import mlflow
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlpipe.errors import ServingError, UntrustedModelError
from mlpipe.serving import variants


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
        variants.check_schemas([("a", iris_model[0]), ("b", other_model)])
    variants.check_schemas([("a", iris_model[0]), ("b", iris_model[0])])


def test_a_model_that_cannot_load_names_the_variant(tmp_path):
    with pytest.raises(ServingError, match=r"variant 'b': cannot load model .*nowhere"):
        variants.load_model(str(tmp_path / "nowhere"), "b", _trust(allow_unvalidated=True))


def _trust(allow_unvalidated=False, runtime="sklearn", keyring=None):
    """The registry fixture's models have no ONNX conversion: the scikit-learn runtime. `keyring`:
    the keys whose verdicts count (the registry fixture's)."""
    return SimpleNamespace(serialization="cloudpickle", trusted_types=[], allow_unvalidated=allow_unvalidated,
                           runtime=runtime, onnx_threads=[1, 1], keyring=lambda: keyring,
                           gate_experiment=None)


def test_only_a_model_qa_validated_is_loaded_unless_allow_unvalidated(registry, tmp_path):
    model, version = variants.load_model("models:/m@champion", "a", _trust(keyring=registry.keyring))
    assert version == "1" and model.predict(registry.X).shape == (2,)
    from sklearn.dummy import DummyClassifier

    mlflow.sklearn.save_model(DummyClassifier().fit(registry.X, [0, 1]), str(tmp_path / "path"),
                              pip_requirements=["scikit-learn"])
    with pytest.raises(UntrustedModelError, match=r"variant 'b': cannot load model .*/path: .* is not a registered version or "
                                           r"a logged model, .*; refused, nothing loaded; serve a version qa validated, "
                                           r"or set serve.allow_unvalidated=true"):
        variants.load_model(str(tmp_path / "path"), "b", _trust(keyring=registry.keyring))
    assert variants.load_model(str(tmp_path / "path"), "b", _trust(allow_unvalidated=True))[1] == "unregistered"


def test_a_moved_alias_is_swapped_in_only_for_a_version_qa_validated(registry, capsys):
    """The alias refresher: a version no qa run vouches for is refused once and the variant keeps
    serving its version; a validated one is swapped in."""
    live = variants.LiveVariant("a", "models:/m@champion", 1.0, *variants.load_model("models:/m@champion", "a", _trust(keyring=registry.keyring)))
    info = registry.log_model([1, 1])
    registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=registry.version.tags)
    registry.client.set_registered_model_alias("m", "champion", "2")
    refused = set()
    line, model, _ = variants.refresh_variant(live, _trust(keyring=registry.keyring), refused)
    assert model is None and refused == {("models:/m@champion", "2")}
    assert line.startswith("models:/m@champion moved to version 2, refused: variant 'a': cannot load model models:/m/2: ")
    assert line.endswith("is not the model qa run " + registry.qa_run_id + " validated (" + registry.model_uri + "); "
                         "refused, nothing loaded; serve a version qa validated, or set serve.allow_unvalidated=true; "
                         "still serving version 1")
    assert variants.refresh_variant(live, _trust(keyring=registry.keyring), refused) == (None, None, "2")  # said once

    qa_run_id = registry.record_qa_run(info.model_uri)
    registry.client.create_model_version("m", info.model_uri, model_id=info.model_id,
                                         tags={"lineage.qa_run_id": qa_run_id})
    registry.client.set_registered_model_alias("m", "champion", "3")
    line, model, version = variants.refresh_variant(live, _trust(keyring=registry.keyring), refused)
    assert line == "variant 'a': models:/m@champion moved, version 1 -> 3" and version == "3"
    assert list(model.predict(registry.X)) == [1, 1]


def test_the_canary_arm_follows_its_alias_on_and_off(registry):
    """serve.canary: off (weight 0) while `challenger` does not exist; on at its weight once it
    points at a validated version; refused for a version no qa run vouches for; off again when
    the alias is removed."""
    spec = _trust(keyring=registry.keyring)
    spec.canary, spec.variants = {"alias": "challenger", "weight": 0.2}, [{"model_uri": "models:/m@champion"}]
    arm = variants.load_canary(spec)
    assert (arm.name, arm.model_uri, arm.model, arm.weight) == ("canary", "models:/m@challenger", None, 0.0)
    schema = variants.schema_of(variants.load_model("models:/m@champion", "a", spec)[0])
    assert variants.refresh_canary(arm, spec, set(), schema) is None  # still no alias: nothing to say

    info = registry.log_model([1, 1])  # no qa run vouches for it
    registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=registry.version.tags)
    registry.client.set_registered_model_alias("m", "challenger", "2")
    refused = set()
    line = variants.refresh_canary(arm, spec, refused, schema)
    assert line.startswith("canary: models:/m@challenger (version 2) refused: ") and arm.weight == 0.0
    assert line.endswith("the canary arm stays off") and variants.refresh_canary(arm, spec, refused, schema) is None

    qa_run_id = registry.record_qa_run(info.model_uri)
    registry.client.create_model_version("m", info.model_uri, model_id=info.model_id,
                                         tags={"lineage.qa_run_id": qa_run_id})
    registry.client.set_registered_model_alias("m", "challenger", "3")
    assert variants.refresh_canary(arm, spec, refused, schema) == ("canary: models:/m@challenger is version 3: it "
                                                                   "answers 20% of requests")
    assert (arm.version, arm.weight) == ("3", 0.2) and list(arm.model.predict(registry.X)) == [1, 1]
    registry.client.delete_registered_model_alias("m", "challenger")
    assert variants.refresh_canary(arm, spec, refused, schema) == ("canary: models:/m@challenger is gone: the canary "
                                                                   "arm is off (weight 0)")
    assert (arm.model, arm.weight) == (None, 0.0)
