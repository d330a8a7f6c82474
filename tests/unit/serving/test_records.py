"""The serving records: append-only SQLite, feedback joins, Prometheus text."""

import json
import sqlite3

import pytest

from mlpipe.errors import DataError
from mlpipe.serving import records


def _record(i, variant="a", status=200, latency=12.0, predictions=None, version="1"):
    return {"request_id": f"r{i}", "ts": 1000.0 + i, "experiment": "exp", "variant": variant,
            "model_uri": "models:/m@champion", "model_version": version, "status": status, "latency_ms": latency,
            "rows": 1, "predictions": json.dumps({"predictions": predictions if predictions is not None else [1]})}


@pytest.fixture
def store(tmp_path):
    s = records.RecordStore(tmp_path / "r.db", flush_ms=50)
    yield s
    s.close()


def test_appended_records_are_written_and_cannot_be_changed(store, tmp_path):
    for i in range(5):
        store.append(_record(i))
    store.flush()
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE requests SET status = 500")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM requests")


def test_close_writes_what_is_still_queued(tmp_path):
    s = records.RecordStore(tmp_path / "q.db", flush_ms=60_000)
    for i in range(3):
        s.append(_record(i))
    s.close()
    assert sqlite3.connect(tmp_path / "q.db").execute("SELECT COUNT(*) FROM requests").fetchone() == (3,)


def test_feedback_joins_a_recorded_request_only(store, tmp_path):
    store.append(_record(1, predictions=[2]))
    assert store.add_feedback("r1", 2) is True
    assert store.add_feedback("nope", 1) is False
    data = records.labelled_rows(tmp_path / "r.db", "exp")
    assert data["pairs"] == {"a": [(2, 2)]}
    assert data["latencies"] == {"a": [12.0]}


def test_multi_row_requests_take_a_list_label(store, tmp_path):
    store.append(_record(1, predictions=[0, 1, 2]))
    store.add_feedback("r1", [0, 2, 2])
    assert records.labelled_rows(tmp_path / "r.db", "exp")["pairs"]["a"] == [(0, 0), (1, 2), (2, 2)]


def test_feedback_counts_for_the_bandit(store):
    store.append(_record(1, "a", predictions=[1]))
    store.append(_record(2, "a", predictions=[1]))
    store.append(_record(3, "b", predictions=[0]))
    store.add_feedback("r1", 1)
    store.add_feedback("r2", 0)
    store.add_feedback("r3", 0)
    assert store.feedback_counts("exp", ["a", "b"]) == ([1, 1], [1, 0])


def test_failed_requests_count_as_errors_not_latencies(store, tmp_path):
    store.append(_record(1))
    store.append(_record(2, status=400))
    store.flush()
    data = records.labelled_rows(tmp_path / "r.db", "exp")
    assert data["errors"] == {"a": 1} and len(data["latencies"]["a"]) == 1


def test_missing_records_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no serving records at"):
        records.labelled_rows(tmp_path / "none.db", "exp")


def test_prometheus_text_counts_and_histogram(store):
    store.append(_record(1, latency=3.0))
    store.append(_record(2, latency=30.0))
    store.append(_record(3, status=400, latency=1.0))
    store.append(_record(4, variant="b", latency=700.0, version="2"))
    text = records.prometheus(store.aggregates())
    assert 'mlpipe_requests_total{experiment="exp",variant="a",model_version="1",status="200"} 2' in text
    assert 'mlpipe_requests_total{experiment="exp",variant="a",model_version="1",status="400"} 1' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="a",model_version="1",le="0.005"} 2' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="a",model_version="1",le="0.05"} 3' in text
    assert 'mlpipe_request_latency_seconds_count{experiment="exp",variant="b",model_version="2"} 1' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="b",model_version="2",le="0.5"} 0' in text
    assert "# TYPE mlpipe_request_latency_seconds histogram" in text


def test_the_newest_server_of_an_experiment_names_its_control(tmp_path):
    path = tmp_path / "records.db"
    store = records.RecordStore(path, flush_ms=10)
    try:
        store.record_experiment("ab", [{"name": "a", "model_uri": "models:/m/1", "weight": 1.0}], "a")
        store.record_experiment("other", [{"name": "x", "model_uri": "models:/m/1", "weight": 1.0}], "x")
        store.record_experiment("ab", [{"name": "b", "model_uri": "models:/m/2", "weight": 1.0}], "b")
    finally:
        store.close()
    assert records.served_control(path, "ab") == "b"
    assert records.served_control(path, "other") == "x"
    assert records.served_control(path, "never") is None


