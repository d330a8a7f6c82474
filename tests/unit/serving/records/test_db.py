"""mlpipe/serving/records/db.py: the tables are append-only, an older file gains the new columns, a URL is shown without its password."""

import sqlite3

import pytest

from mlpipe.serving.records import db, reads, writer


def test_appended_records_are_written_and_cannot_be_changed(store, tmp_path, record):
    for i in range(5):
        store.append(record(i))
    store.flush()
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE requests SET status = 500")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM requests")


def test_a_records_file_from_before_authors_gains_the_new_columns_and_keeps_its_rows(tmp_path, record, first_schema):
    import sqlite3

    path = tmp_path / "v1.db"
    old = first_schema
    assert not any(column in old for column in db.ADDED_COLUMNS)
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO requests (request_id, ts, experiment, variant, model_uri, model_version, status, "
                 "latency_ms, rows, predictions) VALUES ('old', 1, 'exp', 'a', 'u', '1', 200, 3, 1, NULL)")
    conn.commit()
    conn.close()
    store = writer.RecordStore(path, flush_ms=10, timeout_s=30)
    try:
        store.append(record(1) | {"author": "carol", "row_keys": "k1"})
    finally:
        store.close()
    data = reads.labelled_rows(path, "exp", 30)
    assert data["latencies"]["a"] == [3.0, 12.0] and data["authors"] == {"a": {"carol"}}
    rows = sqlite3.connect(path).execute("SELECT request_id, author, row_keys, server FROM requests ORDER BY id"
                                         ).fetchall()
    assert rows[0] == ("old", "", "", "") and rows[1][:3] == ("r1", "carol", "k1") and rows[1][3].endswith(f":{__import__('os').getpid()}")


def test_a_database_url_is_shown_without_its_password():
    assert db.display("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert db.display("postgresql://u@h/db") == "postgresql://u@h/db"
    assert db.display("/tmp/r.db") == "/tmp/r.db"
    assert db.display("postgresql://u@h/db?sslmode=require&password=x") == \
        "postgresql://u@h/db?sslmode=require&password=***"


def test_the_records_timeout_bounds_the_wait_for_another_writer(tmp_path):
    """serve.records_timeout_s reaches SQLite: a writer that holds the file is waited for that long."""
    import threading
    import time

    path = tmp_path / "r.db"
    db.connect(path, 5).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.connect(path, 0.3).execute("INSERT INTO feedback (request_id, ts, label) VALUES ('x', 1, '1')")
    assert 0.25 < time.monotonic() - started < 3
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    db.connect(path, 10).execute("INSERT INTO feedback (request_id, ts, label) VALUES ('x', 1, '1')")  # waited
    holder.close()
