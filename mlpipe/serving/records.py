"""The serving records: every request and every feedback label, in an append-only store.

SQLite by default (one file, one server and its workers); a `postgresql://` URL in
`serve.records` puts them in PostgreSQL, so that several server processes on several machines
write one record set. The server appends through `RecordStore` (a writer thread commits in
small batches, so a request never waits for the disk); triggers refuse UPDATE and DELETE in
both stores, so nothing recorded can be rewritten. `/metrics` and the A/B report read the same
store, so every worker process and every restart see one history. Each request record carries
its author (the team member whose model answered, else empty) and the server process
(host:pid) that answered it.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from mlpipe.errors import one_line

_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS requests (
    id {pk},
    request_id TEXT NOT NULL UNIQUE,
    ts {real} NOT NULL,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    model_uri TEXT NOT NULL,
    model_version TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms {real} NOT NULL,
    rows INTEGER NOT NULL,
    predictions TEXT,
    author TEXT NOT NULL DEFAULT '',
    server TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS requests_experiment ON requests (experiment, variant);
CREATE TABLE IF NOT EXISTS feedback (
    id {pk},
    request_id TEXT NOT NULL,
    ts {real} NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS experiments (
    id {pk},
    ts {real} NOT NULL,
    experiment TEXT NOT NULL,
    variants TEXT NOT NULL,
    control TEXT NOT NULL
);
"""
SQLITE_SCHEMA = _TABLES_DDL.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL") + "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_append_only_{k} BEFORE {op} ON {t}\n"
    "    BEGIN SELECT RAISE(ABORT, 'serving records are append-only'); END;\n"
    for t in ("requests", "feedback") for k, op in (("u", "UPDATE"), ("d", "DELETE")))
POSTGRES_SCHEMA = _TABLES_DDL.format(pk="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION") + """
CREATE OR REPLACE FUNCTION mlpipe_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'serving records are append-only'; END $$;
CREATE OR REPLACE TRIGGER requests_append_only BEFORE UPDATE OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION mlpipe_append_only();
CREATE OR REPLACE TRIGGER feedback_append_only BEFORE UPDATE OR DELETE ON feedback
    FOR EACH ROW EXECUTE FUNCTION mlpipe_append_only();
"""
# Columns added after the first release: an older SQLite file gains them on open.
ADDED_COLUMNS = {"author": "TEXT NOT NULL DEFAULT ''", "server": "TEXT NOT NULL DEFAULT ''"}
COLUMNS = ("request_id", "ts", "experiment", "variant", "model_uri", "model_version", "status", "latency_ms",
           "rows", "predictions", "author", "server")
TABLES = frozenset({"requests", "feedback", "experiments"})
INSERT_REQUEST = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Latency histogram bucket bounds (seconds), as Prometheus clients use by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def display(target: str | Path) -> str:
    """The store as it may be printed: a URL without its password."""
    if not is_postgres(target):
        return str(target)
    import re

    parts = urlsplit(str(target))
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@") if parts.password is not None else parts.netloc
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


class Db:
    """One connection to either store, with SQLite's `?` placeholders in every statement."""

    def __init__(self, target: str | Path, read_only: bool = False):
        self.postgres = is_postgres(target)
        if self.postgres:
            import psycopg

            url = str(target).replace("postgresql+psycopg://", "postgresql://")
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=30)
            if read_only:
                self.conn.execute("SET default_transaction_read_only = on")
        elif read_only:
            self.conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self.conn.execute(self._sql(sql), tuple(params))
        return list(cur.fetchall()) if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self.conn.transaction():
                yield
        else:
            self.conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def tables(db: Db) -> set[str]:
    """Which of the store's tables exist."""
    if db.postgres:
        rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    else:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows} & TABLES


def columns(db: Db, table: str) -> set[str]:
    if db.postgres:
        rows = db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                          "AND table_name = ?", (table,))
        return {name for (name,) in rows}
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def connect(target: str | Path) -> Db:
    """The store, its tables created (and older SQLite files given the newer columns). On
    PostgreSQL, tables that exist with every column are used as they are: a role that may write
    but not create or alter tables (not their owner) can serve."""
    db = Db(target)
    if db.postgres:
        if tables(db) == TABLES and set(ADDED_COLUMNS) <= columns(db, "requests"):
            return db
        with db.transaction():  # two workers starting at once: one creates, the other waits
            db.execute("SELECT pg_advisory_xact_lock(7104220913)")
            db.conn.execute(POSTGRES_SCHEMA)
    else:
        db.conn.executescript(SQLITE_SCHEMA)
        have = columns(db, "requests")
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    return db


