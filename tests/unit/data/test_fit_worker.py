"""mlpipe/data/fit_worker.py: the preprocessor fitted in a worker process equals the one fitted in
the step; the worker's failures come back named; nothing is left behind."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest

from mlpipe.data import fit_worker
from mlpipe.data.features import feature_spec, fit_preprocessor, normalise_types
from mlpipe.run.frames import write_parquet
from mlpipe.errors import ResourceLimitError, WorkerError


@pytest.fixture
def training_rows(mixed, tmp_path):
    """The `mixed` frame as preprocess holds it, and as the Parquet split it logs."""
    spec = feature_spec(mixed, "target", "classification")
    frame = normalise_types(mixed, spec)
    path = tmp_path / "train.parquet"
    write_parquet(frame[spec.columns + [spec.target]], path)
    return spec, frame, path


def test_the_worker_fits_what_the_step_would(training_rows, preprocess_cfg, tmp_path, monkeypatch):
    spec, frame, path = training_rows
    work = tmp_path / "work"
    work.mkdir()
    in_step = fit_preprocessor(spec, preprocess_cfg, frame)
    # The fit must happen in another process: here, fitting is now broken.
    from mlpipe.data import features

    def no_fit_in_this_process(*args, **kwargs):
        raise AssertionError("the preprocessor was fitted in the calling process, not in a worker")

    monkeypatch.setattr(features, "fit_preprocessor", no_fit_in_this_process)
    monkeypatch.setattr(features, "build_preprocessor", no_fit_in_this_process)
    in_worker = fit_worker.fit_in_worker(spec, preprocess_cfg, path, work)
    assert in_worker.get_feature_names_out().tolist() == in_step.get_feature_names_out().tolist()
    assert "cat_infrequent_sklearn" in in_worker.get_feature_names_out()
    np.testing.assert_array_equal(in_worker.transform(frame[spec.columns]), in_step.transform(frame[spec.columns]))
    unseen = pd.DataFrame({"num": [np.nan], "count": [4.0], "cat": ["never-seen"], "flag": ["True"]})
    np.testing.assert_array_equal(in_worker.transform(unseen), in_step.transform(unseen))
    assert list(work.iterdir()) == []  # request and answer are gone


def test_a_worker_exception_comes_back_as_a_worker_error_naming_it(training_rows, preprocess_cfg, tmp_path):
    spec, _, path = training_rows
    cfg = {**preprocess_cfg, "numeric_impute": "bogus"}
    with pytest.raises(WorkerError) as caught:
        fit_worker.fit_in_worker(spec, cfg, path, tmp_path)
    message = str(caught.value)
    assert message.startswith("fitting the preprocessor failed: InvalidParameterError: ")
    assert "bogus" in message and "\n" not in message
    assert not list(tmp_path.glob("fit_worker*"))


def test_a_worker_over_its_time_is_stopped_naming_the_key(training_rows, preprocess_cfg, tmp_path):
    spec, _, path = training_rows
    with pytest.raises(ResourceLimitError) as caught:
        fit_worker.fit_in_worker(spec, {**preprocess_cfg, "fit_worker_timeout_s": 0.01}, path, tmp_path)
    assert str(caught.value) == ("the preprocessor's fit worker ran over preprocess.fit_worker_timeout_s=0.01 s and was "
                                 "stopped; raise it for bigger data")
    assert not list(tmp_path.glob("fit_worker*"))


def test_a_missing_training_split_is_named(training_rows, preprocess_cfg, tmp_path):
    spec, _, _ = training_rows
    with pytest.raises(WorkerError, match=r"FileNotFoundError: .*nowhere\.parquet"):
        fit_worker.fit_in_worker(spec, preprocess_cfg, tmp_path / "nowhere.parquet", tmp_path)


def test_pipeline_errors_keep_their_class():
    from mlpipe.errors import DataError

    error = fit_worker.as_error({"type": "DataError", "message": "no rows"})
    assert type(error) is DataError and str(error) == "no rows"
    assert type(fit_worker.as_error({"type": "Exception", "message": "x"})) is WorkerError


def test_how_a_worker_ended_is_said():
    assert fit_worker.ended(-signal.SIGKILL) == "was killed by SIGKILL"
    assert fit_worker.ended(3) == "exited with code 3"


@pytest.mark.parametrize(("rows_mb", "min_mb", "expected"),
                         [(109.0, 32, True), (32.0, 32, True), (31.9, 32, False), (0.0, 0, True), (5000.0, None, False)])
def test_the_worker_is_wanted_from_the_configured_size(rows_mb, min_mb, expected):
    assert fit_worker.wanted(rows_mb, min_mb) is expected


def test_a_negative_threshold_is_a_config_error():
    from mlpipe.errors import ConfigError

    with pytest.raises(ConfigError, match="fit_worker_min_mb=-1"):
        fit_worker.wanted(10.0, -1)
