"""mlpipe/quality/validation.py and mlpipe/data/outliers.py: schema inference, every check, outlier bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipe.config import compose, to_container
from mlpipe.errors import ConfigError, DataError
from mlpipe.quality import validation


@pytest.fixture(scope="module")
def cfg() -> dict:
    """The shipped defaults (conf/data/validation/default.yaml)."""
    return to_container(compose([]))["data"]["validation"]


@pytest.fixture(scope="module")
def ocfg() -> dict:
    return to_container(compose([]))["preprocess"]["outliers"]


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = 100
    return pd.DataFrame({
        "x": np.linspace(0.0, 100.0, rows),
        "n": rng.integers(1, 10, rows),
        "colour": rng.choice(["red", "blue"], rows),
        "maybe": [np.nan if i % 10 == 0 else float(i) for i in range(rows)],
        "label": ["a", "b"] * (rows // 2),
    })


def checks_of(failures: pd.DataFrame) -> list[tuple]:
    return list(zip(failures["column"], failures["check"]))


# -- inference ----------------------------------------------------------------------------------


def test_infer_schema_columns_dtypes_nullability(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    assert list(schema.columns) == list(frame.columns)
    assert schema.strict is True
    assert str(schema.columns["x"].dtype) == "float64" and schema.columns["x"].coerce
    assert schema.columns["colour"].dtype is None
    assert schema.columns["maybe"].nullable and not schema.columns["x"].nullable


def test_infer_schema_ranges_are_widened_by_the_configured_tolerance(frame, cfg):
    schema = validation.infer_schema(frame, {**cfg, "range_tolerance": 0.1})
    (check,) = schema.columns["x"].checks
    assert check.statistics == {"min_value": -10.0, "max_value": 110.0, "include_min": True, "include_max": True}


def test_infer_schema_categories_only_for_few_values(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    (check,) = schema.columns["colour"].checks
    assert check.name == "isin" and sorted(check.statistics["allowed_values"]) == ["blue", "red"]
    many = validation.infer_schema(frame, {**cfg, "max_categories": 1})
    assert many.columns["colour"].checks == []


def test_infer_nullable_false_allows_missing_everywhere(frame, cfg):
    schema = validation.infer_schema(frame, {**cfg, "infer_nullable": False})
    assert all(column.nullable for column in schema.columns.values())


def test_schema_yaml_round_trip(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    again = validation.schema_from_yaml(validation.schema_to_yaml(schema), "schema.yaml")
    assert validation.schema_failures(frame, again, cfg).empty


def test_schema_from_bad_yaml_names_it():
    with pytest.raises(DataError, match="my.yaml: not a pandera YAML schema"):
        validation.schema_from_yaml("columns: [1, 2", "my.yaml")


# -- checks against a stored schema -------------------------------------------------------------


def test_same_data_passes(frame, cfg):
    assert validation.schema_failures(frame, validation.infer_schema(frame, cfg), cfg).empty


def test_column_added_and_removed(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    failures = validation.schema_failures(frame.drop(columns=["n"]).assign(extra=1), schema, cfg)
    assert sorted(checks_of(failures)) == [("extra", validation.ADDED), ("n", validation.REMOVED)]


def test_text_in_a_numeric_column_names_the_value(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    bad = frame.assign(x=frame["x"].astype(object))
    bad.loc[7, "x"] = "seven"
    failures = validation.schema_failures(bad, schema, cfg)
    assert len(failures) == 1
    row = failures.iloc[0]
    assert (row["column"], row["failure_case"], row["index"]) == ("x", "seven", 7)
    assert row["check"].startswith("numeric")


def test_missing_value_in_a_non_nullable_column(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    bad = frame.copy()
    bad.loc[3, "x"] = np.nan
    assert checks_of(validation.schema_failures(bad, schema, cfg)) == [("x", "not_nullable")]


def test_value_outside_the_range(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    inside, outside = frame.copy(), frame.copy()
    inside.loc[0, "x"] = 120.0  # within the 25% tolerance of [0, 100]
    outside.loc[0, "x"] = 130.0
    assert validation.schema_failures(inside, schema, cfg).empty
    failures = validation.schema_failures(outside, schema, cfg)
    assert checks_of(failures) == [("x", "in_range(-25.0, 125.0)")]
    assert failures["failure_case"].tolist() == [130.0]


def test_new_category_fails_or_passes_by_config(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    bad = frame.copy()
    bad.loc[2, "colour"] = "green"
    failures = validation.schema_failures(bad, schema, cfg)
    assert checks_of(failures) == [("colour", "isin(['blue', 'red'])")]
    assert validation.schema_failures(bad, schema, {**cfg, "new_categories": "allow"}).empty
    with pytest.raises(ConfigError, match="new_categories"):
        validation.schema_failures(bad, schema, {**cfg, "new_categories": "maybe"})


def test_integer_coded_categories_compare_as_text(cfg):
    first = pd.DataFrame({"code": ["1", "2"] * 10})
    later = pd.DataFrame({"code": [1, 2] * 10})
    assert validation.schema_failures(later, validation.infer_schema(first, cfg), cfg).empty


def test_every_failure_is_reported_at_once(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    bad = frame.drop(columns=["n"])
    bad.loc[0, "x"] = 1e6
    bad.loc[1, "colour"] = "green"
    bad.loc[2, "x"] = np.nan
    failures = validation.schema_failures(bad, schema, cfg)
    assert len(failures) == 4
    assert list(failures.columns) == validation.FAILURE_COLUMNS


# -- checks every ingest makes ------------------------------------------------------------------


def test_clean_frame_passes(frame, cfg):
    assert validation.frame_failures(frame, "label", "classification", cfg).empty


def test_mostly_missing_column(frame, cfg):
    bad = frame.copy()
    bad.loc[: 89, "n"] = np.nan
    failures = validation.frame_failures(bad, "label", "classification", cfg)
    assert checks_of(failures) == [("n", "max_missing_fraction(0.5)")]
    assert failures["failure_case"].tolist() == ["90% missing"]
    assert validation.frame_failures(bad, "label", "classification", {**cfg, "max_missing_fraction": 0.95}).empty


def test_duplicate_rows_fail_only_above_the_limit(frame, cfg):
    survey = pd.concat([frame, frame.iloc[:20]], ignore_index=True)  # 20 of 120 rows repeated: 16.7%
    assert validation.frame_failures(survey, "label", "classification", cfg).empty  # the default limit, 0.4
    twice = pd.concat([frame, frame], ignore_index=True)  # a file appended to itself: 50%
    failures = validation.frame_failures(twice, "label", "classification", cfg)
    assert checks_of(failures) == [("*", "max_duplicate_fraction(0.4)")]
    assert failures["failure_case"].tolist() == ["100 of 200 rows duplicated (50.0%)"] and failures["index"].tolist() == [100]
    assert validation.frame_failures(twice, "label", "classification", {**cfg, "max_duplicate_fraction": 0.5}).empty
    line = validation.summarise(failures, "survey.csv", "the first-ingest checks", 3)
    assert line.endswith("e.g. '100 of 200 rows duplicated (50.0%)' (to change: "
                         "data.validation.max_duplicate_fraction=<fraction>) (all of them: validation/failures.csv)")


@pytest.mark.parametrize("check", ["max_missing_fraction(0.5)", "max_duplicate_fraction(0.4)", "min_classes(2)",
                                   "min_class_fraction(0.05)", "numeric (text in a numeric column)", "isin(['a'])",
                                   "in_range(0, 1)", "not_nullable", "coerce_dtype('float64')", validation.ADDED])
def test_every_data_check_names_an_override_that_exists(check):
    """The key a failure names composes against conf/ (its <placeholder> replaced by a value)."""
    hint = validation.relax_hint(check)
    key, _, value = hint.partition("=")
    value = {"<fraction>": "0.5", "<count>": "2", "<a pandera YAML schema>": "/tmp/schema.yaml",
             "<label column>": "label"}.get(value, value)
    assert to_container(compose([f"{key}={value}"]))  # raises ConfigError for a key that does not exist


def test_single_class(frame, cfg):
    failures = validation.frame_failures(frame.assign(label="a"), "label", "classification", cfg)
    assert checks_of(failures) == [("label", "min_classes(2)")]
    assert failures["failure_case"].tolist() == ["1 class(es): ['a']"]
    # the remedy is the data or the target column, not a lower min_classes
    line = validation.summarise(failures, "data", "the every-ingest checks", 3)
    assert "'label': min_classes(2) failed for 1 value(s), e.g. \"1 class(es): ['a']\" (too few classes to learn " \
           "from: fix the data, or point data.target=<label column> at the label)" in line, line
    assert "data.validation.min_classes" not in line
    assert validation.frame_failures(frame.assign(label="a"), "label", "regression", cfg).empty


def test_rare_class(frame, cfg):
    labels = ["a"] * 97 + ["b"] * 3
    failures = validation.frame_failures(frame.assign(label=labels), "label", "classification", cfg)
    assert checks_of(failures) == [("label", "min_class_fraction(0.05)")]
    assert "'b' is 3.0%" in failures["failure_case"].iloc[0]
    assert validation.frame_failures(frame.assign(label=labels), "label", "classification",
                                     {**cfg, "min_class_fraction": 0.02}).empty


def test_numeric_column_with_some_text_on_a_first_ingest(frame, cfg):
    bad = frame.assign(x=frame["x"].map(str))
    bad.loc[[5, 6], "x"] = ["n/a", "high"]
    failures = validation.frame_failures(bad, "label", "classification", cfg)
    assert failures[["column", "failure_case", "index"]].values.tolist() == [["x", "n/a", 5], ["x", "high", 6]]
    # A real text column (few values parse as numbers) is not reported.
    assert validation.frame_failures(frame.assign(colour=["a1", "b2", "c3", "7"] * 25), "label", "classification", cfg).empty


def test_all_failures_reports_text_in_a_numeric_column_once(frame, cfg):
    schema = validation.infer_schema(frame, cfg)
    bad = frame.assign(x=frame["x"].map(str))
    bad.loc[5, "x"] = "n/a"
    failures = validation.all_failures(bad, schema, "label", "classification", cfg)
    assert failures[["column", "failure_case"]].values.tolist() == [["x", "n/a"]]
    assert validation.all_failures(frame, None, "label", "classification", cfg).empty


def test_summary_counts_and_names_the_first_groups():
    failures = pd.DataFrame(
        [["x", "in_range(0, 1)", 5.0, 1], ["x", "in_range(0, 1)", 6.0, 2], ["new", validation.ADDED, "new", None],
         ["c", "isin(['a'])", "b", 3], ["d", "not_nullable", None, 4]],
        columns=validation.FAILURE_COLUMNS)
    line = validation.summarise(failures, "f.csv", "run abc", 2)
    assert line.startswith("f.csv: 5 validation failure(s) against run abc: ")
    assert "'x': in_range(0, 1) failed for 2 value(s), e.g. 5.0" in line
    assert "'new': column added" in line and "and 2 more" in line and "'c'" not in line
    assert "\n" not in line


def test_summary_names_the_row_of_a_missing_value():
    failures = pd.DataFrame([["d", "not_nullable", None, 4]], columns=validation.FAILURE_COLUMNS)
    assert "'d': not_nullable failed for 1 value(s), e.g. row 4" in validation.summarise(failures, "f", "s", 3)


def test_configured_schema_file(tmp_path, frame, cfg):
    with pytest.raises(DataError, match="no such schema file"):
        validation.read_configured(str(tmp_path / "nope.yaml"))
    path = tmp_path / "schema.yaml"
    path.write_text(validation.schema_to_yaml(validation.infer_schema(frame, cfg)))
    schema = validation.schema_from_yaml(validation.read_configured(str(path)), str(path))
    assert validation.schema_failures(frame, schema, cfg).empty
