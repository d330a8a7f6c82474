"""mlpipe/serving/spec.py: what a server process serves, from config and back from JSON."""

from mlpipe.config import compose, to_container
from mlpipe.serving.spec import ServeSpec


def test_spec_from_the_default_config():
    scfg = to_container(compose([]))["serve"]
    spec = ServeSpec.from_config(scfg, "models:/m@champion", "/tmp/r.db", "cloudpickle", [])
    assert spec.variants == [{"name": "default", "model_uri": "models:/m@champion", "weight": 1.0}]
    assert ServeSpec.from_json(spec.to_json()) == spec
