"""mlpipe/data/sources.py: parsing data.source, reading files, content digests, task inference, checks."""

from __future__ import annotations

import subprocess
import sys

import re

import numpy as np
import pandas as pd
import pytest

from mlpipe.data import sources
from mlpipe.data.sources import Source, check_frame, infer_task, load_source, parse_source, source_digest
from mlpipe.errors import ConfigError, DataError


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "x": [1.5, 2.5, np.nan, 4.0],
        "colour": ["red", "blue", None, "red"],
        "label": ["a", "b", "a", "b"],
    })


# -- parse_source ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sources.SKLEARN_DATASETS)
def test_parse_sklearn(name):
    src = parse_source(f"sklearn:{name}")
    assert src == Source("sklearn", name)
    assert src.uri == f"sklearn:{name}"


def test_parse_unknown_sklearn_dataset():
    with pytest.raises(ConfigError) as info:
        parse_source("sklearn:titanic")
    message = str(info.value)
    assert "'sklearn:titanic'" in message
    assert "sklearn:wine" in message and "sklearn:diabetes" in message


def test_parse_s3():
    src = parse_source("s3://bucket/data/train.csv")
    assert src == Source("s3", "s3://bucket/data/train.csv")
    assert src.uri == "s3://bucket/data/train.csv"


def test_parse_file_uri_and_plain_path(tmp_path):
    path = tmp_path / "train.csv"
    assert parse_source(f"file://{path}") == Source("file", str(path))
    assert parse_source(f"  {path}  ") == Source("file", str(path))
    assert parse_source(str(path)).uri == path.as_uri()


def test_parse_relative_path_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("data/train.csv").uri == (tmp_path / "data" / "train.csv").as_uri()


@pytest.mark.parametrize("source", ["ftp://host/train.csv", "http://host/train.csv", "gs://b/train.csv"])
def test_parse_unsupported_scheme(source):
    scheme = source.split("://")[0]
    with pytest.raises(ConfigError) as info:
        parse_source(source)
    message = str(info.value)
    assert f"unsupported scheme '{scheme}'" in message
    assert source in message
    assert "s3://" in message


def test_s3_source_needs_bucket_and_key():
    with pytest.raises(ConfigError, match="needs a bucket and a key"):
        load_source("s3://bucket-only")
    with pytest.raises(ConfigError, match="s3://bucket/path/file.csv"):
        source_digest("s3://bucket/")


def test_s3_unsupported_suffix_fails_before_any_download():
    with pytest.raises(DataError, match="unsupported file type"):
        load_source("s3://bucket/data/train.json")


# -- load_source -------------------------------------------------------------------------------


def test_load_csv(tmp_path, small_frame):
    path = tmp_path / "train.csv"
    small_frame.to_csv(path, index=False)
    frame = load_source(str(path))
    assert frame.columns.tolist() == ["x", "colour", "label"]
    assert frame.shape == (4, 3)
    assert frame["x"].isna().sum() == 1
    assert frame["colour"].isna().sum() == 1
    assert frame["label"].tolist() == ["a", "b", "a", "b"]


def test_load_csv_via_file_uri(tmp_path, small_frame):
    path = tmp_path / "train.csv"
    small_frame.to_csv(path, index=False)
    assert load_source(f"file://{path}").shape == (4, 3)


def test_load_gzipped_csv_and_tsv(tmp_path, small_frame):
    small_frame.to_csv(tmp_path / "train.csv.gz", index=False)
    small_frame.to_csv(tmp_path / "train.tsv", index=False, sep="\t")
    assert load_source(str(tmp_path / "train.csv.gz")).shape == (4, 3)
    tsv = load_source(str(tmp_path / "train.tsv"))
    assert tsv.columns.tolist() == ["x", "colour", "label"]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_load_parquet(tmp_path, small_frame, suffix):
    path = tmp_path / f"train{suffix}"
    small_frame.to_parquet(path, index=False)
    frame = load_source(str(path))
    assert frame.columns.tolist() == ["x", "colour", "label"]
    assert frame["x"].tolist()[:2] == [1.5, 2.5]
    assert frame.shape == (4, 3)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        load_source(str(path))
    assert str(info.value) == f"{path}: no such file (data.source)"


def test_load_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_source(str(tmp_path))


