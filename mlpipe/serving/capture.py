"""What the server keeps of a request's input rows (serve.inputs, docs/loop.md): the columns
allowed, for a sampled share of requests, as compact JSON in the request's record. The monitor
measures input drift on them and the loop retrains on the labelled ones.

Pure functions: the server draws and keeps a reference to the parsed rows (`Pending`), and the
records' writer thread encodes them (`encode`), so the answer never waits for it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Sequence


# What a record says when its rows were over serve.inputs.max_chars: kept as a marker, never as rows.
TOO_LONG = '{"skipped":"over serve.inputs.max_chars"}'


@dataclass(frozen=True)
class Policy:
    """serve.inputs: `sample_rate` of requests kept; `columns` (None: all) minus `private`."""

    sample_rate: float = 0.0
    columns: tuple[str, ...] | None = None
    private: tuple[str, ...] = ()
    max_chars: int = 65536

    @classmethod
    def from_config(cls, icfg: dict) -> "Policy":
        columns = icfg.get("columns")
        return cls(float(icfg["sample_rate"]), tuple(str(c) for c in columns) if columns is not None else None,
                   tuple(str(c) for c in icfg.get("private") or ()), int(icfg["max_chars"]))

    def kept(self, columns: Sequence[str]) -> list[str]:
        """The request's columns that are recorded: the allow-list's (a private column only when
        listed by name), else every one but the private ones."""
        if self.columns is not None:
            return [c for c in columns if c in self.columns]
        return [c for c in columns if c not in self.private]

    def draw(self, rng: random.Random) -> bool:
        return self.sample_rate >= 1.0 or (self.sample_rate > 0.0 and rng.random() < self.sample_rate)


@dataclass(frozen=True)
class Pending:
    """A request's parsed JSON frame, ((format, columns), rows) as batching.merge_key returns it,
    to be encoded by the writer thread."""

    frame: tuple
    policy: Policy
    body: bytes | None = None  # the request's JSON as it came

    def encode(self) -> str:
        """Every column kept: the body as it came (no re-encoding: at 50 clients, encoding the rows
        again cost 10% of the requests a second and tripled p99, benchmarks/README.md); else
        the kept columns encoded."""
        if self.body is not None and self.policy.columns is None and not self.policy.private:
            return self.body.decode("utf-8") if len(self.body) <= self.policy.max_chars else TOO_LONG
        return encode(self.frame, self.policy)


def encode(frame: tuple, policy: Policy) -> str:
    """{"columns": [...], "data": [[...], ...]} of the kept columns; "" when none is kept; TOO_LONG
    when the rows take more than policy.max_chars."""
    (_, columns), rows = frame
    kept = policy.kept(columns)
    if not kept:
        return ""
    if rows and isinstance(rows[0], dict):
        data = [[row.get(c) for c in kept] for row in rows]
    else:
        index = [list(columns).index(c) for c in kept]
        data = [[row[i] for i in index] for row in rows]
    text = json.dumps({"columns": kept, "data": data}, separators=(",", ":"), default=str)
    return text if len(text) <= policy.max_chars else TOO_LONG


def decode(text: str) -> tuple[list[str], list[list[Any]]] | None:
    """(columns, rows) of a recorded request: kept columns as `encode` writes them, or the body as
    it came (`dataframe_records` or `dataframe_split`); None when it has none (not sampled, not a
    JSON frame, over max_chars)."""
    if not text or text == TOO_LONG:
        return None
    payload = json.loads(text)
    if "dataframe_records" in payload:
        rows = payload["dataframe_records"]
        columns = list(rows[0]) if rows else []
        return columns, [[row.get(c) for c in columns] for row in rows]
    found = payload.get("dataframe_split", payload)
    return list(found["columns"]), found["data"]

