"""mlpipe/run/frames.py: reading a Parquet hand-off column by column, writing it without float dictionaries."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlpipe.run.frames import read_parquet, write_parquet


def mixed_frame(rows: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    floats = rng.standard_normal(rows)
    floats[::7] = np.nan
    words = pd.Series(rng.choice(["red", "green", "blue"], rows), dtype="str")
    words[::5] = None
    return pd.DataFrame({
        "floats": floats,
        "ints": rng.integers(0, 100, rows),
        "words": words,
        "category": pd.Categorical(rng.choice(["a", "b", "c"], rows)),
        "flags": rng.random(rows) < 0.5,
        "flags_missing": pd.Series(rng.random(rows) < 0.5, dtype="boolean").mask(np.arange(rows) % 3 == 0),
        "nullable_ints": pd.array(rng.integers(0, 9, rows), dtype="Int64"),
        "objects": pd.Series([None if i % 4 == 0 else f"v{i}" for i in range(rows)], dtype=object),
        "when": pd.date_range("2024-01-01", periods=rows, freq="h"),
        "empty": np.full(rows, np.nan),
    })


@pytest.mark.parametrize("index", [False, True])
def test_read_parquet_equals_a_whole_read(tmp_path, index):
    frame = mixed_frame()
    if index:
        frame.index = pd.Index(np.arange(len(frame))[::-1] * 3, name="row")
    path = tmp_path / "frame.parquet"
    frame.to_parquet(path, index=index)
    expected, got = pd.read_parquet(path), read_parquet(path)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.dtypes.to_dict() == expected.dtypes.to_dict()
    assert got.columns.dtype == expected.columns.dtype and got.index.equals(expected.index)


def test_read_parquet_single_column_and_range_index(tmp_path):
    path = tmp_path / "one.parquet"
    pd.DataFrame({"x": [1.0, 2.0, None]}, index=pd.RangeIndex(10, 13)).to_parquet(path)
    pd.testing.assert_frame_equal(read_parquet(path), pd.read_parquet(path))


def test_write_parquet_round_trips_and_keeps_dictionaries_for_non_float_columns(tmp_path):
    frame = mixed_frame()
    path = tmp_path / "frame.parquet"
    write_parquet(frame, path)
    frame.to_parquet(tmp_path / "plain.parquet", index=False)
    pd.testing.assert_frame_equal(read_parquet(path), read_parquet(tmp_path / "plain.parquet"), check_exact=True)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["floats"] + encodings["empty"]), encodings
    assert any("DICTIONARY" in e for e in encodings["words"]), encodings
    assert any("DICTIONARY" in e for e in encodings["category"]), encodings


def test_write_parquet_all_float_frame(tmp_path):
    path = tmp_path / "floats.parquet"
    frame = pd.DataFrame({"a": [0.5, 0.5, np.nan], "b": [1.0, 2.0, 3.0]})
    write_parquet(frame, path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


# Peak RSS from /proc (VmHWM, this process's own: ru_maxrss would start at the parent's peak).
PEAK = """
import sys
import pandas as pd
from mlpipe.run.frames import read_parquet, return_freed_memory

def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

return_freed_memory()  # as every step process starts (pipeline/harness.py)
before = peak_kb()
frame = read_parquet(sys.argv[1]) if sys.argv[2] == "columns" else pd.read_parquet(sys.argv[1])
print(peak_kb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_reading_column_by_column_holds_half_the_peak_memory_of_a_whole_read(tmp_path, project_root):
    """What read_parquet is for, measured: the peak RSS a read adds in a fresh process, 38 MB of
    floats read whole (Arrow's table and pandas' copy at once) against column by column
    (measured here: +135 MB against +60 MB)."""
    import subprocess

    rng = np.random.default_rng(0)
    path = tmp_path / "floats.parquet"
    write_parquet(pd.DataFrame(rng.normal(size=(250_000, 20)), columns=[f"c{i}" for i in range(20)]), path)

    def added_kb(how: str) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK, str(path), how], cwd=project_root, capture_output=True,
                             text=True, timeout=120, check=True)
        return int(out.stdout.strip())

    whole, columns = added_kb("whole"), added_kb("columns")
    assert columns < 0.6 * whole, (columns, whole)
