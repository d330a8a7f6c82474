"""What is read back from the records (each read waits at most `timeout_s`, serve.records_timeout_s): labelled rows per variant (the A/B report, thompson
routing), the experiments servers started and their arms (the team report), the models that
answered (`serve.mode=report`)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlpipe.errors import DataError, one_line
from mlpipe.serving.records.db import TABLES, Db, columns, display, is_postgres, tables


def labelled_pairs(db: Db, experiment: str) -> dict[str, list[tuple[Any, Any]]]:
    """Per variant, (prediction, label) for every labelled row of its answered requests."""
    return _pairs(labelled_stream(db, experiment))


def _pairs(stream: dict[str, list[tuple]]) -> dict[str, list[tuple[Any, Any]]]:
    return {variant: [(row[0], row[1]) for row in rows] for variant, rows in stream.items()}


def labelled_stream(db: Db, experiment: str, since_ts: float = 0.0) -> dict[str, list[tuple[Any, Any, float, str]]]:
    """Per variant, (prediction, label, feedback time, row key) of every labelled row, in the order
    the labels arrived. The row key is the request row's digest (batching.row_keys), '' when the
    request was not a JSON frame or the store is older than row keys. Requests whose variant the
    override header chose are left out: their arm was the client's choice, not the router's.
    `since_ts`: only requests answered from then on (the loop's canary, docs/loop.md)."""
    have = columns(db, "requests")
    keys = "r.row_keys" if "row_keys" in have else "''"
    routed = " AND r.overridden = 0" if "overridden" in have else ""
    rows = db.execute(
        f"SELECT r.variant, r.predictions, f.label, f.ts, {keys} FROM requests r JOIN feedback f "
        f"ON f.request_id = r.request_id WHERE r.experiment = ? AND r.status = 200{routed} AND r.ts >= ? ORDER BY f.id",
        (experiment, float(since_ts)))
    out: dict[str, list[tuple[Any, Any, float, str]]] = {}
    for variant, predictions, label, ts, row_keys in rows:
        preds, truth = _aligned(predictions, label)
        digests = row_keys.split(",") if row_keys else []
        digests = digests if len(digests) >= len(preds) else [""] * len(preds)
        out.setdefault(variant, []).extend((p, t, float(ts), k) for p, t, k in zip(preds, truth, digests))
    return out


def distinct(stream: dict[str, list[tuple]]) -> tuple[dict[str, list[tuple]], dict[str, int]]:
    """Each variant's stream with every row key after its first label left out (rows without a
    key all kept), and per variant how many were left out: the A/B report's serve.ab.repeats=once."""
    kept: dict[str, list[tuple]] = {}
    dropped: dict[str, int] = {}
    for variant, rows in stream.items():
        seen: set[str] = set()
        for row in rows:
            key = row[3]
            if key and key in seen:
                dropped[variant] = dropped.get(variant, 0) + 1
                continue
            seen.add(key)
            kept.setdefault(variant, []).append(row)
    return kept, dropped


def _answers(predictions: str | None) -> list:
    """A request's predictions, one per row, from the answer the server stored."""
    preds = json.loads(predictions) if predictions else []
    if isinstance(preds, dict):  # the server stores MLflow's whole answer, {"predictions": [...]}
        preds = preds.get("predictions", [])
    return [p[0] if isinstance(p, list) and len(p) == 1 else p for p in preds]


def _labels(label: str) -> list:
    """A request's label set as a list (a scalar label = 1 row)."""
    truth = json.loads(label)
    return truth if isinstance(truth, list) else [truth]


def _aligned(predictions: str | None, label: str) -> tuple[list, list]:
    """Predictions and labels of one request as two equal-length lists (a scalar label = 1 row)."""
    preds, truth = _answers(predictions), _labels(label)
    n = min(len(preds), len(truth))
    return preds[:n], truth[:n]


@contextmanager
def read_only(target: str | Path, timeout_s: float) -> Iterator[Db]:
    """The store for reading; a missing file or database, or one no server has written to, is a
    DataError that says how to get one."""
    how = "start the server (mlflow run . -e serve) and send requests first, or set serve.records to the store " \
          "the server wrote"
    if not is_postgres(target) and not Path(target).is_file():
        raise DataError(f"no serving records at {target}; {how}")
    try:
        db = Db(target, timeout_s, read_only=True)
    except Exception as exc:  # noqa: BLE001 - sqlite3 and psycopg errors alike
        raise DataError(f"cannot open the serving records at {display(target)}: {one_line(exc)}; {how}") from None
    try:
        if "requests" not in tables(db):
            raise DataError(f"no serving records in {display(target)} (no requests table); {how}")
        yield db
    finally:
        db.close()


def served_control(target: str | Path, experiment: str, timeout_s: float) -> str | None:
    """The control of the newest server started for `experiment` (None: no server recorded one)."""
    with read_only(target, timeout_s) as db:
        if "experiments" not in tables(db):  # a records file from before servers recorded their experiment
            return None
        rows = db.execute("SELECT control FROM experiments WHERE experiment = ? ORDER BY id DESC LIMIT 1",
                          (experiment,))
    return rows[0][0] if rows else None


def experiments(target: str | Path, timeout_s: float) -> list[dict[str, Any]]:
    """Every A/B experiment a server started: name, first and last start, its latest variants and
    control, requests and labelled requests so far."""
    with read_only(target, timeout_s) as db:
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


def served_models(target: str | Path, experiment: str, timeout_s: float) -> dict[str, tuple[str, str]]:
    """Per arm, the (model_uri, model_version) of its most recent answered request."""
    with read_only(target, timeout_s) as db:
        rows = db.execute("SELECT variant, model_uri, model_version FROM requests WHERE experiment = ? "
                          "AND status = 200 ORDER BY id", (experiment,))
    return {variant: (uri, version) for variant, uri, version in rows}


def labelled_rows(target: str | Path, experiment: str, timeout_s: float, since_ts: float = 0.0) -> dict[str, Any]:
    """What the A/B report reads: per variant, the latencies of every answered request, the
    versions and authors that answered, and per labelled row (prediction, label, time) in the
    order the labels arrived; of the requests answered from `since_ts` on."""
    with read_only(target, timeout_s) as db:
        author = "author" if "author" in columns(db, "requests") else "''"  # a file from before authors
        lat = db.execute(f"SELECT variant, latency_ms, model_version, {author} FROM requests "
                         "WHERE experiment = ? AND status = 200 AND ts >= ? ORDER BY id", (experiment, float(since_ts)))
        stream = labelled_stream(db, experiment, since_ts) if "feedback" in tables(db) else {}
        errors = db.execute("SELECT variant, COUNT(*) FROM requests WHERE experiment = ? AND status != 200 "
                            "AND ts >= ? GROUP BY variant", (experiment, float(since_ts)))
    out: dict[str, Any] = {"latencies": {}, "versions": {}, "authors": {}, "errors": dict(errors),
                           "pairs": _pairs(stream),
                           "stream": stream}
    for variant, latency, version, author in lat:
        out["latencies"].setdefault(variant, []).append(float(latency))
        out["versions"].setdefault(variant, set()).add(version)
        if author:
            out["authors"].setdefault(variant, set()).add(author)
    return out


# The columns served_frame adds to a request's input columns.
SERVED_COLUMNS = ("record_id", "request_id", "ts", "variant", "model_version", "prediction", "label",
                  "feedback_id")


def served_frame(target: str | Path, experiment: str, timeout_s: float, after_id: int = 0, limit: int | None = None,
                 *, model_version: str | None = None, labelled_after: int | None = None, newest: bool = False):
    """One row per input row the server kept (serve.inputs) of the answered requests of
    `experiment` after record id `after_id`, oldest first (at most `limit` requests: the oldest,
    or with `newest` the newest): the input columns, then SERVED_COLUMNS; `label` and
    `feedback_id` are None for a row no feedback labelled yet. `model_version`: only the requests
    that version answered; `labelled_after`: only those labelled by a label set after that
    feedback id (-1: every labelled one). Requests the override header routed are included:
    drift and retraining do not depend on the arm."""
    import pandas as pd

    from mlpipe.serving.capture import decode

    where, params = ["r.experiment = ?", "r.status = 200", "r.id > ?", "r.inputs != ''"], [experiment, int(after_id)]
    if model_version is not None:
        where.append("r.model_version = ?")
        params.append(str(model_version))
    if labelled_after is not None:
        where.append("f.id > ?")
        params.append(int(labelled_after))
    with read_only(target, timeout_s) as db:
        if "inputs" not in columns(db, "requests"):
            return pd.DataFrame(columns=list(SERVED_COLUMNS))
        rows = db.execute(
            "SELECT r.id, r.request_id, r.ts, r.variant, r.model_version, r.predictions, r.inputs, f.label, f.id "
            f"FROM requests r LEFT JOIN feedback f ON f.request_id = r.request_id WHERE {' AND '.join(where)} "
            f"ORDER BY r.id {'DESC' if newest else 'ASC'}" + (f" LIMIT {int(limit)}" if limit else ""), tuple(params))
    parts = []
    for record_id, request_id, ts, variant, version, predictions, inputs, label, feedback_id in \
            (reversed(rows) if newest else rows):
        found = decode(inputs)
        if found is None:
            continue
        names, data = found
        preds, truth = _answers(predictions), _labels(label) if label else [None] * len(data)
        if len(preds) != len(data) or len(truth) != len(data):
            continue  # a record whose parts disagree (never written so by this server): left out
        frame = pd.DataFrame(data, columns=names)
        frame = frame.assign(record_id=record_id, request_id=request_id, ts=float(ts), variant=variant,
                             model_version=version, prediction=preds, label=truth,
                             feedback_id=int(feedback_id) if feedback_id is not None else None)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SERVED_COLUMNS))


def labels_after(target: str | Path, experiment: str, model_version: str, after_id: int, timeout_s: float,
                 limit: int | None = None) -> list[tuple[int, Any, Any]]:
    """(feedback id, prediction, label) per labelled row of the requests of `experiment` that
    `model_version` answered, for the label sets after feedback id `after_id`, in the order they
    arrived: what the monitor's performance rule reads, a label set once."""
    with read_only(target, timeout_s) as db:
        if "feedback" not in tables(db):
            return []
        rows = db.execute(
            "SELECT f.id, r.predictions, f.label FROM feedback f JOIN requests r ON r.request_id = f.request_id "
            "WHERE r.experiment = ? AND r.model_version = ? AND r.status = 200 AND f.id > ? ORDER BY f.id"
            + (f" LIMIT {int(limit)}" if limit else ""), (experiment, str(model_version), int(after_id)))
    out = []
    for feedback_id, predictions, label in rows:
        preds, truth = _aligned(predictions, label)
        out.extend((int(feedback_id), p, t) for p, t in zip(preds, truth))
    return out
