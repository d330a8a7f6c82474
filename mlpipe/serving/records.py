"""The serving records: every request and every feedback label, in an append-only SQLite file.

The server appends through `RecordStore` (a writer thread commits in small batches, so a
request never waits for the disk); triggers refuse UPDATE and DELETE, so nothing recorded
can be rewritten. `/metrics` and the A/B report read the same file, so every worker process
and every restart see one history.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    model_uri TEXT NOT NULL,
    model_version TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    rows INTEGER NOT NULL,
    predictions TEXT
);
CREATE INDEX IF NOT EXISTS requests_experiment ON requests (experiment, variant);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    experiment TEXT NOT NULL,
    variants TEXT NOT NULL,
    control TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS requests_append_only_u BEFORE UPDATE ON requests
    BEGIN SELECT RAISE(ABORT, 'serving records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS requests_append_only_d BEFORE DELETE ON requests
    BEGIN SELECT RAISE(ABORT, 'serving records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_append_only_u BEFORE UPDATE ON feedback
    BEGIN SELECT RAISE(ABORT, 'serving records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_append_only_d BEFORE DELETE ON feedback
    BEGIN SELECT RAISE(ABORT, 'serving records are append-only'); END;
"""
COLUMNS = ("request_id", "ts", "experiment", "variant", "model_uri", "model_version", "status", "latency_ms",
           "rows", "predictions")
# Latency histogram bucket bounds (seconds), as Prometheus clients use by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class RecordStore:
    """Appends request records from any thread; one writer thread commits them every
    `flush_ms` (or sooner when `flush()` is called). `close()` writes what is still queued."""

    def __init__(self, path: str | Path, flush_ms: float = 200):
        self.path = Path(path)
        self.conn = connect(self.path)
        self.lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.flush_s = flush_ms / 1000
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._writer, name="mlpipe-records", daemon=True)
        self.thread.start()

    def record_experiment(self, experiment: str, variants: Sequence[dict[str, Any]], control: str) -> None:
        """What a server starts serving for `experiment`: its variants (name, model URI, weight)
        and the control the A/B report compares them with."""
        import json

        with self.lock:
            self.conn.execute("INSERT INTO experiments (ts, experiment, variants, control) VALUES (?, ?, ?, ?)",
                              (time.time(), experiment, json.dumps(list(variants)), control))

    def append(self, record: dict[str, Any]) -> None:
        self.queue.put(tuple(record[c] for c in COLUMNS))

    def _drain(self) -> None:
        rows = []
        while True:
            try:
                rows.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if rows:
            with self.lock:
                self.conn.execute("BEGIN")
                self.conn.executemany(
                    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
                self.conn.execute("COMMIT")

    def _writer(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._drain()
        self._drain()

    def flush(self) -> None:
        self._drain()

    def add_feedback(self, request_id: str, label: Any) -> bool:
        """Joins a label to a recorded request; False when no such request was recorded."""
        self.flush()
        with self.lock:
            found = self.conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            if not found:
                return False
            self.conn.execute("INSERT INTO feedback (request_id, ts, label) VALUES (?, ?, ?)",
                              (request_id, time.time(), json.dumps(label)))
        return True

    def feedback_counts(self, experiment: str, variants: Sequence[str]) -> tuple[list[int], list[int]]:
        """Correct and wrong labelled rows per variant (label equal to the prediction), for bandits."""
        self.flush()
        with self.lock:
            pairs = labelled_pairs(self.conn, experiment)
        good = [sum(p == t for p, t in pairs.get(name, [])) for name in variants]
        return good, [len(pairs.get(name, [])) - g for name, g in zip(variants, good)]

    def aggregates(self) -> list[tuple]:
        """(experiment, variant, model_version, status, count, latency sum s, bucket counts...)."""
        self.flush()
        buckets = ", ".join(f"SUM(latency_ms <= {b * 1000})" for b in BUCKETS)
        with self.lock:
            return self.conn.execute(
                f"SELECT experiment, variant, model_version, status, COUNT(*), SUM(latency_ms) / 1000.0, {buckets} "
                "FROM requests GROUP BY experiment, variant, model_version, status "
                "ORDER BY experiment, variant, model_version, status").fetchall()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        with self.lock:
            self.conn.close()


def labelled_pairs(conn: sqlite3.Connection, experiment: str) -> dict[str, list[tuple[Any, Any]]]:
    """Per variant, (prediction, label) for every labelled row of its answered requests."""
    rows = conn.execute(
        "SELECT r.variant, r.predictions, f.label FROM requests r JOIN feedback f ON f.request_id = r.request_id "
        "WHERE r.experiment = ? AND r.status = 200 ORDER BY f.id", (experiment,)).fetchall()
    out: dict[str, list[tuple[Any, Any]]] = {}
    for variant, predictions, label in rows:
        out.setdefault(variant, []).extend(zip(*_aligned(predictions, label)))
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


def read_only(path: str | Path) -> sqlite3.Connection:
    """The records file for reading; a missing file is a DataError that says how to get one."""
    path = Path(path)
    if not path.is_file():
        from mlpipe.errors import DataError

        raise DataError(f"no serving records at {path}; start the server (mlflow run . -e serve) and send "
                        "requests first, or set serve.records to the file the server wrote")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def served_control(path: str | Path, experiment: str) -> str | None:
    """The control of the newest server started for `experiment` (None: no server recorded one)."""
    conn = read_only(path)
    try:
        row = conn.execute("SELECT control FROM experiments WHERE experiment = ? ORDER BY id DESC LIMIT 1",
                           (experiment,)).fetchone()
    except sqlite3.OperationalError:  # a records file from before servers recorded their experiment
        return None
    finally:
        conn.close()
    return row[0] if row else None


def served_models(path: str | Path, experiment: str) -> dict[str, tuple[str, str]]:
    """Per arm, the (model_uri, model_version) of its most recent answered request."""
    conn = read_only(path)
    try:
        rows = conn.execute("SELECT variant, model_uri, model_version FROM requests WHERE experiment = ? "
                            "AND status = 200 ORDER BY id", (experiment,)).fetchall()
    finally:
        conn.close()
    return {variant: (uri, version) for variant, uri, version in rows}


def labelled_rows(path: str | Path, experiment: str) -> dict[str, Any]:
    """What the A/B report reads: per variant, the latencies of every answered request and,
    per labelled row, (prediction, label) pairs."""
    conn = read_only(path)
    try:
        lat = conn.execute("SELECT variant, latency_ms, model_version FROM requests "
                           "WHERE experiment = ? AND status = 200 ORDER BY id", (experiment,)).fetchall()
        pairs = labelled_pairs(conn, experiment)
        errors = conn.execute("SELECT variant, COUNT(*) FROM requests WHERE experiment = ? AND status != 200 "
                              "GROUP BY variant", (experiment,)).fetchall()
    finally:
        conn.close()
    out: dict[str, Any] = {"latencies": {}, "pairs": pairs, "versions": {}, "errors": dict(errors)}
    for variant, latency, version in lat:
        out["latencies"].setdefault(variant, []).append(latency)
        out["versions"].setdefault(variant, set()).add(version)
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
