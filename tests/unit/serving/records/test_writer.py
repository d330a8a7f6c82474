"""mlpipe/serving/records/writer.py: the server's writer thread, feedback, the bandit's counts, Prometheus text."""

import sqlite3

import pytest

from mlpipe.serving.records import reads, writer


def test_close_writes_what_is_still_queued(tmp_path, record):
    s = writer.RecordStore(tmp_path / "q.db", flush_ms=60_000, timeout_s=30)
    for i in range(3):
        s.append(record(i))
    s.close()
    assert sqlite3.connect(tmp_path / "q.db").execute("SELECT COUNT(*) FROM requests").fetchone() == (3,)


def test_feedback_joins_a_recorded_request_only(store, tmp_path, record):
    store.append(record(1, predictions=[2]))
    seen = []
    assert store.add_feedback("r1", lambda rows: seen.append(rows) or 2) == "recorded"
    assert seen == [1]  # the label set is made for the request's row count
    assert store.add_feedback("r1", lambda rows: 3) == "answered"  # once per request
    assert store.add_feedback("nope", lambda rows: 1) == "unknown"
    data = reads.labelled_rows(tmp_path / "r.db", "exp", 30)
    assert data["pairs"] == {"a": [(2, 2)]}
    assert data["latencies"] == {"a": [12.0]}


def test_multi_row_requests_take_a_list_label(store, tmp_path, record):
    store.append(record(1, predictions=[0, 1, 2]))
    store.add_feedback("r1", lambda rows: [0, 2, 2])
    assert reads.labelled_rows(tmp_path / "r.db", "exp", 30)["pairs"]["a"] == [(0, 0), (1, 2), (2, 2)]


def test_each_labelled_row_has_its_key_and_distinct_keeps_a_keys_first_label(store, tmp_path, record):
    """serve.ab.repeats=once: the report counts a row sent again once, with the label that came first;
    rows without a key (CSV, an older store) all count."""
    store.append(record(1, predictions=[0, 1]) | {"row_keys": "k1,k2"})
    store.append(record(2, predictions=[0]) | {"row_keys": "k1"})
    store.append(record(3, predictions=[2]))
    store.append(record(4, predictions=[2]))
    for request_id, label in (("r2", 1), ("r1", [0, 1]), ("r3", 2), ("r4", 0)):
        store.add_feedback(request_id, lambda rows, label=label: label)
    stream = reads.labelled_rows(tmp_path / "r.db", "exp", 30)["stream"]
    assert [(p, t, k) for p, t, _, k in stream["a"]] == [(0, 1, "k1"), (0, 0, "k1"), (1, 1, "k2"), (2, 2, ""), (2, 0, "")]
    kept, dropped = reads.distinct(stream)
    assert [(p, t, k) for p, t, _, k in kept["a"]] == [(0, 1, "k1"), (1, 1, "k2"), (2, 2, ""), (2, 0, "")]
    assert dropped == {"a": 1}


def test_feedback_counts_for_the_bandit(store, record):
    store.append(record(1, "a", predictions=[1]))
    store.append(record(2, "a", predictions=[1]))
    store.append(record(3, "b", predictions=[0]))
    store.add_feedback("r1", lambda rows: 1)
    store.add_feedback("r2", lambda rows: 0)
    store.add_feedback("r3", lambda rows: 0)
    assert store.feedback_counts("exp", ["a", "b"]) == ([1, 1], [1, 0])


def test_prometheus_text_counts_and_histogram(store, record):
    store.append(record(1, latency=3.0))
    store.append(record(2, latency=30.0))
    store.append(record(3, status=400, latency=1.0))
    store.append(record(4, variant="b", latency=700.0, version="2"))
    text = writer.prometheus(store.aggregates())
    assert 'mlpipe_requests_total{experiment="exp",variant="a",model_version="1",status="200"} 2' in text
    assert 'mlpipe_requests_total{experiment="exp",variant="a",model_version="1",status="400"} 1' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="a",model_version="1",le="0.005"} 2' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="a",model_version="1",le="0.05"} 3' in text
    assert 'mlpipe_request_latency_seconds_count{experiment="exp",variant="b",model_version="2"} 1' in text
    assert 'mlpipe_request_latency_seconds_bucket{experiment="exp",variant="b",model_version="2",le="0.5"} 0' in text
    assert "# TYPE mlpipe_request_latency_seconds histogram" in text


def test_the_newest_server_of_an_experiment_names_its_control(tmp_path):
    path = tmp_path / "records.db"
    store = writer.RecordStore(path, flush_ms=10, timeout_s=30)
    try:
        store.record_experiment("ab", [{"name": "a", "model_uri": "models:/m/1", "weight": 1.0}], "a")
        store.record_experiment("other", [{"name": "x", "model_uri": "models:/m/1", "weight": 1.0}], "x")
        store.record_experiment("ab", [{"name": "b", "model_uri": "models:/m/2", "weight": 1.0}], "b")
    finally:
        store.close()
    assert reads.served_control(path, "ab", 30) == "b"
    assert reads.served_control(path, "other", 30) == "x"
    assert reads.served_control(path, "never", 30) is None


def test_a_failed_write_keeps_its_rows_and_writes_them_next_time(tmp_path, record):
    """The store refuses inserts for a while (a trigger, as a full disk or a lost database
    would): the rows stay pending, nothing is lost, and the next flush writes them in order."""
    import sqlite3

    path = tmp_path / "r.db"
    store = writer.RecordStore(path, flush_ms=60_000, timeout_s=30)
    side = sqlite3.connect(path, isolation_level=None)
    side.executescript("CREATE TABLE block (x); INSERT INTO block VALUES (1);"
                       "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN (SELECT COUNT(*) FROM block) > 0 "
                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
    try:
        store.append(record(1))
        with pytest.raises(sqlite3.DatabaseError, match="disk full"):
            store.flush()
        assert len(store.pending) == 1
        store.append(record(2))
        side.execute("DELETE FROM block")
        store.flush()
        assert store.pending == []
    finally:
        store.close()
    ids = sqlite3.connect(path).execute("SELECT request_id FROM requests ORDER BY id").fetchall()
    assert ids == [("r1",), ("r2",)]