class RecordStore:
    """Appends request records from any thread; one writer thread commits them every
    `flush_ms` (or sooner when `flush()` is called). `close()` writes what is still queued."""

    def __init__(self, target: str | Path, flush_ms: float = 200, shared: bool = False):
        self.target = target
        self.server = f"{socket.gethostname()}:{os.getpid()}"  # this process, not its parent's
        self.db = connect(target)
        self.lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.pending: list[tuple] = []  # rows a failed write took off the queue: written first next time
        self.flush_s = flush_ms / 1000
        # other processes write here too (serve.workers > 1, or PostgreSQL): feedback may arrive
        # for a request one of them answered and has not written yet
        self.feedback_wait_s = 2 * self.flush_s + 0.25 if shared or is_postgres(target) else 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._writer, name="mlpipe-records", daemon=True)
        self.thread.start()

    def record_experiment(self, experiment: str, variants: Sequence[dict[str, Any]], control: str) -> None:
        """What a server starts serving for `experiment`: its variants (name, model URI, weight)
        and the control the A/B report compares them with."""
        with self.lock:
            self.db.execute("INSERT INTO experiments (ts, experiment, variants, control) VALUES (?, ?, ?, ?)",
                            (time.time(), experiment, json.dumps(list(variants)), control))

    def append(self, record: dict[str, Any]) -> None:
        self.queue.put(tuple(record.get(c, "") if c in ADDED_COLUMNS else record[c] for c in COLUMNS[:-1])
                       + (self.server,))

    def _drain(self) -> None:
        """Writes what is queued in one transaction. A failed write keeps its rows (`pending`,
        written first next time) and reopens a PostgreSQL connection that broke."""
        with self.lock:
            rows, self.pending = self.pending, []
            while True:
                try:
                    rows.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if not rows:
                return
            try:
                with self.db.transaction():
                    self.db.executemany(INSERT_REQUEST, rows)
            except Exception:
                self.pending = rows
                if self.db.postgres and (self.db.conn.closed or self.db.conn.broken):
                    try:
                        self.db = Db(self.target)
                    except Exception:  # noqa: BLE001 - still down: the next flush tries again
                        pass
                raise

    def _writer(self) -> None:
        while True:
            stopping = self._stop.wait(self.flush_s)
            try:
                self._drain()
            except Exception as exc:  # noqa: BLE001 - a lost connection must not end the writer
                import sys

                print(f"[mlpipe] serve: cannot write {len(self.pending)} records to {display(self.target)} "
                      f"({one_line(exc)}); {'they are lost' if stopping else 'retrying'}", file=sys.stderr,
                      flush=True)
            if stopping:
                return

    def flush(self) -> None:
        self._drain()

    def add_feedback(self, request_id: str, label: Any) -> bool:
        """Joins a label to a recorded request; False when no such request was recorded. Another
        process writing the same store may have answered the request and not yet written it: its
        writer commits within `flush_ms`, so the lookup is then retried for two of those
        intervals plus 0.25 s (`feedback_wait_s`)."""
        self.flush()
        deadline = time.monotonic() + self.feedback_wait_s
        while True:
            with self.lock:
                if self.db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)):
                    self.db.execute("INSERT INTO feedback (request_id, ts, label) VALUES (?, ?, ?)",
                                    (request_id, time.time(), json.dumps(label)))
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(min(0.02, self.flush_s))

    def feedback_counts(self, experiment: str, variants: Sequence[str]) -> tuple[list[int], list[int]]:
        """Correct and wrong labelled rows per variant (label equal to the prediction), for bandits."""
        self.flush()
        with self.lock:
            pairs = labelled_pairs(self.db, experiment)
        good = [sum(p == t for p, t in pairs.get(name, [])) for name in variants]
        return good, [len(pairs.get(name, [])) - g for name, g in zip(variants, good)]

    def aggregates(self) -> list[tuple]:
        """(experiment, variant, model_version, status, count, latency sum s, bucket counts...)."""
        self.flush()
        buckets = ", ".join(f"SUM(CASE WHEN latency_ms <= {b * 1000} THEN 1 ELSE 0 END)" for b in BUCKETS)
        with self.lock:
            return self.db.execute(
                f"SELECT experiment, variant, model_version, status, COUNT(*), SUM(latency_ms) / 1000.0, {buckets} "
                "FROM requests GROUP BY experiment, variant, model_version, status "
                "ORDER BY experiment, variant, model_version, status")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        with self.lock:
            self.db.close()


