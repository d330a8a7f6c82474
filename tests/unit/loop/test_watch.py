"""mlpipe/loop/watch.py and state.py: one monitor run's findings from what arrived since the last."""

import numpy as np
import pandas as pd
import pytest

from mlpipe.config import compose
from mlpipe.loop import watch
from mlpipe.loop.state import State, carried
from mlpipe.quality import drift


@pytest.fixture
def lcfg():
    return compose(["loop.performance.baseline_rows=100", "loop.inputs.min_rows=50"]).loop


def _labels(rng, rate, rows, start=0):
    """(feedback id, prediction, label): the prediction wrong at `rate`."""
    truth = rng.integers(0, 3, rows)
    wrong = rng.random(rows) < rate
    return [(start + i + 1, int((t + 1) % 3 if w else t), int(t)) for i, (t, w) in enumerate(zip(truth, wrong))]


def test_the_baseline_fills_over_runs_then_the_rule_decides(lcfg):
    rng = np.random.default_rng(0)
    found = watch.Findings(State("m", "1"))
    watch.performance(found, _labels(rng, 0.1, 60), "classification", lcfg.performance)
    assert "baseline 60/100 labelled rows" in found.notes[0] and not found.alarms
    state = found.state
    assert (state.baseline_rows, state.feedback_cursor) == (60, 60)
    found = watch.Findings(state)  # the next run: 40 more fill it, the rest go to the CUSUM
    watch.performance(found, _labels(rng, 0.1, 400, start=60), "classification", lcfg.performance)
    assert state.baseline_rows == 100 and state.cusum_rows == 360 and not found.alarms
    assert found.metrics["monitor.cusum_h"] == pytest.approx(np.log(1e6))
    found = watch.Findings(state)
    watch.performance(found, _labels(rng, 0.6, 400, start=460), "classification", lcfg.performance)
    assert found.alarms["performance"].startswith("accuracy fell: CUSUM over h=13.8 after ")
    assert state.alarms == 1 and found.trigger(["performance"]).startswith("performance: accuracy fell")
    assert found.trigger(["inputs"]) is None  # loop.trigger without performance: not raised


def test_a_regression_model_is_not_decided_on_performance(lcfg):
    found = watch.Findings(State("m", "1"))
    watch.performance(found, [(1, 2.5, 3.0)], "regression", lcfg.performance)
    assert found.notes == ["performance: not decided for a regression task (classification only); 1 labelled rows "
                           "read"] and found.state.feedback_cursor == 1


def _reference(rng, rows=2000):
    frame = pd.DataFrame({"x": rng.normal(0, 1, rows), "y": rng.normal(5, 2, rows)})
    return drift.reference_profile(frame, ["x", "y"], [], 10), frame


def test_input_drift_waits_for_enough_rows_then_tests_at_the_spent_level(lcfg):
    rng = np.random.default_rng(1)
    profile, reference = _reference(rng)
    found = watch.Findings(State("m", "1"))
    few = pd.DataFrame({"x": rng.normal(0, 1, 20), "y": rng.normal(5, 2, 20)})
    watch.inputs(found, few, 20, profile, reference, lcfg.inputs)
    assert found.state.request_cursor == 0 and found.state.drift_tests == 0  # read again next time
    same = pd.DataFrame({"x": rng.normal(0, 1, 500), "y": rng.normal(5, 2, 500)})
    watch.inputs(found, same, 520, profile, reference, lcfg.inputs)
    assert not found.alarms and found.state.request_cursor == 520 and found.state.drift_tests == 1
    assert found.metrics["monitor.drift_level"] == pytest.approx(0.01 * 6 / np.pi ** 2)
    shifted = pd.DataFrame({"x": rng.normal(1.5, 1, 500), "y": rng.normal(5, 2, 500)})
    watch.inputs(found, shifted, 1020, profile, reference, lcfg.inputs)
    assert found.alarms["inputs"].startswith("1 of 2 columns drifted on 500 served rows (test 2 at alpha ")
    assert "x (psi " in found.alarms["inputs"]


def test_a_column_the_server_did_not_keep_is_said_not_tested(lcfg):
    rng = np.random.default_rng(2)
    profile, reference = _reference(rng)
    found = watch.Findings(State("m", "1"))
    watch.inputs(found, pd.DataFrame({"x": rng.normal(0, 1, 100)}), 100, profile, reference, lcfg.inputs)
    assert "inputs: not kept by the server, not tested: y (serve.inputs)" in found.notes
    assert [d.column for d in found.drift] == ["x"]


def test_the_state_is_carried_for_the_same_version_only():
    before = State("m", "3", feedback_cursor=40, runs=2)
    assert carried(State.from_tag(before.to_tag()), "m", "3") == (before, "carried from the previous run (run 2 on v3)")
    fresh, why = carried(before, "m", "4")
    assert fresh == State("m", "4") and why == "the watched version changed (m v3 -> v4): a new baseline"
    assert carried(None, "m", "1")[1] == "first run on this model: a new baseline"
    assert State.from_tag("{not json") is None and State.from_tag('{"other": 1}') is None


def test_the_performance_alarm_says_where_the_change_began(lcfg):
    """100 baseline rows, 150 right, then every answer wrong: the CUSUM was last 0 at the last
    right row, the start of what the retrain trains on."""
    rng = np.random.default_rng(3)
    found = watch.Findings(State("m", "1"))
    labels = _labels(rng, 0.0, 250) + _labels(rng, 1.0, 200, start=250)
    watch.performance(found, labels, "classification", lcfg.performance)
    assert found.changed_after_feedback == 250 and "performance" in found.alarms


def test_a_later_alarm_on_the_same_version_retrains_from_where_the_first_change_began(lcfg):
    """The first alarm's retrain failed its gate (or its challenger lost): the CUSUM restarted
    and alarms again, and the retry's rows still start where the change began, not after the
    first alarm; so do a second drifted window's."""
    rng = np.random.default_rng(4)
    found = watch.Findings(State("m", "1"))
    watch.performance(found, _labels(rng, 0.0, 250) + _labels(rng, 1.0, 50, start=250), "classification",
                      lcfg.performance)
    assert found.changed_after_feedback == 250
    later = watch.Findings(State.from_tag(found.state.to_tag()))  # the next run, its state from the tag
    watch.performance(later, _labels(rng, 1.0, 100, start=300), "classification", lcfg.performance)
    assert "performance" in later.alarms and later.state.cusum_zero_id > 250
    assert later.changed_after_feedback == 250 and later.state.alarms == 2

    profile, reference = _reference(rng)
    state = State("m", "1", request_cursor=100)
    for last_id in (600, 1100):
        found = watch.Findings(state)
        watch.inputs(found, pd.DataFrame({"x": rng.normal(2, 1, 500), "y": rng.normal(5, 2, 500)}), last_id, profile,
                     reference, lcfg.inputs)
        assert "inputs" in found.alarms and found.drifted_after_request == 100
