"""mlpipe/loop/detect.py: the rules' false-alarm rates and detection delays, by simulation."""

import math

import numpy as np
import pytest

from mlpipe.errors import ConfigError
from mlpipe.loop import detect


def _stream(rng, rate, rows):
    return (rng.random(rows) < rate).astype(int).tolist()


def test_a_stable_model_raises_no_alarm_on_long_streams():
    """200 streams of 20,000 labelled rows at a 10% error rate, each tuned on its own 1,000-row
    baseline drawn from the same rate (the defaults): no alarm."""
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(200):
        baseline = _stream(rng, 0.10, 1000)
        cusum = detect.Cusum.tuned(sum(baseline), 1000, 0.08, 1e6)
        alarms += cusum.update(_stream(rng, 0.10, 20_000)) is not None
    assert alarms == 0


def test_a_ten_point_drop_is_caught_within_a_thousand_labelled_rows():
    rng = np.random.default_rng(1)
    delays = []
    for _ in range(200):
        baseline = _stream(rng, 0.10, 1000)
        cusum = detect.Cusum.tuned(sum(baseline), 1000, 0.08, 1e6)
        delays.append(cusum.update(_stream(rng, 0.20, 5_000)))
    assert all(d is not None for d in delays)
    assert np.quantile(delays, 0.95) <= 1000 and np.median(delays) < 500  # measured: 721 and 368


def test_the_statistic_carried_over_runs_alarms_where_one_pass_does():
    rng = np.random.default_rng(2)
    rows = _stream(rng, 0.10, 400) + _stream(rng, 0.25, 2000)
    whole = detect.Cusum(0.10, 0.15, math.log(1e6))
    at = whole.update(rows)
    pieces, seen, found = detect.Cusum(0.10, 0.15, math.log(1e6)), 0, None
    for chunk in np.array_split(np.array(rows), 17):
        hit = pieces.update(chunk.tolist())
        if hit is not None:
            found = seen + hit
            break
        seen += len(chunk)
    assert at is not None and found == at


def test_the_levels_of_repeated_tests_sum_to_alpha():
    assert sum(detect.spent_alpha(0.01, k) for k in range(1, 100_000)) == pytest.approx(0.01, rel=1e-4)
    assert detect.spent_alpha(0.01, 1) == pytest.approx(0.01 * 6 / math.pi ** 2)


def test_intervals():
    low, high = detect.wilson(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3) and high == pytest.approx(0.8666, abs=1e-3)
    assert detect.upper_bound(10, 100) == pytest.approx(0.1452, abs=2e-3)
    assert detect.upper_bound(0, 0) == 1.0 and detect.wilson(0, 0) == (0.0, 1.0)


def test_a_false_alarm_budget_of_one_row_is_a_config_error():
    with pytest.raises(ConfigError, match="loop.performance.false_alarm_rows=1: must be over 1"):
        detect.threshold(1)


def test_prediction_psi():
    assert detect.psi_of_counts({"a": 50, "b": 50}, {"a": 50, "b": 50}) == 0
    assert detect.psi_of_counts({"a": 50, "b": 50}, {"a": 90, "b": 10}) > 0.5
