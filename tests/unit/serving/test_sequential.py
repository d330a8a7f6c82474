"""Always-valid A/B statistics (mSPRT): the false-promotion rate stays under alpha however often
the report is re-run while traffic arrives (where a fixed-horizon test read after every batch
does not), real differences are found and covered, and the p-value / interval only tighten."""

import math

import numpy as np
import pytest
from scipy import stats

from mlpipe.config import compose, to_container
from mlpipe.serving import sequential

ALPHA = 0.05
# The shipped settings (conf/serve/default.yaml, serve.ab): what the properties below are shown for.
AB = to_container(compose([]))["serve"]["ab"]
BURN_IN, RULE = AB["burn_in"], AB["default_tau"]
BATCH, BATCHES = 100, 20


def _traffic(rng, p_control, p_challenger):
    """One experiment's rows in arrival order: 50/50 random arms, 1/0 correct outcomes."""
    arms = rng.integers(0, 2, BATCH * BATCHES)
    outcomes = (rng.random(arms.size) < np.where(arms == 1, p_challenger, p_control)).astype(float)
    return arms, outcomes


def _reports(arms, outcomes, tau=None):
    """The report re-run after every batch on all rows so far."""
    for b in range(1, BATCHES + 1):
        a, o = arms[: b * BATCH], outcomes[: b * BATCH]
        t = sequential.default_tau("regression", o[a == 0], RULE) if tau is None else tau
        yield a, o, sequential.always_valid(a, o, tau=t, alpha=ALPHA, burn_in=BURN_IN)


