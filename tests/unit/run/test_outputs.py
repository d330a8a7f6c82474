"""mlpipe/run/outputs.py: each step's typed hand-off, written as tags and read back from a run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mlpipe.errors import UpstreamError
from mlpipe.run import outputs


def _run(tags: dict[str, str], run_id: str = "abc123"):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


EXAMPLES = [
    outputs.IngestOutput(task="classification", data_source="sklearn:wine", data_digest="d1"),
    outputs.PreprocessOutput(task="regression", fitted_in="worker", train_digest="a", validation_digest="b",
                             test_digest="c"),
    outputs.TrainOutput(model_uri="models:/m-1", task="classification", model_class="RandomForestClassifier",
                        preprocess_run_id="p1"),
    outputs.QaOutput(passed=False, model_uri="models:/m-1", task="classification", primary_metric="accuracy",
                     failed_checks="baseline,drift.test", champion_replaced=False,
                     model_digest="sha256:ab12"),
    outputs.RegisterOutput(model_name="wine_model", version=3, promoted=True, reason="first", model_uri="models:/wine_model/3"),
]


@pytest.mark.parametrize("output", EXAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip_through_tags(output):
    tags = output.tags()
    assert all(isinstance(v, str) for v in tags.values())
    assert type(output).from_run(_run(tags | {"unrelated": "x"})) == output


def test_the_tags_are_the_ones_readers_and_the_ui_know():
    assert EXAMPLES[3].tags() == {"qa.passed": "false", "pipeline.model_uri": "models:/m-1", "data.task": "classification",
                                  "qa.primary_metric": "accuracy", "qa.failed_checks": "baseline,drift.test",
                                  "qa.champion_replaced": "false", "qa.model_digest": "sha256:ab12"}
    assert EXAMPLES[4].tags()["registry.version"] == "3"


def test_a_missing_tag_names_the_run_the_tag_and_the_fix():
    tags = EXAMPLES[2].tags()
    del tags["pipeline.preprocess_run_id"]
    with pytest.raises(UpstreamError) as info:
        outputs.TrainOutput.from_run(_run(tags, "run42"))
    message = str(info.value)
    assert "train run run42 has no tag pipeline.preprocess_run_id" in message
    assert "mlflow run . -e train" in message


@pytest.mark.parametrize(("kind", "tag", "value", "expected"), [
    (outputs.QaOutput, "qa.passed", "yes", "expected true or false"),
    (outputs.TrainOutput, "data.task", "clustering", "expected one of classification, regression"),
    (outputs.RegisterOutput, "registry.version", "v3", "malformed"),
])
def test_a_malformed_tag_is_an_upstream_error(kind, tag, value, expected):
    example = next(o for o in EXAMPLES if isinstance(o, kind))
    with pytest.raises(UpstreamError, match=expected) as info:
        kind.from_run(_run(example.tags() | {tag: value}))
    assert f"{tag}={value!r}" in str(info.value)
