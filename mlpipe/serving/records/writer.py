"""The server's side of the records: `RecordStore` appends request records from any thread and a
writer thread commits them in small batches; experiments and feedback are written at once;
`/metrics` reads aggregates back as Prometheus text."""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from mlpipe.errors import one_line
from mlpipe.serving.records.db import ADDED_DEFAULTS, COLUMNS, Db, connect, display, is_postgres, size_mb
from mlpipe.serving.records.reads import labelled_pairs

INSERT_REQUEST = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INPUTS = COLUMNS.index("inputs")  # a capture.Pending until the writer thread encodes it
# Latency histogram bucket bounds (seconds), as Prometheus clients use by default.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RecordStore:
    """Appends request records from any thread; one writer thread commits them every
    `flush_ms` (or sooner when `flush()` is called). `close()` writes what is still queued."""

    def __init__(self, target: str | Path, flush_ms: float, timeout_s: float, shared: bool = False,
                 max_mb: float | None = None):
        """`max_mb` (serve.limits.max_records_mb): past it, requests are no longer recorded (counted
        in `dropped`, said once on stderr) and feedback is refused."""
        self.target = target
        self.max_mb, self.full, self.dropped, self.checked = max_mb, False, 0, 0.0
        self.server = f"{socket.gethostname()}:{os.getpid()}"  # this process, not its parent's
        self.timeout_s = timeout_s
        self.db = connect(target, timeout_s)
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
        if self.full:
            self.dropped += 1
            return
        self.queue.put(tuple(record.get(c, ADDED_DEFAULTS[c]) if c in ADDED_DEFAULTS else record[c]
                             for c in COLUMNS[:-1])
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
            rows = [_encoded(row) for row in rows]
            try:
                with self.db.transaction():
                    self.db.executemany(INSERT_REQUEST, rows)
            except Exception:
                self.pending = rows
                if self.db.postgres and (self.db.conn.closed or self.db.conn.broken):
                    try:
                        self.db = Db(self.target, self.timeout_s)
                    except Exception:  # noqa: BLE001 - still down: the next flush tries again
                        pass
                raise

    def _check_size(self) -> None:
        """At most once a second: whether the store has grown past `max_mb`."""
        if self.max_mb is None or self.full or time.monotonic() - self.checked < 1.0:
            return
        self.checked = time.monotonic()
        with self.lock:
            size = size_mb(self.db, self.target)
        if size > self.max_mb:
            self.full = True
            print(f"[mlpipe] serve: the records at {display(self.target)} hold {size:.0f} MB, over "
                  f"serve.limits.max_records_mb={self.max_mb:g}: requests are answered but no longer recorded, "
                  "feedback is refused (507); archive the store or raise the limit", file=sys.stderr, flush=True)

    def _writer(self) -> None:
        while True:
            stopping = self._stop.wait(self.flush_s)
            try:
                self._drain()
                self._check_size()
            except Exception as exc:  # noqa: BLE001 - a lost connection must not end the writer
                print(f"[mlpipe] serve: cannot write {len(self.pending)} records to {display(self.target)} "
                      f"({one_line(exc)}); {'they are lost' if stopping else 'retrying'}", file=sys.stderr,
                      flush=True)
            if stopping:
                return

    def flush(self) -> None:
        self._drain()

    def add_feedback(self, request_id: str, labels: Callable[[int], Any]) -> str:
        """Joins a label set to a recorded request, once: "recorded", "unknown" (no such request),
        "answered" (it has its labels already) or "full" (the store is over its size).
        `labels(rows)` makes the label set for a request of `rows` rows (or raises: nothing is
        written). Another process writing the same store may have answered the request and not
        yet written it: its writer commits within `flush_ms`, so the lookup is then retried for
        two of those intervals plus 0.25 s (`feedback_wait_s`)."""
        self.flush()
        if self.full:
            return "full"
        deadline = time.monotonic() + self.feedback_wait_s
        while True:
            with self.lock:
                found = self.db.execute("SELECT rows FROM requests WHERE request_id = ?", (request_id,))
                if found:
                    if self.db.execute("SELECT 1 FROM feedback WHERE request_id = ?", (request_id,)):
                        return "answered"
                    label = labels(int(found[0][0]))
                    try:
                        self.db.execute("INSERT INTO feedback (request_id, ts, label) VALUES (?, ?, ?)",
                                        (request_id, time.time(), json.dumps(label)))
                    except Exception as exc:  # noqa: BLE001 - sqlite3 / psycopg: the unique index (db.ONCE_INDEX)
                        if "unique" in str(exc).lower():
                            return "answered"
                        raise
                    return "recorded"
            if time.monotonic() > deadline:
                return "unknown"
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


def _encoded(row: tuple) -> tuple:
    """The record as stored: its kept input rows encoded here, in the writer thread (serving/capture.py)."""
    kept = row[INPUTS]
    return row if isinstance(kept, str) else row[:INPUTS] + (kept.encode(),) + row[INPUTS + 1:]


def prometheus(aggregates: Sequence[tuple], dropped: int = 0) -> str:
    """Prometheus text exposition: request counts by variant, version and status, a latency
    histogram per variant and version, and the requests this process answered but did not record
    (the store over serve.limits.max_records_mb)."""
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
    lines += ["# HELP mlpipe_records_dropped_total Requests answered but not recorded (the store over its size).",
              "# TYPE mlpipe_records_dropped_total counter", f"mlpipe_records_dropped_total {dropped}"]
    return "\n".join(lines) + "\n"


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