def labelled_pairs(db: Db, experiment: str) -> dict[str, list[tuple[Any, Any]]]:
    """Per variant, (prediction, label) for every labelled row of its answered requests."""
    return _pairs(labelled_stream(db, experiment))


def _pairs(stream: dict[str, list[tuple[Any, Any, float]]]) -> dict[str, list[tuple[Any, Any]]]:
    return {variant: [(p, t) for p, t, _ in rows] for variant, rows in stream.items()}


def labelled_stream(db: Db, experiment: str) -> dict[str, list[tuple[Any, Any, float]]]:
    """Per variant, (prediction, label, feedback time) of every labelled row, in the order the
    labels arrived."""
    rows = db.execute(
        "SELECT r.variant, r.predictions, f.label, f.ts FROM requests r JOIN feedback f ON f.request_id = r.request_id "
        "WHERE r.experiment = ? AND r.status = 200 ORDER BY f.id", (experiment,))
    out: dict[str, list[tuple[Any, Any, float]]] = {}
    for variant, predictions, label, ts in rows:
        preds, truth = _aligned(predictions, label)
        out.setdefault(variant, []).extend((p, t, float(ts)) for p, t in zip(preds, truth))
    return out


def _aligned(predictions: str | None, label: str) -> tuple[list, list]:
    """Predictions and labels of one request as two equal-length lists (a scalar label = 1 row)."""
    preds = json.loads(predictions) if predictions else []
    if isinstance(preds, dict):  # the server stores MLflow's whole answer, {"predictions": [...]}
        preds = preds.get("predictions", [])
    truth = json.loads(label)
    truth = truth if isinstance(truth, list) else [truth]
    preds = [p[0] if isinstance(p, list) and len(p) == 1 else p for p in preds]
    n = min(len(preds), len(truth))
    return preds[:n], truth[:n]


@contextmanager
def read_only(target: str | Path) -> Iterator[Db]:
    """The store for reading; a missing file or database, or one no server has written to, is a
    DataError that says how to get one."""
    from mlpipe.errors import DataError

    how = "start the server (mlflow run . -e serve) and send requests first, or set serve.records to the store " \
          "the server wrote"
    if not is_postgres(target) and not Path(target).is_file():
        raise DataError(f"no serving records at {target}; {how}")
    try:
        db = Db(target, read_only=True)
    except Exception as exc:  # noqa: BLE001 - sqlite3 and psycopg errors alike
        raise DataError(f"cannot open the serving records at {display(target)}: {one_line(exc)}; {how}") from None
    try:
        if "requests" not in tables(db):
            raise DataError(f"no serving records in {display(target)} (no requests table); {how}")
        yield db
    finally:
        db.close()


def served_control(target: str | Path, experiment: str) -> str | None:
    """The control of the newest server started for `experiment` (None: no server recorded one)."""
    with read_only(target) as db:
        if "experiments" not in tables(db):  # a records file from before servers recorded their experiment
            return None
        rows = db.execute("SELECT control FROM experiments WHERE experiment = ? ORDER BY id DESC LIMIT 1",
                          (experiment,))
    return rows[0][0] if rows else None


