"""mlpipe/quality/drift.py: the reference profile, PSI, the KS / chi-square rule and the gate check."""

import numpy as np
import pandas as pd
import pytest

from mlpipe.quality import drift


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(0, 1, 2000), "y": rng.uniform(0, 10, 2000),
                         "c": rng.choice(["a", "b", "c"], 2000, p=[0.5, 0.3, 0.2])})


def profile_of(frame, bins=10):
    return drift.reference_profile(frame, ["x", "y"], ["c"], bins)


def test_profile_has_quantile_bins_and_frequencies(reference):
    profile = profile_of(reference)
    x = profile["columns"]["x"]
    assert len(x["edges"]) == 9 and len(x["fractions"]) == 10
    assert np.allclose(x["fractions"], 0.1, atol=0.01)
    assert profile["columns"]["c"]["frequencies"] == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.03)


def test_tied_values_collapse_to_fewer_bins():
    frame = pd.DataFrame({"x": [0.0] * 90 + list(range(10))})
    x = drift.reference_profile(frame, ["x"], [], 10)["columns"]["x"]
    assert len(x["edges"]) == len(set(x["edges"])) < 9
    assert sum(x["fractions"]) == pytest.approx(1.0)


def test_bin_counts_use_right_closed_intervals():
    assert drift.bin_counts(np.array([0.0, 1.0, 1.5, 2.0, 9.0]), [1.0, 2.0]).tolist() == [2, 2, 1]


def test_psi_is_zero_for_equal_and_grows_with_shift():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert drift.psi([0.5, 0.5], [0.6, 0.4]) < drift.psi([0.5, 0.5], [0.9, 0.1])
    # an empty bin does not make it infinite
    assert np.isfinite(drift.psi([0.5, 0.5], [1.0, 0.0]))


def test_a_sample_of_the_same_distribution_does_not_drift(reference):
    rng = np.random.default_rng(1)
    batch = pd.DataFrame({"x": rng.normal(0, 1, 500), "y": rng.uniform(0, 10, 500),
                          "c": rng.choice(["a", "b", "c"], 500, p=[0.5, 0.3, 0.2])})
    found = drift.compare(profile_of(reference), reference, batch, alpha=0.01, max_psi=0.2)
    assert [d.column for d in found] == ["x", "y", "c"]
    assert not any(d.drifted for d in found)
    assert drift.check("batch", found, 0).passed


def test_shifted_numeric_and_categorical_columns_drift(reference):
    rng = np.random.default_rng(2)
    batch = pd.DataFrame({"x": rng.normal(1.5, 1, 500), "y": rng.uniform(0, 10, 500),
                          "c": rng.choice(["a", "b", "z"], 500, p=[0.1, 0.3, 0.6])})
    found = {d.column: d for d in drift.compare(profile_of(reference), reference, batch, alpha=0.01, max_psi=0.2)}
    assert found["x"].drifted and found["x"].test == "ks" and found["x"].p_value < 1e-10
    assert found["c"].drifted and found["c"].test == "chi2" and "z" in found["c"].bins
    assert not found["y"].drifted
    check = drift.check("batch", list(found.values()), 0)
    assert not check.passed and check.value == 2
    assert "x (psi" in check.note and "c (psi" in check.note


def test_small_batches_need_a_significant_test_not_only_a_large_psi(reference):
    # 12 rows of the same distribution: PSI over 10 bins is large by chance, KS does not reject.
    batch = reference.sample(12, random_state=3)
    found = {d.column: d for d in drift.compare(profile_of(reference), reference, batch, alpha=0.01, max_psi=0.2)}
    assert found["x"].psi > 0.2
    assert not found["x"].drifted


def test_a_negligible_shift_on_a_huge_batch_is_significant_but_not_material():
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 50_000)})
    batch = pd.DataFrame({"x": rng.normal(0.05, 1, 50_000)})
    (found,) = drift.compare(drift.reference_profile(ref, ["x"], [], 10), ref, batch, alpha=0.01, max_psi=0.2)
    assert found.p_value < 0.01 and found.psi < 0.2 and not found.drifted


def test_bonferroni_divides_alpha_by_columns(reference):
    found = drift.compare(profile_of(reference), reference, reference.head(200), alpha=0.03, max_psi=0.2)
    assert drift.summary(found, 0.03, 0.2)["alpha_per_column"] == pytest.approx(0.01)


def test_missing_values_are_a_category_and_ignored_for_numeric_tests(reference):
    batch = reference.head(300).copy()
    batch.loc[:200, "c"] = None
    batch.loc[:100, "x"] = np.nan
    found = {d.column: d for d in drift.compare(profile_of(reference), reference, batch, alpha=0.01, max_psi=0.2)}
    assert "<missing>" in found["c"].bins and found["c"].drifted
    assert found["x"].rows == 300 - 101


def test_describe_names_worst_first_and_counts_the_rest():
    cols = [drift.ColumnDrift(f"c{i}", "numeric", "ks", 0.5, 1e-9, psi, 100, True, [], [], [])
            for i, psi in enumerate([0.3, 2.0, 0.9, 0.5])]
    text = drift.describe(cols, limit=2)
    assert text.startswith("c1 (psi 2.00") and "c2 (psi 0.90" in text and text.endswith("and 2 more")