def test_load_unsupported_suffix(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        load_source(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: unsupported file type")
    assert ".csv" in message and ".parquet" in message


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError) as info:
        load_source(str(path))
    assert str(info.value) == f"{path}: the file is empty"


def test_load_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as info:
        load_source(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read as PARQUET:")
    assert "\n" not in message


def test_load_undecodable_csv(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"name,target\n\xff\xfe\xfa,1\n")
    with pytest.raises(DataError, match="cannot read as CSV"):
        load_source(str(path))


def test_header_only_csv_fails_check_frame(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,target\n")
    frame = load_source(str(path))
    assert frame.shape == (0, 3)
    with pytest.raises(DataError) as info:
        check_frame(frame, "target", 20, str(path))
    assert str(info.value) == f"{path}: no data rows (found 0 rows, 3 columns)"


@pytest.mark.parametrize("sep, name", [(";", "';'"), ("|", "'|'")])
def test_other_delimiter_is_named(tmp_path, sep, name):
    path = tmp_path / "semi.csv"
    path.write_text(f"a{sep}b{sep}label\n1{sep}2{sep}x\n")
    with pytest.raises(DataError, match=f"semi.csv: one column .* looks {re.escape(name)}-delimited"):
        load_source(str(path))


def test_one_column_csv_without_another_delimiter_reads(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("label\n1\n2\n")
    assert load_source(str(path)).shape == (2, 1)


def test_profile_lists_columns_dtypes_and_missing(small_frame):
    class Cfg:
        source, target = "x.csv", "label"

    profile = sources.profile(small_frame, Cfg, "classification", 0)
    assert profile["columns"] == ["x", "colour", "label"] and profile["rows"] == 4
    assert profile["duplicate_rows"] == 0
    assert profile["missing"] == {"x": 1, "colour": 1}


def test_duplicate_csv_header_is_reported(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,a,target\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"duplicate column names \['a'\]"):
        check_frame(load_source(str(path)), "target", 1, str(path))


def test_load_sklearn_wine():
    frame = load_source("sklearn:wine")
    assert frame.shape == (178, 14)
    assert frame.columns[-1] == "target"
    assert sorted(frame["target"].unique()) == [0, 1, 2]


# -- source_digest -----------------------------------------------------------------------------


def test_source_digest_follows_file_content(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,target\n1,0\n")
    first = source_digest(str(path))
    assert source_digest(str(path)) == first
    assert source_digest(f"file://{path}") == first
    path.write_text("a,target\n2,0\n")  # same path, new content
    assert source_digest(str(path)) != first


def test_source_digest_ignores_file_location(tmp_path):
    (tmp_path / "one.csv").write_text("a,target\n1,0\n")
    (tmp_path / "two.csv").write_text("a,target\n1,0\n")
    assert source_digest(str(tmp_path / "one.csv")) == source_digest(str(tmp_path / "two.csv"))


def test_source_digest_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        source_digest(str(tmp_path / "nope.csv"))


def test_source_digest_sklearn():
    wine = source_digest("sklearn:wine")
    assert wine == source_digest("sklearn:wine")
    assert len(wine) == 64
    assert len({source_digest(f"sklearn:{name}") for name in sources.SKLEARN_DATASETS}) == len(sources.SKLEARN_DATASETS)


def test_source_digest_sklearn_does_not_import_sklearn(project_root):
    code = ("import sys; from mlpipe.data.sources import source_digest; source_digest('sklearn:diabetes'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


# -- infer_task --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["cat", "dog", "cat"], "classification"),
        ([True, False, True], "classification"),
        ([0, 1, 2, 1], "classification"),
        ([0.0, 1.0, 1.0, np.nan], "classification"),  # integral floats with few values
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(51)), "regression"),  # more distinct integers than max_classes
        (list(range(50)), "classification"),
    ],
)
def test_infer_task_auto(values, expected):
    assert infer_task(pd.Series(values), "auto", max_classes=50) == expected


def test_infer_task_bundled_targets():
    assert infer_task(load_source("sklearn:wine")["target"], "auto", 50) == "classification"
    assert infer_task(load_source("sklearn:diabetes")["target"], "auto", 50) == "regression"


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_infer_task_explicit(task):
    assert infer_task(pd.Series([0.5, 1.5]), task, 50) == task
    assert infer_task(pd.Series(["a", "b"]), task, 50) == task


def test_infer_task_bad_value():
    with pytest.raises(ConfigError) as info:
        infer_task(pd.Series([1, 2]), "clustering", 50)
    message = str(info.value)
    assert "data.task='clustering'" in message
    assert "auto, classification or regression" in message


# -- check_frame -------------------------------------------------------------------------------


def test_check_frame_passes(small_frame):
    assert check_frame(small_frame, "label", 4, "train.csv") is None


def test_check_frame_missing_target_lists_columns(small_frame):
    with pytest.raises(DataError) as info:
        check_frame(small_frame, "y", 1, "train.csv")
    message = str(info.value)
    assert message.startswith("train.csv: target column 'y' not found")
    assert "columns are: x, colour, label" in message
    assert "data.target" in message
    assert "..." not in message


def test_check_frame_missing_target_truncates_long_column_list():
    frame = pd.DataFrame(np.zeros((2, 12)), columns=[f"c{i}" for i in range(12)])
    with pytest.raises(DataError) as info:
        check_frame(frame, "y", 1, "wide.csv")
    message = str(info.value)
    assert "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 ..." in message
    assert "c10" not in message


def test_check_frame_duplicate_names():
    frame = pd.DataFrame([[1, 2, 3, 0]], columns=["a", "b", "a", "target"])
    with pytest.raises(DataError) as info:
        check_frame(frame, "target", 1, "dup.parquet")
    assert str(info.value) == "dup.parquet: duplicate column names ['a']"


def test_check_frame_too_few_rows(small_frame):
    with pytest.raises(DataError) as info:
        check_frame(small_frame, "label", 20, "train.csv")
    message = str(info.value)
    assert "4 rows with a 'label' label" in message
    assert "data.min_rows=20" in message


def test_check_frame_counts_only_labelled_rows(small_frame):
    small_frame.loc[0, "label"] = None
    with pytest.raises(DataError, match="3 rows with a 'label' label"):
        check_frame(small_frame, "label", 4, "train.csv")


def test_check_frame_target_only():
    with pytest.raises(DataError, match="only the target column 'target'; no feature columns"):
        check_frame(pd.DataFrame({"target": [0, 1, 0]}), "target", 1, "t.csv")


def test_check_frame_no_columns():
    with pytest.raises(DataError, match="no data rows"):
        check_frame(pd.DataFrame(), "target", 1, "t.csv")


# -- load_batch: a new batch for the drift check ---------------------------------------------


def test_load_batch_keeps_features_and_allows_a_missing_target(tmp_path):
    path = tmp_path / "batch.csv"
    pd.DataFrame({"a": ["1.5", "2"], "c": ["x", "y"]}).to_csv(path, index=False)
    frame = sources.load_batch(str(path), ["a"], ["c"])
    assert frame["a"].tolist() == [1.5, 2.0] and frame["a"].dtype == "float64"


def test_load_batch_names_missing_feature_columns(tmp_path):
    path = tmp_path / "batch.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"batch.csv: the batch lacks feature column\(s\) 'b', 'c' that the model"):
        sources.load_batch(str(path), ["a", "b"], ["c"])


def test_load_batch_names_text_in_a_numeric_column(tmp_path):
    path = tmp_path / "batch.csv"
    pd.DataFrame({"a": ["1.0", "lots", None]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"numeric column 'a' has 1 non-numeric value\(s\), e.g. 'lots'"):
        sources.load_batch(str(path), ["a"], [])


# -- sklearn:synthetic -------------------------------------------------------------------------


def test_synthetic_source_generates_the_asked_size_and_task():
    frame = load_source("sklearn:synthetic?rows=500&columns=7&task=regression&informative=3")
    assert frame.shape == (500, 8)
    assert list(frame.columns) == ["x0", "x1", "x2", "x3", "x4", "x5", "x6", "target"]
    assert frame["target"].dtype == "float64" and frame["target"].nunique() > 400
    labels = load_source("sklearn:synthetic?rows=300&classes=3")["target"]
    assert sorted(labels.unique()) == [0, 1, 2]


def test_synthetic_source_is_deterministic_and_its_parameters_are_its_digest():
    a = load_source("sklearn:synthetic?rows=200&seed=3")
    b = load_source("sklearn:synthetic?seed=3&rows=200")
    assert a.equals(b)
    assert source_digest("sklearn:synthetic?rows=200&seed=3") == source_digest("sklearn:synthetic?seed=3&rows=200")
    assert source_digest("sklearn:synthetic?rows=200&seed=3") != source_digest("sklearn:synthetic?rows=201&seed=3")
    assert not a.equals(load_source("sklearn:synthetic?rows=200&seed=4"))


@pytest.mark.parametrize("query, message", [
    ("rows=10", "rows=10; expected 20 to"),
    ("rows=many", "rows='many' is not an integer"),
    ("task=ranking", "task='ranking'; expected classification or regression"),
    ("informative=30", "informative=30 must be 1..columns (20)"),
    ("size=5", "unknown parameter 'size'"),
])
def test_bad_synthetic_parameters_are_config_errors(query, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_source(f"sklearn:synthetic?{query}")


def test_appended_files_add_their_rows_in_the_sources_column_order(tmp_path):
    import pandas as pd

    (tmp_path / "d.csv").write_text("a,b,y\n1,2.5,0\n3,4.5,1\n")
    pd.DataFrame({"y": [1], "b": [9], "a": [7]}).to_parquet(tmp_path / "served.parquet")
    frame = sources.load_with_appended(str(tmp_path / "d.csv"), [str(tmp_path / "served.parquet")], "y")
    assert frame.to_dict(orient="list") == {"a": [1, 3, 7], "b": [2.5, 4.5, 9.0], "y": [0, 1, 1]}
    assert str(frame["b"].dtype) == "float64"


def test_an_appended_file_with_other_columns_is_a_data_error_naming_them(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n")
    (tmp_path / "x.csv").write_text("a,c\n1,2\n")
    with pytest.raises(DataError, match=r"data.append .*x.csv: its columns differ from .*d.csv's; missing b, y; "
                                        r"not in the source c \(every appended file needs the source's columns, y "
                                        r"included\)"):
        sources.load_with_appended(str(tmp_path / "d.csv"), [str(tmp_path / "x.csv")], "y")
