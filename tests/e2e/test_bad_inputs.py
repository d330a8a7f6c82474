"""Defective data files through `mlflow run . -e main -P steps=ingest`: each ends with a non-zero
exit, the ingest run FAILED with tags that name the file/column and what was expected, one
`error: ` line, and nothing registered. Later ingests of a source are checked against the schema
the first one stored, with every failure reported at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support import Store, error_lines


def good_frame(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "income": rng.normal(50, 10, rows).round(2),
        "age": rng.integers(20, 70, rows),
        "city": rng.choice(["paris", "lyon", "nice"], rows),
        "score": rng.uniform(0, 1, rows).round(3),
        "label": rng.choice(["yes", "no"], rows),
    })


def ingest(store: Store, source, target: str = "label"):
    return store.mlflow_run("-P", "steps=ingest", "-P", f"overrides=data.source={source} data.target={target}")


def assert_ingest_failed(store: Store, result, error_type: str, words: list[str]):
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    run = store.newest("tags.`pipeline.step` = 'ingest'")
    assert lines[0].startswith(
        f"error: main: StepFailedError: step ingest failed (run {run.info.run_id}, {error_type}): "), lines[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["error.type"] == error_type
    for word in words:
        assert word in lines[0], (word, lines[0])
        assert word in run.data.tags["error.message"]
    assert store.client.search_registered_models() == []
    return run


def failures_csv(store: Store, run) -> pd.DataFrame:
    path = store.client.download_artifacts(run.info.run_id, "validation/failures.csv", str(store.path))
    return pd.read_csv(path)


# -- files that cannot be read ------------------------------------------------------------------


def test_empty_file(store: Store, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert_ingest_failed(store, ingest(store, path), "DataError", [str(path), "the file is empty"])


@pytest.mark.slow
def test_header_only(store: Store, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("income,age,label\n")
    assert_ingest_failed(store, ingest(store, path), "DataError", [str(path), "no data rows", "0 rows"])


@pytest.mark.slow
def test_semicolon_delimited(store: Store, tmp_path):
    path = tmp_path / "semi.csv"
    good_frame().to_csv(path, sep=";", index=False)
    assert_ingest_failed(store, ingest(store, path), "DataError", [str(path), "looks ';'-delimited", "','"])


@pytest.mark.slow
def test_neither_csv_nor_parquet(store: Store, tmp_path):
    path = tmp_path / "data.json"
    good_frame().to_json(path)
    assert_ingest_failed(store, ingest(store, path), "DataError", [str(path), "unsupported file type", "CSV", "Parquet"])


@pytest.mark.slow
def test_duplicate_column_names(store: Store, tmp_path):
    path = tmp_path / "dupes.csv"
    path.write_text("income,age,income,label\n" + "".join(f"{i},{i},{i},{'yes' if i % 2 else 'no'}\n" for i in range(40)))
    assert_ingest_failed(store, ingest(store, path), "DataError", [str(path), "duplicate column names ['income']"])


@pytest.mark.slow
def test_unknown_scheme(store: Store):
    assert_ingest_failed(store, ingest(store, "ftp://host/data.csv"), "ConfigError",
                         ["unsupported scheme 'ftp'", "s3://"])


@pytest.mark.slow
def test_directory_instead_of_a_file(store: Store, tmp_path):
    assert_ingest_failed(store, ingest(store, tmp_path), "DataError", [str(tmp_path), "is a directory"])


# -- files that read but fail the checks every ingest makes --------------------------------------


@pytest.mark.slow
def test_target_with_a_single_class(store: Store, tmp_path):
    path = tmp_path / "one_class.csv"
    good_frame().assign(label="yes").to_csv(path, index=False)
    run = assert_ingest_failed(store, ingest(store, path), "DataError",
                               [str(path), "'label'", "min_classes(2)", "1 class(es): ['yes']"])
    assert failures_csv(store, run)["check"].tolist() == ["min_classes(2)"]


def test_text_in_a_numeric_column_on_a_first_ingest(store: Store, tmp_path):
    path = tmp_path / "text.csv"
    frame = good_frame()
    frame["income"] = frame["income"].astype(object)
    frame.loc[[4, 9], "income"] = ["unknown", "n.a."]
    frame.to_csv(path, index=False)
    run = assert_ingest_failed(store, ingest(store, path), "DataError",
                               [str(path), "'income'", "text in a numeric column", "2 value(s)", "'unknown'"])
    failures = failures_csv(store, run)
    assert failures["failure_case"].tolist() == ["unknown", "n.a."]
    assert failures["index"].tolist() == [4, 9]


@pytest.mark.slow
def test_a_mostly_missing_column(store: Store, tmp_path):
    path = tmp_path / "sparse.csv"
    frame = good_frame()
    frame.loc[frame.index[: int(len(frame) * 0.9)], "age"] = np.nan
    frame.to_csv(path, index=False)
    assert_ingest_failed(store, ingest(store, path), "DataError",
                         [str(path), "'age'", "max_missing_fraction(0.5)", "90% missing"])


# -- later ingests against the stored schema ------------------------------------------------------


@pytest.fixture(scope="module")
def stored(store: Store, tmp_path_factory):
    """A first good ingest of a source: it stores the schema later ingests are checked against."""
    path = tmp_path_factory.mktemp("source") / "customers.csv"
    good_frame().to_csv(path, index=False)
    result = ingest(store, path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.newest("tags.`pipeline.step` = 'ingest'")
    assert run.data.tags["data.schema_from"] == "inferred"
    assert run.data.tags["validation.schema_stored"] == "true"
    return path, run


@pytest.mark.slow
def test_fresh_plausible_data_passes_against_the_stored_schema(store: Store, stored):
    path, first = stored
    good_frame(seed=1).to_csv(path, index=False)
    result = ingest(store, path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.newest("tags.`pipeline.step` = 'ingest'")
    assert run.info.run_id != first.info.run_id
    assert run.data.tags["data.schema_from"] == first.info.run_id


def reference_run_id(store: Store) -> str:
    """The newest FINISHED ingest that stored a schema: the one the next ingest is checked against."""
    return store.newest("tags.`validation.schema_stored` = 'true' and attributes.status = 'FINISHED'").info.run_id


def test_every_failure_against_the_stored_schema_is_reported_at_once(store: Store, stored):
    path, _ = stored
    reference = reference_run_id(store)
    frame = good_frame(seed=3).drop(columns=["score"]).assign(height=1.8)  # a column removed, one added
    frame["income"] = frame["income"].astype(object)
    frame.loc[3, "income"] = "lots"          # text in a numeric column
    frame.loc[5, "age"] = 500                # far outside the inferred range
    frame.loc[7, "city"] = "marseille"       # a category never seen
    frame.loc[8, "city"] = None              # missing where the first data had none
    frame.to_csv(path, index=False)
    run = assert_ingest_failed(store, ingest(store, path), "DataError",
                               [str(path), "6 validation failure(s)", reference, "'height': column added",
                                "'score': column removed", "'income'", "'lots'", "and 3 more"])
    assert run.data.tags["data.schema_from"] == reference
    failures = failures_csv(store, run)
    assert sorted(failures["column"]) == ["age", "city", "city", "height", "income", "score"]
    assert sorted(failures["index"].dropna()) == [3, 5, 7, 8]
    checks = " ".join(failures["check"])
    assert "isin" in checks and "not_nullable" in checks and "numeric" in checks


# -- a schema given in config (data.schema) ---------------------------------------------------


def schema_file(store: Store, run, path, edit=None):
    """The schema a run stored, optionally edited, written to `path` for data.schema."""
    import yaml

    text = open(store.client.download_artifacts(run.info.run_id, "validation/schema.yaml", str(store.path))).read()
    schema = yaml.safe_load(text)
    if edit:
        edit(schema)
    path.write_text(yaml.safe_dump(schema))
    return path


@pytest.mark.slow
def test_data_schema_file_is_used_instead_of_the_stored_one(store: Store, stored, tmp_path):
    source, first = stored
    good_frame(seed=4).to_csv(source, index=False)
    path = schema_file(store, first, tmp_path / "schema.yaml")
    result = store.mlflow_run("-P", "steps=ingest", "-P",
                              f"overrides=data.source={source} data.target=label data.schema={path}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = store.newest("tags.`pipeline.step` = 'ingest'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["data.schema_from"] == str(path)


def test_data_schema_file_that_rejects_the_data(store: Store, stored, tmp_path):
    source, first = stored
    # The configured schema knows no `score` column and allows only two cities.
    def edit(schema):
        del schema["columns"]["score"]
        schema["columns"]["city"]["isin"] = ["lyon", "paris"]
    path = schema_file(store, first, tmp_path / "strict.yaml", edit)
    good_frame(seed=5).to_csv(source, index=False)
    result = store.mlflow_run("-P", "steps=ingest", "-P",
                              f"overrides=data.source={source} data.target=label data.schema={path}")
    run = assert_ingest_failed(store, result, "DataError",
                               [str(source), f"against the schema from {path}", "'score': column added", "'city'",
                                "'nice'"])
    assert run.data.tags["data.schema_from"] == str(path)
    # The card of the failed run says why, with the failures table.
    card = card_summary(store, run)
    assert card["status"] == "FAILED" and card["checks_failed"] == ["validation.failures"]
    assert card["inputs"]["schema"] == str(path)


@pytest.mark.slow
def test_missing_data_schema_file(store: Store, stored, tmp_path):
    source, _ = stored
    path = tmp_path / "nope.yaml"
    result = store.mlflow_run("-P", "steps=ingest", "-P",
                              f"overrides=data.source={source} data.target=label data.schema={path}")
    assert_ingest_failed(store, result, "DataError", [str(path), "no such schema file (data.schema)"])


def card_summary(store: Store, run) -> dict:
    import json

    return json.load(open(store.client.download_artifacts(run.info.run_id, "card/summary.json", str(store.path))))


# slow: the duplicate-rows rule through ingest; the rule itself is unit-tested
# (test_duplicate_rows_fail_only_above_the_limit) and the other tests here prove the path of a
# validation failure through ingest
@pytest.mark.slow
def test_survey_answers_repeat_rows_and_pass_with_the_count_reported(store: Store, tmp_path):
    """3000 respondents, eight questions answered on a skewed 1-5 scale: many identical rows (about
    30%; data.validation.max_duplicate_fraction=0.1 stopped them), while a file appended to itself
    fails and says which key changes the limit."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    answers = {f"q{i}": rng.choice([1, 2, 3, 4, 5], 3000, p=[0.6, 0.2, 0.1, 0.05, 0.05]) for i in range(8)}
    survey = pd.DataFrame(answers).assign(label=lambda f: np.where(f["q0"] + f["q1"] > 3, "yes", "no"))
    duplicated = int(survey.duplicated().sum())
    assert duplicated > 300
    path = tmp_path / "survey.csv"
    survey.to_csv(path, index=False)
    assert ingest(store, path).returncode == 0
    run = store.newest("tags.`pipeline.step` = 'ingest'")
    assert run.info.status == "FINISHED" and run.data.metrics["data.duplicate_rows"] == duplicated

    twice = tmp_path / "twice.csv"
    pd.concat([survey, survey]).to_csv(twice, index=False)
    assert_ingest_failed(store, ingest(store, twice), "DataError",
                         ["max_duplicate_fraction(0.4) failed", "rows duplicated", "(to change: "
                          "data.validation.max_duplicate_fraction=<fraction>)"])