def _naive_z_p(a, o):
    """Fixed-horizon two-proportion z test (pooled), two-sided."""
    x0, n0, x1, n1 = o[a == 0].sum(), (a == 0).sum(), o[a == 1].sum(), (a == 1).sum()
    pooled = (x0 + x1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    return 1.0 if se == 0 else float(2 * stats.norm.sf(abs(x1 / n1 - x0 / n0) / se))


def test_aa_peeking_after_every_batch_keeps_false_promotions_under_alpha_where_a_z_test_does_not():
    rng = np.random.default_rng(20240601)
    experiments = 400
    sequential_false = naive_false = 0
    for _ in range(experiments):
        arms, outcomes = _traffic(rng, 0.8, 0.8)
        seq_hit = naive_hit = False
        for a, o, result in _reports(arms, outcomes, tau=0.1):
            seq_hit |= result.p_value < ALPHA
            naive_hit |= _naive_z_p(a, o) < ALPHA
        sequential_false += seq_hit
        naive_false += naive_hit
    seq_rate, naive_rate = sequential_false / experiments, naive_false / experiments
    assert seq_rate <= ALPHA, f"mSPRT false-promotion rate {seq_rate:.3f} > {ALPHA}"
    # The same peeking with the fixed-horizon test promotes far more often than alpha.
    assert naive_rate > 2 * ALPHA, f"naive z false-promotion rate {naive_rate:.3f}"


def test_a_real_difference_is_detected_and_covered():
    rng = np.random.default_rng(7)
    experiments, true_diff = 200, 0.10
    detected = covered = 0
    for _ in range(experiments):
        arms, outcomes = _traffic(rng, 0.75, 0.85)
        hit = False
        for _, _, result in _reports(arms, outcomes, tau=0.1):
            hit |= result.p_value < ALPHA and result.diff > 0
        detected += hit
        covered += result.ci_low <= true_diff <= result.ci_high
    assert detected / experiments >= 0.90, f"power {detected / experiments:.3f}"
    assert covered / experiments >= 1 - ALPHA, f"coverage {covered / experiments:.3f}"


def test_regression_aa_with_exponential_errors_keeps_false_promotions_under_alpha():
    rng = np.random.default_rng(11)
    experiments = 600
    false = 0
    for _ in range(experiments):
        arms = rng.integers(0, 2, BATCH * BATCHES)
        errors = rng.exponential(1.0, arms.size)
        false += any(r.p_value < ALPHA for _, _, r in _reports(arms, errors))  # tau = default_tau
    assert false / experiments <= ALPHA, f"regression false-promotion rate {false / experiments:.3f}"


@pytest.mark.parametrize("p_challenger", [0.8, 0.9])
def test_p_value_never_rises_and_interval_never_widens_as_rows_arrive(p_challenger):
    rng = np.random.default_rng(3)
    arms, outcomes = _traffic(rng, 0.8, p_challenger)
    results = [sequential.always_valid(arms[:n], outcomes[:n], tau=0.1, alpha=ALPHA, burn_in=BURN_IN)
               for n in range(1, arms.size + 1)]
    first = next(i for i, r in enumerate(results) if r.looks)
    assert all(math.isnan(r.p_value) for r in results[:first])
    p = np.array([r.p_value for r in results[first:]])
    low = np.array([r.ci_low for r in results[first:]])
    high = np.array([r.ci_high for r in results[first:]])
    assert (np.diff(p) <= 0).all() and (p <= 1).all()
    assert (np.diff(low) >= 0).all() and (np.diff(high) <= 0).all()
    assert np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()
    assert [r.looks for r in results] == sorted(r.looks for r in results)
    last = results[-1]
    assert last.n_control + last.n_challenger == arms.size == int((arms == 0).sum()) + last.n_challenger
    assert last.diff == pytest.approx(outcomes[arms == 1].mean() - outcomes[arms == 0].mean())


def test_too_few_rows_means_no_look():
    arms, outcomes = [0, 1] * 19, [1.0, 0.0] * 19
    result = sequential.always_valid(arms, outcomes, tau=0.1, alpha=ALPHA, burn_in=BURN_IN)
    assert math.isnan(result.p_value) and result.looks == 0
    assert (result.ci_low, result.ci_high) == (-math.inf, math.inf)
    assert (result.n_control, result.n_challenger, result.diff) == (19, 19, -1.0)
    assert sequential.always_valid([], [], tau=0.1, alpha=ALPHA, burn_in=BURN_IN).looks == 0
    assert math.isnan(sequential.always_valid([], [], tau=0.1, alpha=ALPHA, burn_in=BURN_IN).diff)


def test_all_correct_arms_still_give_finite_looks():
    # A 0/1 arm that is all right early on has sample variance 0; the smoothed variance keeps
    # V > 0, so the look counts, with Lambda finite (p = 1 at no difference).
    result = sequential.always_valid([0, 1] * 20, [1.0] * 40, tau=0.1, alpha=ALPHA, burn_in=BURN_IN)
    assert result.looks == 1 and result.p_value == 1.0
    assert math.isfinite(result.ci_low) and result.ci_low < 0 < result.ci_high
    # ...and a blatant difference between two constant arms is found, not skipped.
    blatant = sequential.always_valid([0, 1] * 20, [0.0, 1.0] * 20, tau=0.1, alpha=ALPHA, burn_in=BURN_IN)
    assert blatant.looks == 1 and 0 < blatant.p_value < 1e-6 and blatant.ci_low > 0


def test_constant_regression_errors_are_no_look_not_rounding_noise():
    result = sequential.always_valid([0, 1] * 50, [0.1] * 100, tau=0.5, alpha=ALPHA, burn_in=BURN_IN)
    assert result.looks == 0 and math.isnan(result.p_value)


def test_huge_evidence_does_not_overflow():
    arms = np.tile([0, 1], 5000)
    outcomes = np.where(arms == 1, 10.0, 0.0) + np.tile([0.0, 0.0, 0.01, 0.01], 2500)
    result = sequential.always_valid(arms, outcomes, tau=1.0, alpha=ALPHA, burn_in=BURN_IN)
    assert result.p_value == 0.0 and result.ci_low > 9.9 and result.ci_high < 10.1


@pytest.mark.parametrize("kwargs, message", [
    ({"tau": 0.0}, "tau"),
    ({"tau": -1.0}, "tau"),
    ({"tau": float("nan")}, "tau"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"),
    ({"burn_in": 1}, "burn_in"),
    ({"arms": [0, 2, 1, 0]}, "arms"),
    ({"arms": [0, -1, 1, 0]}, "arms"),
    ({"arms": [0, 1, 1]}, "arms and outcomes"),
    ({"outcomes": [1.0, float("nan"), 0.0, 1.0]}, "outcomes"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, message):
    args = {"arms": [0, 1, 1, 0], "outcomes": [1.0, 0.0, 1.0, 1.0], "tau": 0.1, "alpha": ALPHA, "burn_in": 20} | kwargs
    with pytest.raises(ValueError, match=message) as info:
        sequential.always_valid(args.pop("arms"), args.pop("outcomes"), **args)
    assert "\n" not in str(info.value)


def test_default_tau():
    assert sequential.default_tau("classification", [1, 0, 1], RULE) == 0.1
    assert sequential.default_tau("regression", [1.0, 3.0], RULE) == pytest.approx(0.5 * np.std([1.0, 3.0], ddof=1))
    assert sequential.default_tau("regression", [2.0], RULE) == 1.0
    assert sequential.default_tau("regression", [2.0, 2.0], RULE) == 1.0
    assert sequential.default_tau("regression", [1.0, 3.0], RULE | {"regression_sd": 2.0}) == \
        pytest.approx(2.0 * np.std([1.0, 3.0], ddof=1))
    with pytest.raises(ValueError, match="task"):
        sequential.default_tau("ranking", [1.0], RULE)
