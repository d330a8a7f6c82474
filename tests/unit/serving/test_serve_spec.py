"""mlpipe/serving/spec.py: what a server process serves, from config and back from JSON."""

from mlpipe.config import compose, to_container
from mlpipe.serving.spec import ServeSpec


def test_spec_from_the_default_config():
    scfg = to_container(compose([]))["serve"]
    spec = ServeSpec.from_config(scfg, "models:/m@champion", "/tmp/r.db", "cloudpickle", [])
    assert spec.variants == [{"name": "default", "model_uri": "models:/m@champion", "weight": 1.0}]
    assert ServeSpec.from_json(spec.to_json()) == spec


def test_a_canary_needs_one_registered_model_and_weighted_routing():
    import pytest

    from mlpipe.errors import ConfigError

    def spec(*overrides, uri="models:/m@champion"):
        scfg = to_container(compose(["serve.canary.alias=challenger", *overrides]))["serve"]
        return ServeSpec.from_config(scfg, uri, "/tmp/r.db", "cloudpickle", [])

    assert spec("serve.canary.weight=0.2").canary == {"alias": "challenger", "weight": 0.2}
    with pytest.raises(ConfigError, match=r"^serve.canary.alias='challenger' needs serve.routing.policy=weighted"):
        spec("serve.routing.policy=thompson")
    with pytest.raises(ConfigError, match=r"^serve.canary.alias='challenger' needs one served registered model"):
        spec(uri="/some/path")
    with pytest.raises(ConfigError, match=r"serve.canary.weight"):
        compose(["serve.canary.weight=1.5"])