def test_a_records_file_from_before_servers_recorded_their_control_still_reads(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("CREATE TABLE requests (id INTEGER)").connection.commit()
    assert records.served_control(path, "ab") is None


def test_a_records_file_from_before_authors_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    import sqlite3

    path = tmp_path / "v1.db"
    old = records.SQLITE_SCHEMA.replace(",\n    author TEXT NOT NULL DEFAULT '',\n    server TEXT NOT NULL DEFAULT ''", "")
    assert "author" not in old
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO requests (request_id, ts, experiment, variant, model_uri, model_version, status, "
                 "latency_ms, rows, predictions) VALUES ('old', 1, 'exp', 'a', 'u', '1', 200, 3, 1, NULL)")
    conn.commit()
    conn.close()
    store = records.RecordStore(path, flush_ms=10)
    try:
        store.append(_record(1) | {"author": "carol"})
    finally:
        store.close()
    data = records.labelled_rows(path, "exp")
    assert data["latencies"]["a"] == [3.0, 12.0] and data["authors"] == {"a": {"carol"}}
    rows = sqlite3.connect(path).execute("SELECT request_id, author, server FROM requests ORDER BY id").fetchall()
    assert rows[0] == ("old", "", "") and rows[1][:2] == ("r1", "carol") and rows[1][2].endswith(f":{__import__('os').getpid()}")


def test_a_database_url_is_shown_without_its_password():
    assert records.display("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert records.display("postgresql://u@h/db") == "postgresql://u@h/db"
    assert records.display("/tmp/r.db") == "/tmp/r.db"
    assert records.display("postgresql://u@h/db?sslmode=require&password=x") == \
        "postgresql://u@h/db?sslmode=require&password=***"


def test_a_failed_write_keeps_its_rows_and_writes_them_next_time(tmp_path):
    """The store refuses inserts for a while (a trigger, as a full disk or a lost database
    would): the rows stay pending, nothing is lost, and the next flush writes them in order."""
    import sqlite3

    path = tmp_path / "r.db"
    store = records.RecordStore(path, flush_ms=60_000)
    side = sqlite3.connect(path, isolation_level=None)
    side.executescript("CREATE TABLE block (x); INSERT INTO block VALUES (1);"
                       "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN (SELECT COUNT(*) FROM block) > 0 "
                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
    try:
        store.append(_record(1))
        with pytest.raises(sqlite3.DatabaseError, match="disk full"):
            store.flush()
        assert len(store.pending) == 1
        store.append(_record(2))
        side.execute("DELETE FROM block")
        store.flush()
        assert store.pending == []
    finally:
        store.close()
    ids = sqlite3.connect(path).execute("SELECT request_id FROM requests ORDER BY id").fetchall()
    assert ids == [("r1",), ("r2",)]


def test_an_old_records_file_is_read_as_it_is_and_an_empty_one_is_a_clear_error(tmp_path):
    """The report reads read-only: a file from before authors is not migrated, its arms have no
    author; a file without the tables says how to get records."""
    import sqlite3

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(records.SQLITE_SCHEMA.replace(",\n    author TEXT NOT NULL DEFAULT '',\n    server TEXT NOT NULL "
                                                     "DEFAULT ''", ""))
    conn.execute("INSERT INTO requests (request_id, ts, experiment, variant, model_uri, model_version, status, "
                 "latency_ms, rows, predictions) VALUES ('old', 1, 'exp', 'a', 'u', '1', 200, 3, 1, NULL)")
    conn.commit()
    conn.close()
    data = records.labelled_rows(path, "exp")
    assert data["latencies"] == {"a": [3.0]} and data["authors"] == {}
    assert "author" not in {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(requests)")}
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(DataError, match=r"^no serving records in .*empty.db \(no requests table\); start the server"):
        records.labelled_rows(empty, "exp")
    assert records.experiments(path) == []  # no server recorded an experiment in it
