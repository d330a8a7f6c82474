"""The serving records' fixtures: a request record as the app appends it, and a store."""

import json
import re

import pytest

from mlpipe.serving.records import db, writer



@pytest.fixture
def first_schema() -> str:
    """The SQLite schema as the first release made it: none of the columns added since."""
    return re.sub(r",\n    (%s) [A-Z]+ NOT NULL DEFAULT [^,\n]+" % "|".join(db.ADDED_COLUMNS), "", db.SQLITE_SCHEMA)


def make_record(i, variant="a", status=200, latency=12.0, predictions=None, version="1"):
    return {"request_id": f"r{i}", "ts": 1000.0 + i, "experiment": "exp", "variant": variant,
            "model_uri": "models:/m@champion", "model_version": version, "status": status, "latency_ms": latency,
            "rows": 1, "predictions": json.dumps({"predictions": predictions if predictions is not None else [1]})}


@pytest.fixture
def record():
    """make_record: a request record as the app appends it (record(i, variant=..., status=...))."""
    return make_record


@pytest.fixture
def store(tmp_path):
    s = writer.RecordStore(tmp_path / "r.db", flush_ms=50, timeout_s=30)
    yield s
    s.close()
