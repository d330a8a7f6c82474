"""mlpipe/data/features.py: column typing, type normalisation, the seeded split, the preprocessor."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlpipe.data.features import FeatureSpec, build_preprocessor, feature_spec, normalise_types, split
from mlpipe.errors import DataError


# -- feature_spec ------------------------------------------------------------------------------


def test_feature_spec_types_columns(mixed):
    spec = feature_spec(mixed, "target", "classification")
    assert spec.target == "target"
    assert spec.task == "classification"
    assert spec.numeric == ["num", "count"]
    assert spec.categorical == ["cat", "flag"]  # booleans are categories, not numbers
    assert spec.dropped == ["empty"]
    assert spec.classes == ["no", "yes"]
    assert spec.columns == ["num", "count", "cat", "flag"]


def test_feature_spec_regression_has_no_classes(wine):
    spec = feature_spec(wine, "target", "regression")
    assert spec.classes == []
    assert len(spec.numeric) == 13
    assert spec.categorical == [] and spec.dropped == []


def test_feature_spec_classes_ignore_missing_labels(wine):
    wine.loc[0, "target"] = np.nan
    assert feature_spec(wine, "target", "classification").classes == [0.0, 1.0, 2.0]


def test_feature_spec_no_usable_columns():
    frame = pd.DataFrame({"a": [np.nan, np.nan], "b": [None, None], "target": [0, 1]})
    with pytest.raises(DataError) as info:
        feature_spec(frame, "target", "classification")
    message = str(info.value)
    assert "no usable feature columns besides target 'target'" in message
    assert "['a', 'b']" in message


def test_feature_spec_round_trips_through_json(mixed):
    spec = feature_spec(mixed, "target", "classification")
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# -- normalise_types ---------------------------------------------------------------------------


def test_normalise_types(mixed):
    spec = feature_spec(mixed, "target", "classification")
    out = normalise_types(mixed, spec)
    assert out["num"].dtype == np.float64
    assert out["count"].dtype == np.float64
    assert out["flag"].tolist()[:3] == [str(v) for v in mixed["flag"][:3]]
    assert set(out["flag"]) == {"True", "False"}
    assert out.loc[2, "cat"] == "rare"
    assert pd.isna(out.loc[1, "cat"])  # missing stays missing, not the string "nan"
    assert "nan" not in set(out["cat"].dropna())
    # the input is not modified
    assert mixed["flag"].dtype == bool
    assert mixed["count"].dtype.kind == "i"


def test_normalise_types_mixed_object_column():
    frame = pd.DataFrame({"code": [1, "x", None, 2.5], "target": [0, 1, 0, 1]})
    spec = FeatureSpec("target", "classification", [], ["code"], [], [0, 1])
    out = normalise_types(frame, spec)
    assert out["code"].tolist()[:2] == ["1", "x"]
    assert pd.isna(out["code"][2])
    assert out["code"][3] == "2.5"


# -- split -------------------------------------------------------------------------------------


def _with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["row_id"] = np.arange(len(frame))
    return frame


def test_split_sizes_and_stratification(wine, preprocess_cfg):
    spec = feature_spec(wine, "target", "classification")
    parts = split(wine, spec, preprocess_cfg, seed=42)
    assert {k: len(v) for k, v in parts.items()} == {"train": 115, "validation": 27, "test": 36}
    overall = wine["target"].value_counts(normalize=True)
    for name, part in parts.items():
        share = part["target"].value_counts(normalize=True)
        assert set(share.index) == {0, 1, 2}, name
        assert (share - overall).abs().max() < 0.03, name


def test_split_is_disjoint_and_complete(wine, preprocess_cfg):
    frame = _with_ids(wine)
    spec = feature_spec(frame, "target", "classification")
    parts = split(frame, spec, preprocess_cfg, seed=1)
    ids = [set(part["row_id"]) for part in parts.values()]
    assert sum(len(i) for i in ids) == len(frame)
    assert set.union(*ids) == set(range(len(frame)))


def test_split_is_seeded(wine, preprocess_cfg):
    frame = _with_ids(wine)
    spec = feature_spec(frame, "target", "classification")
    a = split(frame, spec, preprocess_cfg, seed=7)
    b = split(frame, spec, preprocess_cfg, seed=7)
    c = split(frame, spec, preprocess_cfg, seed=8)
    for name in ("train", "validation", "test"):
        assert a[name]["row_id"].tolist() == b[name]["row_id"].tolist()
    assert a["test"]["row_id"].tolist() != c["test"]["row_id"].tolist()


def test_split_drops_unlabelled_rows(wine, preprocess_cfg):
    frame = _with_ids(wine)
    frame["target"] = frame["target"].astype(float)
    frame.loc[:9, "target"] = np.nan
    spec = feature_spec(frame, "target", "classification")
    parts = split(frame, spec, preprocess_cfg, seed=42)
    used = set().union(*(set(p["row_id"]) for p in parts.values()))
    assert len(used) == len(frame) - 10
    assert used.isdisjoint(range(10))


@pytest.mark.parametrize("unlabelled", [False, True])
def test_split_parts_are_the_labelled_rows_at_their_positions(preprocess_cfg, unlabelled):
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({"x": rng.standard_normal(n), "word": pd.Series(rng.choice(["a", "b"], n), dtype="str"),
                          "kind": pd.Categorical(rng.choice(["p", "q"], n)), "flag": rng.random(n) < 0.5,
                          "count": pd.array(rng.integers(0, 5, n), dtype="Int64"),
                          "target": rng.integers(0, 2, n).astype(float)}, index=np.arange(n) * 3 + 7)
    if unlabelled:
        frame.loc[frame.index[::9], "target"] = np.nan
    labelled = frame[frame["target"].notna()].reset_index(drop=True)
    spec = feature_spec(frame, "target", "classification")
    parts = split(frame, spec, preprocess_cfg, seed=5)
    for name, part in parts.items():
        pd.testing.assert_frame_equal(part, labelled.iloc[part.index], check_exact=True, obj=name)
    assert frame.shape == (n, 6)  # not consumed by default

    moved = split(frame, spec, preprocess_cfg, seed=5, consume=True)
    assert frame.shape == (n, 0)
    for name, part in parts.items():
        pd.testing.assert_frame_equal(moved[name], part, check_exact=True, obj=name)


def test_split_tiny_class(wine, preprocess_cfg):
    frame = pd.concat([wine, wine.iloc[:2].assign(target=9)], ignore_index=True)
    spec = feature_spec(frame, "target", "classification")
    with pytest.raises(DataError) as info:
        split(frame, spec, preprocess_cfg, seed=42)
    message = str(info.value)
    assert "of 'target' has 2 rows" in message
    assert "at least 3 per class" in message


def test_split_tiny_class_names_the_label_plainly(wine, preprocess_cfg):
    frame = pd.concat([wine, wine.iloc[:2].assign(target=9)], ignore_index=True)
    spec = feature_spec(frame, "target", "classification")
    with pytest.raises(DataError, match=r"^class 9 of 'target' has 2 rows"):
        split(frame, spec, preprocess_cfg, seed=42)


def test_split_tiny_string_class(preprocess_cfg):
    frame = pd.DataFrame({"x": range(62), "target": ["a"] * 30 + ["b"] * 30 + ["odd"] * 2})
    spec = feature_spec(frame, "target", "classification")
    with pytest.raises(DataError, match=r"^class 'odd' of 'target' has 2 rows"):
        split(frame, spec, preprocess_cfg, seed=42)


def test_split_tiny_class_allowed_without_stratify(wine, preprocess_cfg):
    frame = pd.concat([wine, wine.iloc[:2].assign(target=9)], ignore_index=True)
    spec = feature_spec(frame, "target", "classification")
    parts = split(frame, spec, {**preprocess_cfg, "stratify": False}, seed=42)
    assert sum(len(p) for p in parts.values()) == len(frame)


def test_split_regression(preprocess_cfg):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=100), "y": rng.normal(size=100)})
    spec = feature_spec(frame, "y", "regression")
    parts = split(frame, spec, preprocess_cfg, seed=0)  # stratify=true is ignored for regression
    assert {k: len(v) for k, v in parts.items()} == {"train": 65, "validation": 15, "test": 20}


@pytest.mark.parametrize(("test_size", "validation_size"), [(0.0, 0.15), (0.6, 0.4), (1.2, 0.1), (0.2, 0.0)])
def test_split_bad_sizes(wine, preprocess_cfg, test_size, validation_size):
    spec = feature_spec(wine, "target", "classification")
    cfg = {**preprocess_cfg, "test_size": test_size, "validation_size": validation_size}
    with pytest.raises(DataError) as info:
        split(wine, spec, cfg, seed=42)
    message = str(info.value)
    assert f"preprocess.test_size={test_size} and validation_size={validation_size}" in message


def test_split_too_few_rows_is_a_data_error(preprocess_cfg):
    frame = pd.DataFrame({"x": range(9), "target": ["a", "b", "c"] * 3})
    spec = feature_spec(frame, "target", "classification")
    with pytest.raises(DataError, match="cannot split 9 rows"):
        split(frame, spec, preprocess_cfg, seed=42)


# -- build_preprocessor ------------------------------------------------------------------------


def _fitted(mixed, cfg):
    spec = feature_spec(mixed, "target", "classification")
    frame = normalise_types(mixed, spec)
    return spec, build_preprocessor(spec, cfg).fit(frame[spec.columns])


def test_preprocessor_feature_names(mixed, preprocess_cfg):
    _, pre = _fitted(mixed, preprocess_cfg)
    assert pre.get_feature_names_out().tolist() == [
        "num", "count", "cat_a", "cat_b", "cat_c", "cat_infrequent_sklearn", "flag_False", "flag_True"]


def test_preprocessor_handles_missing_and_unseen_values(mixed, preprocess_cfg):
    spec, pre = _fitted(mixed, preprocess_cfg)
    rows = pd.DataFrame({"num": [np.nan, 1.0], "count": [3.0, np.nan], "cat": ["never-seen", np.nan],
                         "flag": ["True", np.nan]})
    out = pre.transform(rows)
    assert out.shape == (2, 8)
    assert np.isfinite(out).all()
    names = pre.get_feature_names_out().tolist()
    # An unseen category goes to the infrequent column.
    assert out[0, names.index("cat_infrequent_sklearn")] == 1.0
    assert out[0, [names.index(f"cat_{c}") for c in "abc"]].sum() == 0.0
    # A missing category is imputed with the most frequent one.
    most_frequent = normalise_types(mixed, spec)["cat"].mode()[0]
    assert out[1, names.index(f"cat_{most_frequent}")] == 1.0
    # Every one-hot block has exactly one 1 per row.
    assert out[:, names.index("cat_a"):names.index("cat_infrequent_sklearn") + 1].sum(axis=1).tolist() == [1, 1]


def test_preprocessor_imputes_median_then_scales(mixed, preprocess_cfg):
    spec, pre = _fitted(mixed, {**preprocess_cfg, "scale_numeric": False})
    out = pre.transform(pd.DataFrame({"num": [np.nan], "count": [np.nan], "cat": ["a"], "flag": ["True"]}))
    assert out[0, 0] == pytest.approx(mixed["num"].median())
    assert out[0, 1] == pytest.approx(mixed["count"].median())

    _, scaled = _fitted(mixed, preprocess_cfg)
    train = scaled.transform(normalise_types(mixed, spec)[spec.columns])
    assert train[:, 0].mean() == pytest.approx(0.0, abs=1e-9)
    assert train[:, 0].std() == pytest.approx(1.0, abs=1e-6)


def test_preprocessor_without_min_frequency_keeps_rare_categories(mixed, preprocess_cfg):
    _, pre = _fitted(mixed, {**preprocess_cfg, "min_category_frequency": 0})
    names = pre.get_feature_names_out().tolist()
    assert "cat_rare" in names
    assert "cat_infrequent_sklearn" not in names
    out = pre.transform(pd.DataFrame({"num": [0.0], "count": [1.0], "cat": ["never-seen"], "flag": ["False"]}))
    assert out[0, names.index("cat_a"):names.index("cat_rare") + 1].sum() == 0.0  # unseen: all zeros


def test_preprocessor_numeric_only(wine, preprocess_cfg):
    spec = feature_spec(wine, "target", "classification")
    pre = build_preprocessor(spec, preprocess_cfg).fit(wine[spec.columns])
    rows = wine[spec.columns].head(2).copy()
    rows.iloc[0, 3] = np.nan
    out = pre.transform(rows)
    assert out.shape == (2, 13)
    assert np.isfinite(out).all()


def test_the_columnwise_median_imputer_learns_what_simpleimputers_median_does():
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(501, 4)), columns=list("abcd"))
    X.iloc[rng.integers(0, 501, 60), 1] = np.nan
    X.iloc[:250, 2] = np.nan
    spec = FeatureSpec(target="y", task="regression", numeric=list("abcd"), categorical=[], dropped=[], classes=[])
    cfg = {"numeric_impute": "median", "scale_numeric": False, "categorical_impute": "most_frequent",
           "min_category_frequency": 0.01}
    fitted = build_preprocessor(spec, cfg).fit(X)
    imputer = fitted.named_transformers_["numeric"].named_steps["impute"]
    assert np.array_equal(imputer.statistics_, SimpleImputer(strategy="median").fit(X).statistics_)
    assert np.array_equal(fitted.transform(X), SimpleImputer(strategy="median").fit_transform(X))
