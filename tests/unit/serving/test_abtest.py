"""A/B core: variant parsing, sticky routing, Thompson sampling and the statistics on traffic
whose right answer is known."""

import random

import numpy as np
import pytest
from scipy import stats

from mlpipe.errors import ConfigError
from mlpipe.config import compose, to_container
from mlpipe.serving import abtest

# The shipped A/B settings (conf/serve/default.yaml, serve.ab): the sequential test's among them.
AB = to_container(compose([]))["serve"]["ab"]
METHOD = AB["method"]  # sequential


def test_no_variants_means_one_default_variant():
    assert abtest.parse_variants([], "models:/m@champion") == [abtest.Variant("default", "models:/m@champion", 1.0)]


def test_variants_parse_with_weights():
    got = abtest.parse_variants([{"name": "a", "model_uri": "models:/m/1", "weight": 3},
                                 {"name": "b", "model_uri": "models:/m/2"}], "unused")
    assert [(v.name, v.model_uri, v.weight) for v in got] == [("a", "models:/m/1", 3.0), ("b", "models:/m/2", 1.0)]


@pytest.mark.parametrize("raw, message", [
    ([{"name": "a", "model_uri": "x"}, {"name": "a", "model_uri": "y"}], "used twice"),
    ([{"name": "a"}], "needs a name and a model_uri"),
    ([{"name": "a", "model_uri": "x", "weight": -1}], "expected a number >= 0"),
    ([{"name": "a", "model_uri": "x", "weight": "heavy"}], "is not a number"),
    ([{"name": "a", "model_uri": "x", "weight": 0}], "every weight is 0"),
    ([{"name": "a", "model_uri": "x", "colour": "red"}], "expected a mapping"),
    (["models:/m/1"], "expected a mapping"),
])
def test_bad_variants_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        abtest.parse_variants(raw, "unused")


def test_sticky_assignment_is_stable_and_follows_weights():
    rng = random.Random(0)
    first = [abtest.assign([1, 1], "exp", f"user-{i}", rng) for i in range(4000)]
    again = [abtest.assign([1, 1], "exp", f"user-{i}", random.Random(99)) for i in range(4000)]
    assert first == again
    share = np.mean(first)
    assert 0.46 < share < 0.54
    skewed = np.mean([abtest.assign([9, 1], "exp", f"user-{i}", rng) for i in range(4000)])
    assert 0.08 < skewed < 0.12


def test_the_experiment_name_reshuffles_assignment():
    a = [abtest.assign([1, 1], "exp-1", f"k{i}", random.Random(0)) for i in range(500)]
    b = [abtest.assign([1, 1], "exp-2", f"k{i}", random.Random(0)) for i in range(500)]
    assert a != b


def test_zero_weight_arm_never_chosen():
    rng = random.Random(1)
    assert {abtest.assign([0, 1, 0], "e", None, rng) for _ in range(500)} == {1}
    assert abtest.pick([1, 0], 0.9999999) == 0


def test_thompson_favours_the_better_arm():
    rng = np.random.default_rng(0)
    picks = [abtest.thompson([90, 50], [10, 50], rng) for _ in range(1000)]
    assert np.mean(np.array(picks) == 0) > 0.99
    even = [abtest.thompson([0, 0], [0, 0], rng) for _ in range(2000)]
    assert 0.45 < np.mean(even) < 0.55


def test_two_proportion_z_matches_the_textbook_value():
    # 200/1000 vs 250/1000: pooled p = 0.225, se = sqrt(.225*.775*.002) = 0.018674, z = 2.6774
    z, p = abtest.two_proportion_z(200, 1000, 250, 1000)
    assert z == pytest.approx(2.6774, abs=1e-3)
    assert p == pytest.approx(2 * stats.norm.sf(2.6774), rel=1e-3)
    assert abtest.two_proportion_z(5, 10, 5, 10) == (0.0, 1.0)


def test_chi_square_equals_z_squared_for_two_arms():
    z, _ = abtest.two_proportion_z(200, 1000, 250, 1000)
    chi2, p = abtest.chi_square([200, 250], [1000, 1000])
    assert chi2 == pytest.approx(z * z, rel=1e-6)


