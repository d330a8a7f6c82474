"""mlpipe/serving/abreport.promote against a real SQLite registry: the winner takes the alias
only when it is a version qa validated, its files unchanged."""

import json

import pytest

from mlpipe.errors import ConfigError, UntrustedModelError
from mlpipe.registry import provenance
from mlpipe.serving import abreport

RESULT = {"winner": "b", "experiment": "ab-1", "control": "a", "method": "msprt",
          "tests": [{"challenger": "b", "test": "msprt", "p_value": 0.01, "alpha": 0.05, "accuracy_diff": 0.1}],
          "arms": [{"variant": "a", "labelled": 300, "requests": 310}, {"variant": "b", "labelled": 290, "requests": 300}]}


def _version(registry, validated: bool) -> str:
    info = registry.log_model([1, 1])
    tags = {"lineage.qa_run_id": registry.record_qa_run(info.model_uri)} if validated else registry.version.tags
    return str(registry.client.create_model_version("m", info.model_uri, model_id=info.model_id, tags=tags).version)


def test_a_validated_winner_takes_the_alias(registry):
    version = _version(registry, validated=True)
    moved = abreport.promote(registry.client, RESULT, {"b": ("models:/m/2", version)}, "m", "champion", 30,
                             provenance.Trust(registry.keyring))
    assert moved == {"model": "m", "alias": "champion", "version": version, "previous_version": "1"}
    promoted = registry.client.get_model_version_by_alias("m", "champion")
    assert str(promoted.version) == version and promoted.tags["ab.promoted_by_experiment"] == "ab-1"
    evidence = json.loads(promoted.tags["ab.evidence"])  # what the promotion rests on, on the version
    assert (evidence["winner"], evidence["p_value"], evidence["arms"]["b"]["labelled"]) == ("b", 0.01, 290)


def test_a_winner_no_qa_run_vouches_for_is_not_promoted(registry):
    version = _version(registry, validated=False)  # the champion's tags copied onto another model
    with pytest.raises(UntrustedModelError, match="m@champion was not moved; promote a version qa validated"):
        abreport.promote(registry.client, RESULT, {"b": ("models:/m/2", version)}, "m", "champion", 30,
                         provenance.Trust(registry.keyring))
    assert str(registry.client.get_model_version_by_alias("m", "champion").version) == "1"


def test_a_winner_that_is_not_a_registered_version_is_a_config_error(registry):
    with pytest.raises(ConfigError, match="not a registered model version"):
        abreport.promote(registry.client, RESULT, {"b": ("/some/path", "unregistered")}, "m", "champion", 30,
                         provenance.Trust(registry.keyring))


def test_the_report_says_what_it_changed_in_the_registry_or_that_it_changed_nothing():
    from mlpipe.serving import abreport

    result = {"recommendation": "keep a: no significant difference"}
    assert abreport.promotion_line(False, None, result) == (
        "read-only report: no alias moved (serve.ab.promote=true moves the champion to a winner)")
    assert abreport.promotion_line(True, None, result) == "serve.ab.promote=true: no alias moved (keep a)"
    moved = {"model": "m", "alias": "champion", "version": "3", "previous_version": "2"}
    assert abreport.promotion_line(True, moved, result) == "promoted: m@champion is now version 3 (it was version 2)"
    again = moved | {"previous_version": "3"}  # a re-run finds the alias where it put it
    assert abreport.promotion_line(True, again, result) == "serve.ab.promote=true: m@champion already holds version 3"
