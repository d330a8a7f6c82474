"""mlpipe/data/frames.py: reading a Parquet hand-off column by column, writing it without float dictionaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlpipe.data.frames import read_parquet, write_parquet


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


def test_a_step_behind_a_shell_stops_when_the_launcher_dies(tmp_path):
    """The uv / virtualenv env managers run `bash -c "source <activate> && python ..."`. Bash 5.2
    execs the step in place of itself; a shell that stays between (an older bash, or a command
    after the step, as here) outlives a killed `mlflow run`, so the parent-death signal never
    comes: the step watches the shell's parent and stops (SIGTERM) once it is gone."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[3]
    step = "from mlpipe.run.processes import stop_with_parent; stop_with_parent(); import time; time.sleep(60)"
    launcher_code = ("import subprocess, sys, time; "
                     f"subprocess.Popen(['bash', '-c', '{sys.executable} -c \"{step}\"; true']); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], cwd=root)
    deadline = time.monotonic() + 20
    while not [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.name().startswith("python")]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2)  # the step is past stop_with_parent
    shell, python = sorted(psutil.Process(launcher.pid).children(recursive=True), key=lambda p: p.pid)
    assert shell.name() == "bash"
    launcher.send_signal(signal.SIGKILL)  # `mlflow run` killed
    gone, alive = psutil.wait_procs([python], timeout=10)
    assert not alive
    launcher.wait()
    shell.kill()


def test_the_held_out_rows_are_a_stable_share_that_keeps_equal_rows_together():
    import numpy as np
    import pandas as pd

    from mlpipe.data.frames import held_out

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=5000), "y": rng.integers(0, 3, 5000)})
    held = held_out(frame, 0.2)
    assert 0.18 < held.mean() < 0.22
    assert held.equals(held_out(frame.copy(), 0.2))  # the same rows every time
    shuffled = frame.sample(frac=1, random_state=1)
    assert held_out(shuffled, 0.2).sort_index().equals(held)  # a row's fate does not depend on its position
    doubled = pd.concat([frame, frame], ignore_index=True)
    twice = held_out(doubled, 0.2).to_numpy()
    assert (twice[:5000] == twice[5000:]).all()
    assert not held_out(frame, 0.0).any()
