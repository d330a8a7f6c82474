"""mlpipe/serving/records/reads.py: what the reports read back, from old files too, and the clear error without records."""

import sqlite3

import pytest

from mlpipe.errors import DataError
from mlpipe.serving.records import db, reads


def test_failed_requests_count_as_errors_not_latencies(store, tmp_path, record):
    store.append(record(1))
    store.append(record(2, status=400))
    store.flush()
    data = reads.labelled_rows(tmp_path / "r.db", "exp", 30)
    assert data["errors"] == {"a": 1} and len(data["latencies"]["a"]) == 1


def test_missing_records_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no serving records at"):
        reads.labelled_rows(tmp_path / "none.db", "exp", 30)


def test_a_records_file_from_before_servers_recorded_their_control_still_reads(tmp_path):

    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("CREATE TABLE requests (id INTEGER)").connection.commit()
    assert reads.served_control(path, "ab", 30) is None


def test_an_old_records_file_is_read_as_it_is_and_an_empty_one_is_a_clear_error(tmp_path, first_schema):
    """The report reads read-only: a file from before authors is not migrated, its arms have no
    author; a file without the tables says how to get records."""

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(first_schema)
    conn.execute("INSERT INTO requests (request_id, ts, experiment, variant, model_uri, model_version, status, "
                 "latency_ms, rows, predictions) VALUES ('old', 1, 'exp', 'a', 'u', '1', 200, 3, 1, NULL)")
    conn.commit()
    conn.close()
    data = reads.labelled_rows(path, "exp", 30)
    assert data["latencies"] == {"a": [3.0]} and data["authors"] == {}
    assert not set(db.ADDED_COLUMNS) & {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(requests)")}
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(DataError, match=r"^no serving records in .*empty.db \(no requests table\); start the server"):
        reads.labelled_rows(empty, "exp", 30)
    assert reads.experiments(path, 30) == []  # no server recorded an experiment in it