def test_mann_whitney_finds_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(10, 1, 400)
    assert abtest.mann_whitney(a, a + 1)[1] < 1e-10
    assert abtest.mann_whitney(a, rng.normal(10, 1, 400))[1] > 0.01


def _arm(name, correct, n, latency=10.0, seed=0):
    """`correct` right answers of `n`, in a random order: labels arriving one after another from
    steady traffic (all the right ones first would be traffic that changed mid-test)."""
    rng = np.random.default_rng(seed)
    outcomes = list(rng.permutation([1.0] * correct + [0.0] * (n - correct)))
    return {"name": name, "latencies": list(rng.normal(latency, 1, n)), "outcomes": outcomes}


def test_a_clearly_better_challenger_is_recommended():
    result = abtest.compare([_arm("a", 700, 1000), _arm("b", 800, 1000, seed=1)], "classification",
                            control="a", min_samples=200, alpha=0.05, method=METHOD, sequential=AB)
    assert result["winner"] == "b"
    assert result["recommendation"].startswith("promote b")
    assert result["arms"][1]["accuracy"] == pytest.approx(0.8)


def test_equal_arms_keep_the_control():
    result = abtest.compare([_arm("a", 700, 1000), _arm("b", 705, 1000, seed=1)], "classification",
                            control="a", min_samples=200, alpha=0.05, method=METHOD, sequential=AB)
    assert result["winner"] is None
    assert result["recommendation"] == "keep a: no significant difference"


def test_a_worse_challenger_is_named():
    result = abtest.compare([_arm("a", 800, 1000), _arm("b", 600, 1000, seed=1)], "classification",
                            control="a", min_samples=200, alpha=0.05, method=METHOD, sequential=AB)
    assert result["winner"] is None and "b significantly worse" in result["recommendation"]


def test_too_few_samples_decides_nothing():
    result = abtest.compare([_arm("a", 10, 50), _arm("b", 50, 50, seed=1)], "classification",
                            control="a", min_samples=200, alpha=0.05, method=METHOD, sequential=AB)
    assert result["winner"] is None
    assert result["recommendation"].startswith("collect more data: every arm needs 200 labelled rows")
    assert not result["tests"][0]["significant"]


def test_three_arms_use_bonferroni_and_chi_square():
    arms = [_arm("a", 700, 1000), _arm("b", 730, 1000, seed=1), _arm("c", 790, 1000, seed=2)]
    result = abtest.compare(arms, "classification", control="a", min_samples=100, alpha=0.05, method=METHOD,
                            sequential=AB)
    assert [t["alpha"] for t in result["tests"]] == [0.025, 0.025]
    assert result["overall"]["test"] == "chi-square" and result["overall"]["p_value"] < 0.05
    assert result["winner"] == "c"


def test_regression_compares_absolute_errors():
    rng = np.random.default_rng(0)
    a = {"name": "a", "latencies": [5.0] * 300, "outcomes": list(np.abs(rng.normal(0, 2, 300)))}
    b = {"name": "b", "latencies": [5.0] * 300, "outcomes": list(np.abs(rng.normal(0, 1, 300)))}
    result = abtest.compare([a, b], "regression", control="a", min_samples=100, alpha=0.05, method="fixed",
                            sequential=AB)
    assert result["winner"] == "b"
    assert result["arms"][1]["mae"] < result["arms"][0]["mae"]
    assert result["tests"][0]["test"].startswith("Mann-Whitney")
    sequential = abtest.compare([a, b], "regression", control="a", min_samples=100, alpha=0.05, method=METHOD,
                                sequential=AB)
    assert sequential["winner"] == "b" and sequential["tests"][0]["test"] == "mSPRT (always valid)"
    test = sequential["tests"][0]
    assert test["ci_low"] <= test["mae_diff"] <= test["ci_high"] < 0


