"""mlpipe/schema/: every config key's type, range and choices, checked when composed; no defaults of its own."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import MISSING

from mlpipe import schema
from mlpipe.config import compose, to_container
from mlpipe.errors import ConfigError


@pytest.mark.parametrize(("override", "message"), [
    ("qa.drift.alpha=2", "qa.drift.alpha=2.0: expected a value > 0 and < 1"),
    ("serve.port=70000", "serve.port=70000: expected a value >= 0 and <= 65535"),
    ("serialization=pickle", "serialization='pickle'; expected one of cloudpickle, skops"),
    ("preprocess.fit_worker_min_mb=-1", "preprocess.fit_worker_min_mb=-1.0: expected a value >= 0"),
    ("monitor.action=stop", "monitor.action='stop'; expected one of warn, fail"),
    ("storage.retry.attempts=0", "storage.retry.attempts=0: expected a value >= 1"),
    ("preprocess.test_size=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("monitor.max_rss_mb=-1", "monitor.max_rss_mb=-1.0: expected a value > 0"),
    ("monitor.max_step_seconds=ten", "Value 'ten' of type 'str' could not be converted to Float"),
    ("serve.routing.policy=random", "serve.routing.policy='random'; expected one of weighted, thompson"),
    ("serve.limits.max_body_mb=0", "serve.limits.max_body_mb=0.0: expected a value > 0"),
    ("serve.batching.max_rows=0", "serve.batching.max_rows=0: expected a value >= 1"),
    ("main.log=loud", "main.log='loud'; expected one of quiet, full"),
    ("runtime=tf", "serve.runtime='tf' (the top-level runtime, unless serve.runtime is set on its own); "
                   "expected one of onnx, sklearn"),
    ("serve.runtime=tf", "serve.runtime='tf' (the top-level runtime"),
])
def test_compose_rejects_a_wrong_type_or_range_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_compose_rejects_a_validation_split_that_leaves_no_training_rows():
    with pytest.raises(ConfigError, match=r"preprocess.validation_size \+ preprocess.test_size = 1.1; expected < 1"):
        compose(["preprocess.test_size=0.5", "preprocess.validation_size=0.6"])


def _schema_classes():
    found, todo = [], [schema.Config]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo += [c for f in dataclasses.fields(kind) if (c := schema._dataclass_of(f.type))]
    return found


def test_the_schema_keeps_no_second_copy_of_a_value():
    """conf/ holds every value: a field is missing (???) until YAML sets it; None only for keys
    that exist in one option of a group alone (data.synthetic, storage=s3's keys)."""
    for kind in _schema_classes():
        for f in dataclasses.fields(kind):
            assert f.default in (MISSING, None), f"{kind.__name__}.{f.name} = {f.default!r}"


def test_the_schema_covers_every_key_of_the_default_config():
    assert schema.unknown_keys(to_container(compose([]))) == []
    assert schema.unknown_keys(to_container(compose(["data=synthetic", "storage=s3"]))) == []


def test_unknown_keys_are_found_below_typed_groups_but_not_below_free_ones():
    config = to_container(compose([]))
    config["qa"]["baseline"]["alfa"] = 0.1
    config["model"]["anything"] = 1  # model: the estimator's own arguments, checked against its signature
    config["serve"]["variants"] = [{"name": "a"}]
    assert schema.unknown_keys(config) == ["qa.baseline.alfa"]
