"""The record store's database: SQLite or PostgreSQL behind one connection type, the tables and
the triggers that make them append-only, and a URL as it may be printed (no password)."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlpipe.run.storage import masked_url

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
    row_keys TEXT NOT NULL DEFAULT '',
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
# Columns added after the first release: an older store gains them when a server opens it.
# row_keys: a digest per request row, comma-separated (batching.row_keys; '' for non-JSON input).
# overridden: 1 when serve.routing.override_header chose the variant (never counted in A/B tests).
ADDED_COLUMNS = {"author": "TEXT NOT NULL DEFAULT ''", "row_keys": "TEXT NOT NULL DEFAULT ''",
                 "overridden": "INTEGER NOT NULL DEFAULT 0", "server": "TEXT NOT NULL DEFAULT ''",
                 "inputs": "TEXT NOT NULL DEFAULT ''"}
# What a record without an added column gets: the column's SQL default.
ADDED_DEFAULTS = {column: 0 if kind.startswith("INTEGER") else "" for column, kind in ADDED_COLUMNS.items()}
COLUMNS = ("request_id", "ts", "experiment", "variant", "model_uri", "model_version", "status", "latency_ms",
           "rows", "predictions", "author", "row_keys", "overridden", "inputs", "server")
# One label set per request, enforced by the database where it can be (a store written before
# this rule may hold repeats: then the server's own check is the only one).
ONCE_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS feedback_once ON feedback (request_id)"
TABLES = frozenset({"requests", "feedback", "experiments"})
def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def display(target: str | Path) -> str:
    """The store as it may be printed: a URL without its password."""
    return masked_url(str(target)) if is_postgres(target) else str(target)


class Db:
    """One connection to either store, with SQLite's `?` placeholders in every statement."""

    def __init__(self, target: str | Path, timeout_s: float, read_only: bool = False):
        """`timeout_s` (serve.records_timeout_s) bounds connecting to PostgreSQL and, in SQLite,
        the wait for another process's write lock."""
        self.postgres = is_postgres(target)
        if self.postgres:
            import psycopg

            url = str(target).replace("postgresql+psycopg://", "postgresql://")
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)))
            if read_only:
                self.conn.execute("SET default_transaction_read_only = on")
        elif read_only:
            self.conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False)
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None)
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


def connect(target: str | Path, timeout_s: float) -> Db:
    """The store, its tables created (and older SQLite files given the newer columns). On
    PostgreSQL, tables that exist with every column are used as they are: a role that may write
    but not create or alter tables (not their owner) can serve."""
    db = Db(target, timeout_s)
    if db.postgres:
        if tables(db) == TABLES and set(ADDED_COLUMNS) <= columns(db, "requests"):
            return db
        with db.transaction():  # two workers starting at once: one creates, the other waits
            db.execute("SELECT pg_advisory_xact_lock(7104220913)")
            db.conn.execute(POSTGRES_SCHEMA)
            for column, kind in ADDED_COLUMNS.items():
                db.execute(f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {column} {kind}")
        _best_effort(db, ONCE_INDEX)
    else:
        db.conn.executescript(SQLITE_SCHEMA)
        have = columns(db, "requests")
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
        _best_effort(db, ONCE_INDEX)
    return db


def _best_effort(db: Db, sql: str) -> None:
    try:
        db.execute(sql)
    except Exception:  # noqa: BLE001 - sqlite3 and psycopg alike: an older store's repeated labels
        pass


def size_mb(db: Db, target: str | Path) -> float:
    """The store's size on disk: SQLite's file and its write-ahead log, PostgreSQL's tables."""
    if db.postgres:
        rows = db.execute("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                          "WHERE c.relname IN ('requests', 'feedback', 'experiments') AND c.relkind = 'r' "
                          "AND pg_table_is_visible(c.oid)")
        return float(rows[0][0]) / 2**20
    path = Path(target)
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()) / 2**20