def experiments(target: str | Path) -> list[dict[str, Any]]:
    """Every A/B experiment a server started: name, first and last start, its latest variants and
    control, requests and labelled requests so far."""
    with read_only(target) as db:
        if tables(db) != TABLES:
            return []
        started = db.execute("SELECT experiment, MIN(ts), MAX(ts) FROM experiments GROUP BY experiment")
        latest = {e: (v, c) for e, v, c in db.execute("SELECT experiment, variants, control FROM experiments "
                                                     "ORDER BY id")}
        counts = dict(db.execute("SELECT experiment, COUNT(*) FROM requests WHERE status = 200 GROUP BY experiment"))
        labelled = dict(db.execute("SELECT r.experiment, COUNT(DISTINCT f.request_id) FROM requests r JOIN feedback f "
                                   "ON f.request_id = r.request_id GROUP BY r.experiment"))
    return [{"experiment": e, "first_start": float(first), "last_start": float(last),
             "variants": json.loads(latest[e][0]), "control": latest[e][1], "requests": int(counts.get(e, 0)),
             "labelled_requests": int(labelled.get(e, 0))} for e, first, last in sorted(started, key=lambda r: r[1])]


def served_models(target: str | Path, experiment: str) -> dict[str, tuple[str, str]]:
    """Per arm, the (model_uri, model_version) of its most recent answered request."""
    with read_only(target) as db:
        rows = db.execute("SELECT variant, model_uri, model_version FROM requests WHERE experiment = ? "
                          "AND status = 200 ORDER BY id", (experiment,))
    return {variant: (uri, version) for variant, uri, version in rows}


def labelled_rows(target: str | Path, experiment: str) -> dict[str, Any]:
    """What the A/B report reads: per variant, the latencies of every answered request, the
    versions and authors that answered, and per labelled row (prediction, label, time) in the
    order the labels arrived."""
    with read_only(target) as db:
        author = "author" if "author" in columns(db, "requests") else "''"  # a file from before authors
        lat = db.execute(f"SELECT variant, latency_ms, model_version, {author} FROM requests "
                         "WHERE experiment = ? AND status = 200 ORDER BY id", (experiment,))
        stream = labelled_stream(db, experiment) if "feedback" in tables(db) else {}
        errors = db.execute("SELECT variant, COUNT(*) FROM requests WHERE experiment = ? AND status != 200 "
                            "GROUP BY variant", (experiment,))
    out: dict[str, Any] = {"latencies": {}, "versions": {}, "authors": {}, "errors": dict(errors),
                           "pairs": _pairs(stream),
                           "stream": stream}
    for variant, latency, version, author in lat:
        out["latencies"].setdefault(variant, []).append(float(latency))
        out["versions"].setdefault(variant, set()).add(version)
        if author:
            out["authors"].setdefault(variant, set()).add(author)
    return out


def prometheus(aggregates: Sequence[tuple]) -> str:
    """Prometheus text exposition: request counts by variant, version and status, and a latency
    histogram per variant and version."""
    lines = ["# HELP mlpipe_requests_total Requests answered, by variant, model version and HTTP status.",
             "# TYPE mlpipe_requests_total counter"]
    hist: dict[tuple, list[float]] = {}
    for experiment, variant, version, status, count, total_s, *buckets in aggregates:
        labels = f'experiment="{_esc(experiment)}",variant="{_esc(variant)}",model_version="{_esc(version)}"'
        lines.append(f'mlpipe_requests_total{{{labels},status="{status}"}} {count}')
        acc = hist.setdefault((labels,), [0.0] * (len(BUCKETS) + 2))
        for i, b in enumerate(buckets):
            acc[i] += b or 0
        acc[-2] += count
        acc[-1] += total_s or 0.0
    lines += ["# HELP mlpipe_request_latency_seconds Time from request received to response ready.",
              "# TYPE mlpipe_request_latency_seconds histogram"]
    for (labels,), acc in hist.items():
        for bound, n in zip(BUCKETS, acc):
            lines.append(f'mlpipe_request_latency_seconds_bucket{{{labels},le="{bound}"}} {int(n)}')
        lines.append(f'mlpipe_request_latency_seconds_bucket{{{labels},le="+Inf"}} {int(acc[-2])}')
        lines.append(f"mlpipe_request_latency_seconds_sum{{{labels}}} {acc[-1]:.6f}")
        lines.append(f"mlpipe_request_latency_seconds_count{{{labels}}} {int(acc[-2])}")
    return "\n".join(lines) + "\n"


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
