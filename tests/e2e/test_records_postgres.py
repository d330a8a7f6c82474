"""Serving records in PostgreSQL: the store itself (append-only, feedback joins, what the A/B
report reads), then `mlflow run . -e serve` with two worker processes writing one record set
into PostgreSQL, and the A/B report reading it back. Skipped, with the reason, where there is no
cluster."""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import urlsplit

import pytest

import postgres
from services import free_port, wait_group_gone
from support import Store, error_lines
from test_serving import MODEL, Server, http, records_body, registered  # noqa: F401 - the fixture

pytestmark = postgres.skip_without_cluster()
database = postgres.module_database("mlpipe_records_test")


def _no_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()


def test_the_store_in_postgresql_is_append_only_and_joins_feedback(database, monkeypatch):
    import psycopg

    from mlpipe.serving.records import reads, writer

    store = writer.RecordStore(database.url, flush_ms=20, timeout_s=30)
    try:
        for i, variant in enumerate("aab"):
            store.append({"request_id": f"pg{i}", "ts": 1000.0 + i, "experiment": "pg", "variant": variant,
                          "model_uri": "models:/m.bob@champion", "model_version": "3", "status": 200,
                          "latency_ms": 5.0, "rows": 1, "predictions": json.dumps({"predictions": [i]}),
                          "author": "bob"})
        store.record_experiment("pg", [{"name": "a"}, {"name": "b"}], "a")
        assert store.add_feedback("pg0", lambda rows: 0) == store.add_feedback("pg2", lambda rows: 1) == "recorded"
        assert store.add_feedback("pg0", lambda rows: 1) == "answered"  # one label set per request (unique index)
        assert store.add_feedback("nope", lambda rows: 1) == "unknown"
        assert store.aggregates()[0][:5] == ("pg", "a", "3", 200, 2)
    finally:
        store.close()
    data = reads.labelled_rows(database.url, "pg", 30)
    assert data["pairs"] == {"a": [(0, 0)], "b": [(2, 1)]}
    assert data["authors"] == {"a": {"bob"}, "b": {"bob"}}
    assert reads.served_control(database.url, "pg", 30) == "a"
    with psycopg.connect(database.url, autocommit=True) as conn:
        for sql in ("UPDATE requests SET status = 500", "DELETE FROM feedback"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
    assert database.query("SELECT COUNT(*) FROM requests WHERE experiment = 'pg'") == [(3,)]


def test_two_workers_write_one_record_set_that_the_report_reads(store: Store, registered, database,  # noqa: F811
                                                                 tmp_path, monkeypatch):
    """serve.workers=2, serve.records=postgresql://... (the password in PGPASSWORD): 60 requests,
    each on a new connection, answered by both worker processes; every one is in PostgreSQL with
    the process that answered it, and the A/B report reads the labels back from there."""
    url = _no_password(database.url)
    monkeypatch.setenv("PGPASSWORD", database.password)
    store.env["PGPASSWORD"] = database.password
    port = free_port()
    overrides = (f"serve.port={port} serve.workers=2 serve.experiment=pg2 serve.records={url} "
                 "serve.records_flush_ms=50")
    server = Server(store, tmp_path / "server.log", ["run", ".", "-e", "serve", "--env-manager", "local",
                                                    "-P", f"overrides={overrides}"], port)
    rows = registered["rows"]
    try:
        for i in range(60):
            status, headers, payload = http(f"{server.url}/invocations", records_body(rows.iloc[[i % len(rows)]]))
            assert status == 200, payload
            prediction = json.loads(payload)["predictions"][0]
            assert http(f"{server.url}/feedback", json.dumps({"request_id": headers["X-Request-Id"],
                                                             "token": headers["X-Feedback-Token"],
                                                             "label": prediction}).encode())[0] == 200
    finally:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=60)
        wait_group_gone(server.proc.pid, timeout=60)
    log = (tmp_path / "server.log").read_text()
    assert database.password not in log
    assert database.query("SELECT COUNT(*), COUNT(DISTINCT server) FROM requests WHERE experiment = 'pg2'") == [(60, 2)]
    assert database.query("SELECT COUNT(*) FROM feedback f JOIN requests r ON r.request_id = f.request_id "
                          "WHERE r.experiment = 'pg2'") == [(60,)]
    # every request row's key is kept: 60 requests over the distinct rows, each counted once by the report
    distinct = len(rows.head(60).drop_duplicates())
    assert database.query("SELECT COUNT(DISTINCT row_keys) FROM requests WHERE experiment = 'pg2'") == [(distinct,)]
    result = store.mlflow_run("-P", f"overrides=serve.mode=report serve.experiment=pg2 serve.records={url} "
                                    "serve.ab.min_samples=10", entry="serve")
    assert result.returncode == 0, result.output[-3000:]
    assert "A/B experiment pg2: " in result.stdout
    run = store.newest("tags.`ab.winner` = 'none'")
    assert run.data.metrics["ab.default.labelled"] == distinct and run.data.metrics["ab.default.accuracy"] == 1.0
    assert f"left out: default {60 - distinct}" in result.stdout


def test_a_password_in_the_records_url_is_refused_before_anything_runs(store: Store, database):
    result = store.mlflow_run("-P", f"overrides=serve.mode=report serve.records={database.url}", entry="serve")
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert lines and "serve.records holds a password" in lines[-1] and "PGPASSWORD" in lines[-1], result.stderr[-2000:]
    assert database.password not in lines[-1]  # (`mlflow run` itself echoes the command it was given)
