"""mlpipe/quality/model_checks.py: thresholds, the champion comparison, the serving payload (pure)."""

from __future__ import annotations

from types import SimpleNamespace

from mlpipe.quality import model_checks

# As mlflow.models.evaluate names them.
METRICS = {"accuracy_score": 0.8, "root_mean_squared_error": 2.0, "r2_score": 0.5}


def test_thresholds_hold_each_metric_its_own_way():
    checks = model_checks.threshold_checks(METRICS, {"accuracy": 0.9, "f1_score": None, "rmse": 2.5, "roc_auc": 0.5})
    assert [(c.name, c.passed, c.value, c.expected) for c in checks] == [
        ("threshold.accuracy", False, 0.8, ">= 0.9"), ("threshold.rmse", True, 2.0, "<= 2.5"),
        ("threshold.roc_auc", False, None, ">= 0.5")]
    assert checks[0].describe() == "threshold.accuracy=0.8 (expected >= 0.9)"
    assert checks[2].note == "evaluate reported no roc_auc"
    assert [c.passed for c in model_checks.threshold_checks(METRICS, {"accuracy": 0.8, "rmse": 2.0})] == [True, True]


def champion(metrics=None, reason=None):
    return SimpleNamespace(info={"version": "3", "model_uri": "models:/m@champion"}, metrics=metrics, reason=reason)


def test_the_candidate_may_trail_the_champion_by_the_tolerance():
    within = champion({"accuracy_score": 0.84, "r2_score": 0.52})
    checks, info = model_checks.champion_checks(METRICS, within, ["accuracy"], 0.05, "fail")
    assert [(c.name, c.passed, c.expected) for c in checks] == [("champion.accuracy", True, ">= 0.79")]
    assert checks[0].note == "champion v3 scores 0.8400 on the same rows, tolerance 0.05"
    assert info == within.info | {"metrics": {"accuracy": 0.84}}
    (check,), _ = model_checks.champion_checks(METRICS, champion({"accuracy_score": 0.9}), ["accuracy"], 0.05, "fail")
    assert not check.passed and check.expected == ">= 0.85"


def test_a_metric_better_when_smaller_is_bounded_from_above():
    (check,), _ = model_checks.champion_checks(METRICS, champion({"root_mean_squared_error": 1.9}), ["rmse"], 0.05,
                                               "fail")
    assert (check.passed, check.expected) == (False, "<= 1.95")


def test_a_champion_that_reported_no_value_is_not_compared_on_it():
    checks, info = model_checks.champion_checks(METRICS, champion({"r2_score": 0.4}), ["accuracy", "r2"], 0.05, "fail")
    assert [c.name for c in checks] == ["champion.r2"] and info["metrics"] == {"accuracy": None, "r2": 0.4}


def test_a_champion_this_data_cannot_score_is_a_decision():
    (check,), info = model_checks.champion_checks(METRICS, champion(reason="it broke"), ["accuracy"], 0.05, "fail")
    assert (check.name, check.passed) == ("champion.compatible", False) and info["replaced"] is False
    (check,), info = model_checks.champion_checks(METRICS, champion(reason="it broke"), ["accuracy"], 0.05, "replace")
    assert check.passed and info["replaced"] is True


def test_the_serving_payload_check_says_what_went_wrong():
    assert model_checks.serving_input_check(2, 2, None).passed
    no_example = model_checks.serving_input_check(None, None, None)
    assert not no_example.passed and no_example.expected == "an input example logged with the model"
    failed = model_checks.serving_input_check(None, 2, "x" * 500)
    assert not failed.passed and failed.note == "x" * 300


class Timed:
    """A model whose single-row predict either waits (as a call on a busy machine waits for a
    CPU) or computes, for `seconds`."""

    def __init__(self, seconds: float, busy: bool):
        self.seconds, self.busy = seconds, busy

    def predict(self, frame):
        import time

        if not self.busy:
            time.sleep(self.seconds)
            return [0] * len(frame)
        until = time.process_time() + self.seconds
        while time.process_time() < until:
            pass
        return [0] * len(frame)


def test_latency_measures_cpu_per_call_beside_the_wall_clock():
    """Waiting (what load from other processes adds) shows in the wall-clock figure only; work the
    model does shows in both: the gate's CPU p95 does not fail a fast model on a busy machine."""
    import pandas as pd

    from mlpipe.quality import gate

    rows = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    wall, cpu = model_checks.latency(Timed(0.05, busy=False), rows, 5)
    assert len(wall) == len(cpu) == 5
    assert gate.p95_ms(wall) >= 50 and gate.p95_ms(cpu) < 20
    wall, cpu = model_checks.latency(Timed(0.03, busy=True), rows, 5)
    assert gate.p95_ms(cpu) >= 30 and gate.p95_ms(wall) >= 30
