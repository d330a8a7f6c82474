"""mlpipe/loop/window.py: the served rows of the watched version, read from real records."""

import json

from mlpipe.loop import window
from mlpipe.serving.records import writer


def _request(i: int, version: str) -> dict:
    return {"request_id": f"r{i}", "ts": 1000.0 + i, "experiment": "exp", "variant": "default" if version == "1"
            else "canary", "model_uri": "models:/m@champion", "model_version": version, "status": 200,
            "latency_ms": 1.0, "rows": 1, "predictions": json.dumps({"predictions": [0]}),
            "inputs": json.dumps({"dataframe_split": {"columns": ["x"], "data": [[float(i)]]}})}


def test_the_window_holds_the_watched_versions_rows_however_many_other_versions_answered(tmp_path):
    """300 requests the canary (v2) answered, then 10 of the champion's (v1): a window of at most
    100 requests of v1 holds those 10 and its cursor moves past them; the canary's never fill it
    (they would, read 100 at a time, and the window would never reach v1's rows)."""
    store = writer.RecordStore(tmp_path / "r.db", flush_ms=10, timeout_s=30)
    for i in range(300):
        store.append(_request(i, "2"))
    for i in range(300, 310):
        store.append(_request(i, "1"))
    store.close()
    rows, last = window.served_rows(tmp_path / "r.db", "exp", "1", 0, 30, limit=100)
    assert rows["x"].tolist() == [float(i) for i in range(300, 310)] and last == 310
    nothing, cursor = window.served_rows(tmp_path / "r.db", "exp", "1", last, 30, limit=100)
    assert nothing.empty and cursor == 310  # nothing new: the cursor stays