def test_the_default_method_is_the_always_valid_one_with_labels_in_arrival_order():
    """Arrival order matters to the mSPRT: labels of both arms interleaved by their times."""
    rng = np.random.default_rng(3)
    a = _arm("a", 0, 0) | {"latencies": [5.0] * 400, "outcomes": list(rng.binomial(1, 0.7, 400).astype(float)),
                            "times": list(range(0, 800, 2))}
    b = _arm("b", 0, 0) | {"latencies": [5.0] * 400, "outcomes": list(rng.binomial(1, 0.85, 400).astype(float)),
                            "times": list(range(1, 800, 2))}
    result = abtest.compare([a, b], "classification", control="a", min_samples=100, alpha=0.05, method=METHOD,
                            sequential=AB)
    assert result["method"] == "sequential" and result["winner"] == "b"
    test = result["tests"][0]
    assert test["p_value"] < 0.05 and 0 < test["ci_low"] <= test["accuracy_diff"] <= test["ci_high"]
    assert test["tau"] == 0.1 and test["looks"] > 300
    with pytest.raises(ConfigError, match="serve.ab.method='bayes'; expected sequential or fixed"):
        abtest.compare([a, b], "classification", control="a", min_samples=100, alpha=0.05, method="bayes",
                       sequential=AB)


def test_latency_difference_is_tested():
    result = abtest.compare([_arm("a", 700, 500, latency=10), _arm("b", 700, 500, latency=20, seed=1)],
                            "classification", control="a", min_samples=100, alpha=0.05, method=METHOD, sequential=AB)
    assert result["tests"][0]["latency_p_value"] < 1e-10
    assert result["arms"][1]["latency_p50_ms"] == pytest.approx(20, abs=0.5)


def test_unknown_control_is_a_config_error():
    with pytest.raises(ConfigError, match="serve.ab.control='z' is not a variant"):
        abtest.compare([_arm("a", 1, 2)], "classification", control="z", min_samples=1, alpha=0.05, method=METHOD, sequential=AB)


def test_variants_from_a_yaml_file(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text("- {name: a, model_uri: 'models:/m@champion', weight: 0.9}\n- {name: b, model_uri: 'models:/m/2', weight: 0.1}\n")
    got = abtest.parse_variants(abtest.configured_variants({"variants": [], "variants_file": str(path)}), "x")
    assert [(v.name, v.weight) for v in got] == [("a", 0.9), ("b", 0.1)]
    path.write_text("variants: [{name: c, model_uri: 'runs:/r/model'}]\n")
    assert abtest.configured_variants({"variants_file": str(path)}) == [{"name": "c", "model_uri": "runs:/r/model"}]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("a: [", "is not valid YAML"), ("{}", "must hold a non-empty list"),
])
def test_bad_variants_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "v.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        abtest.configured_variants({"variants": [], "variants_file": str(path)})


def test_variants_and_a_file_together_are_refused():
    with pytest.raises(ConfigError, match="not both"):
        abtest.configured_variants({"variants": [{"name": "a"}], "variants_file": "x.yaml"})


def test_an_empty_confidence_sequence_is_said_in_words_and_decides_nothing():
    """The challenger far better early, far worse later (traffic that changed, or a few rows sent
    again and again): the running intervals stop overlapping. The report must not print
    [low, high] with low > high, nor promote on the p-value."""
    from mlpipe.serving import abreport

    early, late = 300, 1500
    a = {"name": "a", "latencies": [5.0] * (early + late), "outcomes": [0.0] * early + [1.0] * late,
         "times": [2 * i for i in range(early + late)]}
    b = {"name": "b", "latencies": [5.0] * (early + late), "outcomes": [1.0] * early + [0.0] * late,
         "times": [2 * i + 1 for i in range(early + late)]}
    result = abtest.compare([a, b], "classification", control="a", min_samples=100, alpha=0.05, method=METHOD,
                            sequential=AB)
    (test,) = result["tests"]
    assert test["ci_low"] > test["ci_high"] and test["empty_interval"] and test["p_value"] < 0.05
    assert not test["significant"] and result["winner"] is None
    assert result["recommendation"] == f"keep a: the test of b is void ({abtest.EMPTY_INTERVAL})"
    result |= {"experiment": "e1"}
    for arm in result["arms"]:
        arm |= {"model_versions": "", "member": "", "errors": 0}
    printed = abreport.format_report(result)
    assert "confidence sequence for the difference [" not in printed
    assert f"b vs a: mSPRT (always valid), p={test['p_value']:.3g}; {abtest.EMPTY_INTERVAL}" in printed
