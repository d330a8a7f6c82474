"""Bad input ends the step with a non-zero exit, a FAILED run that says why, one clear line on
stderr, and nothing registered."""

from __future__ import annotations

import pytest


from support import Store, error_lines


def _assert_failed_cleanly(store: Store, result, step: str, error_type: str, words: list[str], entry: str = "main"):
    """Under main the driver says it, naming the failed step and its run; a step alone says it itself."""
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    run = store.newest(f"tags.`mlflow.project.entryPoint` = '{step}'")
    if entry == step:
        assert lines[0].startswith(f"error: {step}: {error_type}: ")
    else:
        assert lines[0].startswith(f"error: main: StepFailedError: step {step} failed (run {run.info.run_id}, {error_type}): ")
    for word in words:
        assert word in lines[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["error.type"] == error_type
    for word in words:
        assert word in run.data.tags["error.message"]
    assert store.client.search_registered_models() == []
    return run


def test_missing_source_file(store: Store, tmp_path):
    missing = tmp_path / "nope.csv"
    result = store.mlflow_run("-P", f"overrides=data.source={missing} data.target=label")
    _assert_failed_cleanly(store, result, "ingest", "DataError", [str(missing), "no such file"])
    # The driver's own run fails too and names the failed step.
    parent = store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error.type"] == "StepFailedError"
    assert "step ingest failed" in parent.data.tags["error.message"]
    assert store.step_runs("preprocess") == []


def test_missing_target_column(store: Store, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,c\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(50)))
    result = store.mlflow_run("-P", f"overrides=data.source={path} data.target=label")
    _assert_failed_cleanly(store, result, "ingest", "DataError", ["'label' not found", "a, b, c"])


@pytest.mark.parametrize("override", ["model.n_estimator=10", "+model.n_estimator=10"])
def test_unknown_config_key_is_refused_with_the_closest_key_before_any_step(store: Store, override):
    """Hydra's own hint (`+model.n_estimator=10`) would lead into a run that fails two steps later."""
    before = len(store.runs())
    result = store.mlflow_run("-P", f"overrides={override}")
    _assert_failed_cleanly(store, result, "main", "ConfigError",
                           ["unknown config key model.n_estimator", "did you mean model.n_estimators?"], entry="main")
    assert len(store.runs()) == before + 1  # the driver's own FAILED run, no step started


def test_a_value_out_of_range_is_refused_naming_the_key_before_any_step(store: Store):
    before = len(store.runs())
    result = store.mlflow_run("-P", "overrides=qa.drift.alpha=1.5")
    _assert_failed_cleanly(store, result, "main", "ConfigError", ["qa.drift.alpha=1.5: expected a value > 0 and < 1"],
                           entry="main")
    assert len(store.runs()) == before + 1


@pytest.mark.slow
def test_unknown_model_name(store: Store):
    result = store.mlflow_run("-P", "overrides=model=xgboost")
    _assert_failed_cleanly(store, result, "main", "ConfigError", ["model=xgboost: no such option in conf/model/", "random_forest"], entry="main")


@pytest.mark.slow
def test_unknown_key_in_a_single_step(store: Store):
    result = store.mlflow_run("-P", "overrides=data.bogus=1", entry="ingest")
    _assert_failed_cleanly(store, result, "ingest", "ConfigError", ["data.bogus"], entry="ingest")


@pytest.mark.slow
def test_classifier_on_a_regression_target(store: Store):
    result = store.mlflow_run("-P", "overrides=data=diabetes model=random_forest")
    _assert_failed_cleanly(store, result, "train", "ConfigError", ["regression", "random_forest_regressor"])
